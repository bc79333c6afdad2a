"""``JobView``, the jobs read model's own state, through every path of a job: stored and read
back as JSON after every event, as the projection does, it renders the same envelope, and it
agrees with the job aggregate on the facts both keep."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal

import pytest

from contracts.base import Event
from contracts.jobs import (
    FrameRange,
    JobChanges,
    JobCostRecorded,
    JobPaused,
    JobPriority,
    JobResumed,
    JobSpec,
    JobSubmitted,
    LogLevel,
    Resolution,
    StepName,
)
from contracts.scenes import FindingSeverity, SceneFinding
from services.job.domain import Job
from services.job.views import JobView
from tests.fixtures import SCENE_ID, scene_ref
from tests.job.test_domain import NOW, STAGED_KEY, outputs

Decide = Callable[[Job], list[Event]]
COST = JobCostRecorded(
    job_id="job_1",
    cost_version=1,
    status="held",
    estimate_credits=Decimal("40.00"),
    estimate_low_credits=Decimal("30.00"),
    estimate_high_credits=Decimal("55.00"),
    held_credits=Decimal("60.50"),
    so_far_credits=Decimal("0.00"),
    captured_credits=Decimal("0.00"),
    awaiting_reason=None,
    at=NOW,
)


def submit(job: Job) -> list[Event]:
    spec = JobSpec(
        name="shot_010",
        scene_id=SCENE_ID,
        frame_range=FrameRange(start=1, end=24),
        chunk_size=4,
        resolution=Resolution(width=1920, height=1080),
        cost_cap_credits=Decimal("100.50"),
    )
    return job.submit("job_1", "usr_1", spec, scene_ref(), NOW)


def stage(job: Job) -> list[Event]:
    """The scene staged, with its start, progress and end reported as they come."""
    return [
        *job.start_staging(NOW),
        *job.record_staging_progress(1_000_000, 4_200_000, NOW),
        *job.record_staged(STAGED_KEY, False, NOW),
    ]


def prepare(job: Job) -> list[Event]:
    """The scene steps, as a worker reports them: checked (a warning), repathed, set."""
    warning = SceneFinding(
        code="resolution_differs", severity=FindingSeverity.warning, message="1280x720 in the scene"
    )
    return [
        *job.start_step(StepName.scene_check, NOW),
        *job.record_step_progress(StepName.scene_check, 50.0, NOW),
        *job.record_scene_checked([warning], 4, 0, NOW),
        *job.record_repathed(NOW),
        *job.record_prepared("prepared/job_1/shot_010.blend", None, NOW),
    ]


def task(n: int, worker: str, seconds: float, render: str = "job_1.full.1") -> Decide:
    frames = outputs(*range(1 + n * 4, 5 + n * 4))
    at = NOW + timedelta(seconds=37 * (n + 1))
    return lambda job: job.record_frames(render, n, frames, worker, seconds, None, at)


def raw(event: Event) -> Decide:
    """An event no decide method records yet (pausing), given as history."""

    def given(job: Job) -> list[Event]:
        job.apply(event)
        return [event]

    return given


PATHS: dict[str, Sequence[Decide]] = {
    "edited then cancelled": [
        submit,
        lambda j: j.start_staging(NOW),
        lambda j: j.update(JobChanges(name="shot_011", priority=JobPriority.high)),
        lambda j: j.update(JobChanges(clear_cost_cap=True)),
        lambda j: j.update(JobChanges(frame_range=FrameRange(start=1, end=40), chunk_size=8)),
        lambda j: j.log_step(StepName.scene_check, LogLevel.info, "hello", NOW),
        lambda j: j.cancel("wrong camera", NOW),
    ],
    "rendered on three workers, paused, resumed, completed": [
        submit,
        stage,
        prepare,
        lambda j: j.queue("no scene processing yet", NOW),
        task(0, "w1", 10.25),
        task(2, "w2", 7.1),
        raw(JobPaused(job_id="job_1", reason="cost cap", at=NOW)),
        raw(JobResumed(job_id="job_1", at=NOW)),
        task(1, "w3", 12.0),
        task(3, "w1", 0.3),
        task(4, "w2", 9.9),
        task(5, "w2", 9.9),
        lambda j: j.complete(NOW + timedelta(hours=1)),
    ],
    "a second render replaces the first, then fails": [
        submit,
        stage,
        prepare,
        lambda j: j.queue("none", NOW),
        lambda j: j.start_render(NOW),
        task(0, "w1", 3.0),
        task(1, "w1", 3.0, render="job_1.full.2"),
        lambda j: j.fail("out of memory", NOW),
    ],
    "cancelled while rendering, confirmed by the farm": [
        submit,
        stage,
        prepare,
        lambda j: j.queue("none", NOW),
        task(0, "w1", 5.0),
        lambda j: j.cancel(None, NOW),
        lambda j: j.confirm_cancelled(NOW),
    ],
    "its scene failed to stage": [
        submit,
        lambda j: j.start_staging(NOW),
        lambda j: j.record_staging_progress(5, 10, NOW),
        lambda j: j.fail("bytes do not match", NOW, "scene_checksum_mismatch"),
    ],
    "paused before staging, resumed, stopped at its cost cap": [
        submit,
        lambda j: j.record_cost(COST),
        lambda j: j.pause("insufficient_credits", NOW),
        lambda j: j.resume(NOW),
        stage,
        prepare,
        lambda j: j.queue("none", NOW),
        task(0, "w1", 4.0),
        lambda j: j.pause("insufficient_credits", NOW),
        lambda j: j.stop("cost_cap_reached", "the cap of 100.50 credits was reached", NOW),
        lambda j: j.confirm_cancelled(NOW),
        lambda j: j.record_cost(COST.model_copy(update={"cost_version": 2, "status": "settled"})),
    ],
    "deleted on the farm": [
        submit,
        stage,
        prepare,
        lambda j: j.queue("none", NOW),
        lambda j: j.start_render(NOW),
        lambda j: j.confirm_cancelled(NOW),
    ],
}


@pytest.mark.parametrize("path", list(PATHS))
def test_the_view_stored_or_folded_after_every_event_renders_the_same_envelope(path: str) -> None:
    """As the projection keeps it (JSON after every event) and as a rebuild folds it (forked
    in memory before each event), the view renders the same envelope as one kept in memory,
    and agrees with the aggregate on the facts both keep."""
    job, version = Job(), 0
    stored: JobView | None = None
    kept: JobView | None = None
    folded: JobView | None = None
    for decide in PATHS[path]:
        for event in decide(job):
            version += 1
            if isinstance(event, JobSubmitted):
                stored, kept, folded = (JobView.submitted(event) for _ in range(3))
                continue
            assert stored is not None and kept is not None and folded is not None
            before = folded.model_dump_json()
            stored = JobView.model_validate_json(stored.model_dump_json())
            stored.apply(event)
            kept.apply(event)
            forked = folded.fork()
            forked.apply(event)
            assert folded.model_dump_json() == before, "fork() shares state it changes"
            folded = forked
            at = NOW + timedelta(minutes=version)
            expected = kept.envelope(version, at).model_dump_json()
            assert stored.envelope(version, at).model_dump_json() == expected, (
                f"{path}: after {type(event).__name__} (v{version})"
            )
            assert folded.envelope(version, at).model_dump_json() == expected
    assert stored is not None and version > 4
    assert (stored.status, stored.frames_done, stored.failure_reason) == (
        job.status,
        job.frames_done,
        job.failure_reason,
    )
    assert [(s.name, s.status) for s in stored.steps] == [(s.name, s.status) for s in job.steps]
