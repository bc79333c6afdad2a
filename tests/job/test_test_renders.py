"""A job's test render, as its aggregate decides it and its envelope shows it: a few frames
asked for before the full render is queued (first, middle and last by default), one at a
time, due by a deadline; their results with time and peak memory; a miss recorded once."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal

import pytest

from contracts.errors import TestRenderInProgress, TestRenderNotAllowed, ValidationFailed
from contracts.jobs import (
    FrameOutput,
    FullRenderStartedBy,
    JobAction,
    JobStatus,
    JobSubmitted,
    JobTestRenderRequested,
    Resolution,
    StepName,
    StepStatus,
    TestRenderFrame,
    TestRenderQuality,
    TestRenderStatus,
    default_test_frames,
)
from services.job.domain import Job
from services.job.views import JobView
from tests.aggregates import evolve, given
from tests.job.test_domain import NOW, prepared, refused, submitted, types, view

S = JobStatus
TEST = "job_1.test.1"


def frame(n: int) -> TestRenderFrame:
    output = FrameOutput(
        frame=n,
        output_id=f"job_1-test-{n:07d}",
        object_key=f"jobs/usr_1/job_1/test/frame_{n:04d}.png",
        size_bytes=2048,
        sha256=hashlib.sha256(str(n).encode()).hexdigest(),
    )
    return TestRenderFrame(
        output=output, task_id=n, render_seconds=31.5, peak_memory_bytes=2**31, worker="w1"
    )


def rendering_a_test(job: Job) -> Job:
    evolve(job, job.request_test_render(None, 600, None, NOW))
    return evolve(job, job.start_test_render(TEST, NOW))


def test_by_default_the_first_middle_and_last_frames_are_test_rendered() -> None:
    job = prepared(frames=24)
    events = job.request_test_render(None, 600, Decimal("40.00"), NOW)
    [asked] = events
    assert asked.frames == [1, 13, 24]  # type: ignore[attr-defined]
    assert asked.render_id == TEST  # type: ignore[attr-defined]
    assert asked.deadline_at == NOW + timedelta(minutes=10)  # type: ignore[attr-defined]
    assert default_test_frames(prepared(frames=1).frame_range) == [1]  # type: ignore[arg-type]


def test_frames_outside_the_jobs_range_are_refused_naming_them() -> None:
    job = prepared(frames=24)
    with pytest.raises(ValidationFailed) as e:
        job.request_test_render([3, 30, 99], 600, None, NOW)
    [problem] = e.value.details.errors
    assert problem.loc == ["frames"] and "[30, 99]" in problem.message


def test_a_test_render_can_be_asked_for_while_the_scene_is_prepared_and_runs_once_ready() -> None:
    job = submitted()
    evolve(job, job.request_test_render([2], 600, None, NOW))
    assert job.status is S.submitted  # nothing runs before the scene is prepared
    assert refused(job.request_test_render, None, 600, None, NOW) is TestRenderInProgress


def test_the_job_test_renders_then_is_test_render_ready_with_the_frames_measured() -> None:
    job = rendering_a_test(prepared(frames=24))
    assert job.status is S.test_rendering
    evolve(job, job.record_test_frames(TEST, [frame(1), frame(13)], NOW))
    assert job.record_test_frames(TEST, [frame(1)], NOW) == []  # delivered again
    evolve(job, job.record_test_frames(TEST, [frame(24)], NOW))
    done = NOW + timedelta(seconds=95)
    events = job.complete_test_render(TEST, done)
    assert types(events) == ["JobTestRenderCompleted", "JobStepSucceeded"]
    evolve(job, events)
    assert job.status in (S.test_render_ready,)  # moved on by the events above
    assert job.complete_test_render(TEST, done) == []
    envelope = view(job).envelope(9, done)
    test = envelope.test_render
    assert test is not None
    assert (test.status, test.ready_in_seconds, test.seconds_left) == (
        TestRenderStatus.completed,
        95.0,
        None,
    )
    assert [f.output.frame for f in test.results] == [1, 13, 24]
    assert test.results[0].peak_memory_bytes == 2**31
    assert envelope.steps[4].name is StepName.test_render
    assert envelope.steps[4].status is StepStatus.succeeded


def test_the_envelope_counts_the_seconds_left_to_the_deadline() -> None:
    job = prepared()
    evolve(job, job.request_test_render(None, 600, None, NOW))
    test = view(job).envelope(5, NOW + timedelta(seconds=200)).test_render
    assert test is not None and test.seconds_left == 400
    late = view(job).envelope(5, NOW + timedelta(hours=1)).test_render
    assert late is not None and late.seconds_left == 0


def test_a_reduced_test_render_shows_its_quality_and_the_size_its_frames_render_at() -> None:
    job = prepared()
    quality = TestRenderQuality(resolution_percent=25, samples=16)
    events = job.request_test_render([1], 600, None, NOW, quality)
    evolve(job, events)
    asked = events[0]
    assert isinstance(asked, JobTestRenderRequested) and asked.quality == quality
    test = view(job).envelope(5, NOW).test_render
    assert test is not None and test.quality == quality
    assert test.resolution == Resolution(width=480, height=270)  # a quarter of 1920x1080


def test_a_missed_deadline_is_recorded_once_and_only_once_past_it() -> None:
    job = rendering_a_test(prepared())
    assert job.miss_test_render_deadline(TEST, NOW + timedelta(seconds=599)) == []
    events = job.miss_test_render_deadline(TEST, NOW + timedelta(seconds=601))
    assert types(events) == ["JobTestRenderDeadlineMissed"]
    evolve(job, events)
    assert job.miss_test_render_deadline(TEST, NOW + timedelta(hours=1)) == []
    assert job.status is S.test_rendering  # the test render goes on


def test_a_failed_test_render_leaves_the_job_ready_for_another_or_the_full_render() -> None:
    job = rendering_a_test(prepared())
    evolve(job, job.fail_test_render(TEST, "blender crashed", NOW))
    assert job.status is S.ready
    again = job.request_test_render([1], 600, None, NOW)
    assert again[0].render_id == "job_1.test.2"  # type: ignore[attr-defined]


def test_no_test_render_once_the_full_render_is_queued() -> None:
    job = prepared()
    evolve(job, job.queue("no test render asked for", NOW))
    assert refused(job.request_test_render, None, 600, None, NOW) is TestRenderNotAllowed


def test_a_job_that_waits_for_its_start_says_so_and_is_released_once() -> None:
    spec_event = submitted().pending[0].model_copy(update={"start_full_render": False})
    assert isinstance(spec_event, JobSubmitted)
    job = given(Job(), spec_event)
    actions = JobView.submitted(spec_event).envelope(1, NOW).allowed_actions
    assert JobAction.start_full_render in actions and JobAction.test_render in actions
    events = job.release_full_render(FullRenderStartedBy.user, NOW)
    assert types(events) == ["JobFullRenderReleased"]
    evolve(job, events)
    assert job.release_full_render(FullRenderStartedBy.budget, NOW) == []
    assert submitted().release_full_render(FullRenderStartedBy.user, NOW) == []  # starts anyway
