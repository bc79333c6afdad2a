"""A job's outputs as an aggregate: what each job event records, and what it refuses. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.base import EVENTS
from contracts.errors import OutputDeleted, OutputNotFound, OutputNotReady
from contracts.jobs import FrameOutput, JobFramesRendered, JobStatus
from contracts.outputs import (
    OutputArchiveRequested,
    OutputsDeleted,
    OutputsRecorded,
    OutputsRetained,
    OutputStatus,
)
from services.upload.domain import OUTPUTS_PER_EVENT, JobOutputs, OutputsNotOpened

T0 = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
#: A frame as recorded before outputs were stored: the farm's path.
V1_FRAME = {"frame": 1, "path": "/mnt/renders/u1/j1/frame_0001.png", "size_bytes": 5, "sha256": "0"}
KEEP = timedelta(days=30)


def frames(*numbers: int, kind: str = "full", sha: str = "ab" * 32) -> JobFramesRendered:
    return JobFramesRendered(
        job_id="j1",
        render_id=f"j1.{kind}.1",
        task_id=numbers[0],
        frames=[
            FrameOutput(
                frame=n,
                output_id=f"j1-{kind}-{n:07d}",
                object_key=f"jobs/u1/j1/{kind}/frame_{n:04d}.png",
                size_bytes=100 + n,
                sha256=sha,
            )
            for n in numbers
        ],
        worker="w1",
        render_seconds=1.0,
        at=T0,
    )


def status(outputs: JobOutputs, output_id: str) -> OutputStatus:
    kept = outputs.output(output_id)
    assert kept is not None
    return kept.status


def opened() -> JobOutputs:
    outputs = JobOutputs.rehydrate("j1", [])
    outputs.open("j1", "u1", "outputs", T0)
    return outputs


def completed(*numbers: int) -> JobOutputs:
    outputs = opened()
    outputs.frames_rendered(frames(*numbers), T0)
    outputs.ended(JobStatus.completed, T0 + timedelta(hours=1), KEEP, True, T0)
    return outputs


def test_frames_recorded_again_with_the_same_bytes_change_nothing() -> None:
    outputs = opened()
    [recorded] = outputs.frames_rendered(frames(1, 2), T0)
    assert isinstance(recorded, OutputsRecorded)
    assert [(o.output_id, o.file_name) for o in recorded.outputs] == [
        ("j1-full-0000001", "frame_0001.png"),
        ("j1-full-0000002", "frame_0002.png"),
    ]
    assert outputs.frames_rendered(frames(1, 2), T0) == []
    [again] = outputs.frames_rendered(frames(2, sha="cd" * 32), T0)  # rendered again: new bytes
    assert isinstance(again, OutputsRecorded) and again.outputs[0].sha256 == "cd" * 32


def test_frames_from_before_outputs_were_stored_are_not_outputs() -> None:
    v1 = {**frames(1).model_dump(mode="json"), "frames": [V1_FRAME]}
    old = EVENTS.decode(JobFramesRendered.event_type, 1, v1)
    assert isinstance(old, JobFramesRendered)
    assert opened().frames_rendered(old, T0) == []


def test_output_events_before_the_submission_wait_for_it() -> None:
    outputs = JobOutputs.rehydrate("j1", [])
    with pytest.raises(OutputsNotOpened):
        outputs.frames_rendered(frames(1), T0)
    with pytest.raises(OutputsNotOpened):
        outputs.ended(JobStatus.failed, T0, KEEP, True, T0)
    outputs.open("j1", "u1", "outputs", T0)
    assert outputs.open("j1", "u1", "outputs", T0) == []  # submitted once


def test_a_completed_job_keeps_its_outputs_and_asks_for_the_archive_once() -> None:
    outputs = opened()
    outputs.frames_rendered(frames(1, 2), T0)
    outputs.frames_rendered(frames(1, kind="test"), T0)
    ended = T0 + timedelta(hours=1)
    retained, archive = outputs.ended(JobStatus.completed, ended, KEEP, True, T0)
    assert isinstance(retained, OutputsRetained) and isinstance(archive, OutputArchiveRequested)
    assert retained.expires_at == archive.expires_at == ended + KEEP
    assert retained.output_ids == ["j1-full-0000001", "j1-full-0000002", "j1-test-0000001"]
    assert (archive.object_key, archive.generation) == ("jobs/u1/j1/archive/j1.zip", 1)
    assert [o.frame for o in outputs.archive_frames()] == [1, 2]  # the full render's
    assert outputs.ended(JobStatus.completed, ended, KEEP, True, T0) == []


def test_a_failed_or_cancelled_job_keeps_its_partial_outputs_without_an_archive() -> None:
    for status in (JobStatus.failed, JobStatus.cancelled):
        outputs = opened()
        outputs.frames_rendered(frames(1), T0)
        [retained] = outputs.ended(status, T0, KEEP, True, T0)
        assert isinstance(retained, OutputsRetained) and retained.job_status is status
        assert outputs.archive is None


def test_many_outputs_are_retained_in_events_of_at_most_a_thousand() -> None:
    outputs = opened()
    outputs.frames_rendered(frames(*range(1, 2501)), T0)
    events = outputs.ended(JobStatus.cancelled, T0, KEEP, True, T0)
    assert [len(e.output_ids) for e in events if isinstance(e, OutputsRetained)] == [
        OUTPUTS_PER_EVENT,
        OUTPUTS_PER_EVENT,
        500,
    ]


def test_frames_after_the_archive_ask_for_a_newer_one_and_an_older_one_is_ignored() -> None:
    outputs = completed(1)
    recorded, again = outputs.frames_rendered(frames(2), T0)
    assert isinstance(recorded, OutputsRecorded)
    assert isinstance(again, OutputArchiveRequested) and again.generation == 2
    assert outputs.archive_stored(1, 1, 500, "ee" * 32, T0) == []  # built before frame 2
    assert status(outputs, "j1-archive") is OutputStatus.building
    assert outputs.archive_stored(2, 2, 900, "ee" * 32, T0) != []
    assert status(outputs, "j1-archive") is OutputStatus.ready


def test_expired_outputs_wait_for_the_archive_then_are_deleted_once() -> None:
    outputs = completed(1, 2)
    later = T0 + KEEP + timedelta(days=1)
    assert outputs.expired(T0) == []
    assert outputs.expired(later) == []  # the archive is being built from them
    outputs.archive_stored(1, 2, 900, "ee" * 32, T0)
    due = outputs.expired(later)
    assert due == ["j1-archive", "j1-full-0000001", "j1-full-0000002"]
    [deleted] = outputs.deleted(due, later)
    assert isinstance(deleted, OutputsDeleted)
    assert outputs.deleted(due, later) == [] and outputs.expired(later) == []


def test_only_the_owner_or_an_admin_downloads_what_is_ready() -> None:
    outputs = completed(1)
    assert outputs.downloadable("j1-full-0000001", "u1").file_name == "frame_0001.png"
    assert outputs.downloadable("j1-full-0000001", None).size_bytes == 101  # an admin
    for output_id, owner in (("j1-full-0000001", "u2"), ("j1-full-0000009", "u1")):
        with pytest.raises(OutputNotFound):
            outputs.downloadable(output_id, owner)
    with pytest.raises(OutputNotReady):
        outputs.downloadable("j1-archive", "u1")
    outputs.archive_failed(1, "frame 1 is gone", T0)
    with pytest.raises(OutputNotReady):
        outputs.downloadable("j1-archive", "u1")
    outputs.deleted(["j1-full-0000001"], T0)
    with pytest.raises(OutputDeleted):
        outputs.downloadable("j1-full-0000001", "u1")
