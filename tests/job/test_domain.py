"""The job aggregate, without I/O: staging its scene, the scheduler's commands, out-of-order
and repeated delivery, the slot-freeing terminal events, and the measured ETA its events
give the jobs read model's view."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.base import Event
from contracts.envelope import EtaView
from contracts.errors import DomainError, InvalidStateTransition, JobCancelling, JobFinished, JobRef
from contracts.jobs import (
    FrameOutput,
    FrameRange,
    JobCancelled,
    JobChanges,
    JobCompleted,
    JobFailed,
    JobFramesRendered,
    JobPaused,
    JobQueued,
    JobSceneStaged,
    JobSpec,
    JobStatus,
    JobStepFailed,
    JobStepLogged,
    JobStepProgressed,
    JobStepSkipped,
    JobStepStarted,
    JobSubmitted,
    LogLevel,
    Resolution,
    StepName,
    StepStatus,
)
from contracts.scenes import FindingSeverity, SceneFinding
from services.job.domain import (
    CANCELLED_ON_FARM,
    TERMINAL_EVENTS,
    TRANSITIONS,
    Job,
    OwnerJobs,
)
from services.job.views import JobView
from tests.aggregates import evolve, given
from tests.fixtures import SCENE_ID, scene_ref

NOW = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
S = JobStatus
RENDER = "job_1.full.1"
PREP = (StepName.scene_check, StepName.repath, StepName.render_settings)
STAGED_KEY = f"staged/usr_1/{'5c' * 32}/shot_010.blend"


def submitted(frames: int = 24, chunk_size: int = 4) -> Job:
    job = Job()
    spec = JobSpec(
        name="shot_010",
        scene_id=SCENE_ID,
        frame_range=FrameRange(start=1, end=frames),
        chunk_size=chunk_size,
        resolution=Resolution(width=1920, height=1080),
    )
    return evolve(job, job.submit("job_1", "usr_1", spec, scene_ref(), NOW))


def staging(**kw: int) -> Job:
    job = submitted(**kw)
    return evolve(job, job.start_staging(NOW))


def staged(**kw: int) -> Job:
    job = staging(**kw)
    return evolve(job, job.record_staged(STAGED_KEY, False, NOW))


PREPARED_KEY = "prepared/job_1/shot_010.blend"


def prepared(**kw: int) -> Job:
    """Staged, then checked (no findings), repathed and given its settings by a worker."""
    job = staged(**kw)
    evolve(job, job.record_scene_checked([], 3, 0, NOW))
    evolve(job, job.record_repathed(NOW))
    return evolve(job, job.record_prepared(PREPARED_KEY, None, NOW))


def submitted_before_uploads() -> JobSubmitted:
    """A submission stored before scene uploads: a key on the farm, no scene."""
    return JobSubmitted.model_validate(
        {
            **submitted().pending[0].model_dump(exclude={"scene"}),
            "scene_key": "scenes/shot_010/main.blend",
        }
    )


def queued(**kw: int) -> Job:
    job = prepared(**kw)
    return evolve(job, job.queue("no scene processing yet", NOW))


def rendering(**kw: int) -> Job:
    job = queued(**kw)
    return evolve(job, job.start_render(NOW))


def cancelling(**kw: int) -> Job:
    job = rendering(**kw)
    return evolve(job, job.cancel("wrong camera", NOW))


def outputs(*frames: int) -> list[FrameOutput]:
    return [
        FrameOutput(
            frame=n,
            output_id=f"j1-full-{n:07d}",
            object_key=f"jobs/u1/j1/full/{n:04d}.png",
            size_bytes=10,
            sha256="0" * 64,
        )
        for n in frames
    ]


def record(
    job: Job,
    task_id: int,
    *,
    frames: Sequence[int] | None = None,
    worker: str = "w1",
    seconds: float = 10.0,
    at: datetime = NOW,
    render_id: str = RENDER,
) -> list[Event]:
    if frames is None:
        first = 1 + task_id * job.chunk_size
        assert job.frame_range is not None
        frames = range(first, min(first + job.chunk_size, job.frame_range.end + 1))
    return job.record_frames(render_id, task_id, outputs(*frames), worker, seconds, None, at)


def types(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def refused(call: object, *args: object) -> type[DomainError[Any]]:
    assert callable(call)
    with pytest.raises(DomainError) as e:
        call(*args)
    return type(e.value)


# -- staging the scene --------------------------------------------------------------------


def test_a_new_job_waits_for_its_scene_staged_before_it_can_be_queued() -> None:
    job = submitted()
    assert job.scene_key is None and job.status is S.submitted
    assert job.steps[0].name is StepName.stage_scene
    assert refused(job.queue, "x", NOW) is InvalidStateTransition
    assert refused(staging().queue, "x", NOW) is InvalidStateTransition


def test_staging_moves_the_job_to_preparing_with_the_stage_step_running_and_its_progress() -> None:
    job = submitted()
    events = job.start_staging(NOW)
    assert types(events) == ["JobStepStarted"]
    evolve(job, events)
    assert job.status is S.preparing and job.step(StepName.stage_scene).status is StepStatus.running
    assert job.start_staging(NOW) == []
    [progress] = job.record_staging_progress(1_000_000, 4_000_000, NOW)
    assert isinstance(progress, JobStepProgressed) and progress.progress_percent == 25.0
    envelope = view(job).envelope(3, NOW)
    assert envelope.status is S.preparing and envelope.current_step is StepName.stage_scene
    assert envelope.steps[0].progress_percent == 25.0
    assert envelope.progress_percent == 1.2  # 5 % of the job x 25 %


def test_staging_progress_only_moves_forward_and_a_late_report_changes_nothing() -> None:
    job = staging()
    evolve(job, job.record_staging_progress(3, 4, NOW))
    assert job.record_staging_progress(2, 4, NOW) == []  # delivered late
    assert job.record_staging_progress(3, 4, NOW) == []  # delivered twice
    evolve(job, job.record_staged(STAGED_KEY, False, NOW))
    assert job.record_staging_progress(4, 4, NOW) == []


def test_a_staged_scene_succeeds_the_step_and_names_the_file_the_farm_opens() -> None:
    job = staging()
    events = job.record_staged(STAGED_KEY, True, NOW)
    assert types(events) == ["JobSceneStaged", "JobStepSucceeded"]
    assert isinstance(events[0], JobSceneStaged) and events[0].reused
    evolve(job, events)
    assert job.scene_key == STAGED_KEY and job.status is S.preparing
    assert job.record_staged(STAGED_KEY, True, NOW) == []
    stage = view(job).step(StepName.stage_scene)
    assert (stage.status, stage.progress_percent) == (StepStatus.succeeded, 100.0)


def test_a_scene_prepared_from_its_needed_files_keeps_that_copy_and_queues_once_staged() -> None:
    """The scene steps run on the test frames' files while the rest is staged; the full
    render is not queued before the staging ends, and the staged scene does not replace
    the prepared copy the renders open."""
    job = staging()
    needed_key = "staged/.needed/job_1/shot.blend"
    events = job.record_needed_staged(needed_key, 3, 1_000, NOW)
    assert types(events) == ["JobSceneNeededFilesStaged"]
    evolve(job, events)
    assert job.record_needed_staged(needed_key, 3, 1_000, NOW) == []  # once
    assert job.scene_key == needed_key
    evolve(job, job.record_scene_checked([], 2, 0, NOW))
    evolve(job, job.record_repathed(NOW))
    evolve(job, job.record_prepared("prepared/job_1/shot.blend", None, NOW))
    assert job.status is S.ready and job.step(StepName.stage_scene).status is StepStatus.running
    assert refused(job.model_copy(deep=True).queue, "", NOW) is InvalidStateTransition
    evolve(job, job.record_staged(STAGED_KEY, False, NOW))
    assert job.scene_key == "prepared/job_1/shot.blend"
    assert types(job.queue("", NOW))[-1] == "JobQueued"


def test_staging_reports_before_the_start_start_the_stage_step_first() -> None:
    job = submitted()
    assert types(job.record_staging_progress(1, 2, NOW)) == ["JobStepStarted", "JobStepProgressed"]
    other = submitted()
    events = other.record_staged(STAGED_KEY, False, NOW)
    assert types(events) == ["JobStepStarted", "JobSceneStaged", "JobStepSucceeded"]
    assert evolve(other, events).start_staging(NOW) == []  # the start, delivered last


def test_a_staging_failure_fails_the_stage_step_and_the_job_with_its_code() -> None:
    job = staging()
    events = job.fail("main.blend: bytes do not match", NOW, "scene_checksum_mismatch")
    assert [(type(e), getattr(e, "step", None)) for e in events] == [
        (JobStepFailed, StepName.stage_scene),
        (JobFailed, None),
    ]
    evolve(job, events)
    envelope = view(job).envelope(4, NOW)
    assert (envelope.status, envelope.failure_code) == (S.failed, "scene_checksum_mismatch")
    assert envelope.steps[0].error_code == "scene_checksum_mismatch"
    assert envelope.steps[-1].status is StepStatus.pending  # the render never ran
    # The staging refused before it started fails the stage step too, not the render.
    [step_failed, _] = submitted().fail("refused", NOW, "validation_failed")
    assert isinstance(step_failed, JobStepFailed) and step_failed.step is StepName.stage_scene


def test_a_cancel_while_the_scene_is_staged_is_at_once_and_later_reports_change_nothing() -> None:
    job = staging()
    events = job.cancel("wrong scene", NOW)
    assert types(events) == ["JobCancellationRequested", "JobCancelled"]
    evolve(job, events)
    assert job.status is S.cancelled
    assert job.step(StepName.stage_scene).status is StepStatus.cancelled
    assert job.record_staging_progress(5, 10, NOW) == []
    assert job.record_staged(STAGED_KEY, False, NOW) == []
    assert job.start_staging(NOW) == []


def test_a_job_from_before_uploads_has_no_scene_to_stage_and_is_queued_as_before() -> None:
    old = submitted_before_uploads()
    job = given(Job(), old)
    assert job.scene is None and job.scene_key == "scenes/shot_010/main.blend"
    assert refused(job.start_staging, NOW) is InvalidStateTransition
    events = job.queue("no scene processing yet", NOW)
    assert types(events) == ["JobStepSkipped"] * 5 + ["JobQueued"]
    assert evolve(job, events).status is S.queued
    seen = JobView.submitted(old)
    assert (seen.scene_id, seen.scene_file) == (None, "scenes/shot_010/main.blend")


def test_a_stored_schema_1_submission_still_loads_as_a_job_without_a_scene() -> None:
    from contracts.base import EVENTS

    stored = {
        **submitted().pending[0].model_dump(mode="json", exclude={"scene", "scene_key"}),
        "scene_key": "scenes/old.blend",
    }
    event = EVENTS.decode("job.JobSubmitted", 1, stored)
    assert isinstance(event, JobSubmitted)
    assert (event.scene, event.scene_key) == (None, "scenes/old.blend")
    failed = EVENTS.decode("job.JobFailed", 1, {"job_id": "job_1", "reason": "x", "at": NOW})
    assert isinstance(failed, JobFailed) and failed.code is None


# -- queue -------------------------------------------------------------------------------


def test_a_staged_job_is_not_queued_before_its_scene_is_prepared() -> None:
    job = staged()
    assert refused(job.queue, "no test render asked for", NOW) is InvalidStateTransition


def test_queueing_a_prepared_job_skips_only_what_is_still_pending() -> None:
    job = prepared()
    assert job.status is S.ready and job.scene_key == PREPARED_KEY
    events = job.queue("no test render asked for", NOW)
    assert [(type(e), getattr(e, "step", None)) for e in events] == [
        (JobStepSkipped, StepName.test_render),
        (JobQueued, None),
    ]
    assert evolve(job, events).status is S.queued
    assert [s.status for s in job.steps] == [StepStatus.succeeded] * 4 + [
        StepStatus.skipped,
        StepStatus.pending,
    ]
    assert view(job).eta.reason == "not_started"


# -- scene steps (from the scene workers) ---------------------------------------------------


def finding(code: str, severity: FindingSeverity, path: str | None = None) -> SceneFinding:
    return SceneFinding(code=code, severity=severity, message=f"{code} found", path=path)


def test_the_scene_steps_run_in_order_and_leave_the_job_ready_with_the_prepared_scene() -> None:
    job = staged()
    evolve(job, job.start_step(StepName.scene_check, NOW))
    assert job.status is S.preparing and job.running_steps() == [StepName.scene_check]
    evolve(job, job.record_step_progress(StepName.scene_check, 40.0, NOW))
    warning = finding("resolution_differs", FindingSeverity.warning)
    checked = job.record_scene_checked([warning], 12, 0, NOW)
    assert types(checked) == ["JobSceneChecked", "JobStepSucceeded"]
    evolve(job, checked)
    assert types(job.record_repathed(NOW)) == ["JobStepStarted", "JobStepSucceeded"]
    events = job.record_prepared(PREPARED_KEY, None, NOW)
    assert types(events) == ["JobStepStarted", "JobScenePrepared", "JobStepSucceeded"]
    evolve(job, events)
    assert (job.status, job.scene_key, job.prepared) == (S.ready, PREPARED_KEY, True)
    envelope = view(job).envelope(9, NOW)
    assert envelope.scene_findings == [warning]
    assert [s.status for s in envelope.steps[:4]] == [StepStatus.succeeded] * 4


def test_a_scene_check_error_fails_the_job_before_any_render_with_its_findings() -> None:
    job = staged()
    missing = finding("main_file_missing", FindingSeverity.error, "scene.blend")
    also = finding("library_missing", FindingSeverity.error, "//lib/props.blend")
    events = job.record_scene_checked([missing, also], 5, 2, NOW)
    assert types(events) == ["JobStepStarted", "JobSceneChecked", "JobStepFailed", "JobFailed"]
    evolve(job, events)
    envelope = view(job).envelope(6, NOW)
    assert (envelope.status, envelope.failure_code) == (S.failed, "scene_check_failed")
    assert envelope.failure_reason == (
        "the scene check found main_file_missing: main_file_missing found (and 1 more error)"
    )
    assert envelope.scene_findings == [missing, also]
    check = envelope.steps[1]
    assert (check.status, check.error_code) == (StepStatus.failed, "scene_check_failed")
    assert envelope.steps[-1].status is StepStatus.pending  # nothing rendered
    assert job.record_repathed(NOW) == [] and job.record_prepared(PREPARED_KEY, None, NOW) == []


def test_scene_step_reports_repeated_or_late_change_nothing() -> None:
    job = staged()
    evolve(job, job.record_scene_checked([], 1, 0, NOW))
    assert job.record_scene_checked([], 1, 0, NOW) == []  # a worker that took the item over
    assert job.start_step(StepName.scene_check, NOW) == []  # the start, delivered last
    evolve(job, job.record_step_progress(StepName.repath, 50.0, NOW))
    assert job.record_step_progress(StepName.repath, 30.0, NOW) == []
    evolve(job, job.record_repathed(NOW))
    evolve(job, job.record_prepared(PREPARED_KEY, None, NOW))
    assert job.record_prepared(PREPARED_KEY, None, NOW) == []


def test_a_scene_the_workers_cannot_rewrite_skips_repath_and_settings_and_is_ready() -> None:
    job = staged()
    evolve(job, job.record_scene_checked([], 0, 0, NOW))
    events = job.record_prepared(STAGED_KEY, "not a .blend file: rendered as staged", NOW)
    assert types(events) == ["JobStepSkipped", "JobStepSkipped", "JobScenePrepared"]
    assert evolve(job, events).status is S.ready and job.scene_key == STAGED_KEY


def test_scene_steps_need_a_staged_scene() -> None:
    job = staging()
    assert refused(job.start_step, StepName.scene_check, NOW) is InvalidStateTransition
    assert refused(job.record_scene_checked, [], 0, 0, NOW) is InvalidStateTransition


@pytest.mark.parametrize("make", [queued, rendering])
def test_queueing_again_changes_nothing(make: object) -> None:
    assert callable(make)
    job = make()
    assert job.queue("again", NOW) == []


def test_queueing_a_paused_or_completed_job_changes_nothing() -> None:
    job = rendering()
    assert evolve(job, job.complete(NOW)).queue("again", NOW) == []

    paused = given(rendering(), JobPaused(job_id="job_1", reason="cost cap", at=NOW))
    assert paused.queue("again", NOW) == []


def test_an_ended_job_cannot_be_queued() -> None:
    cancelled = submitted()
    evolve(cancelled, cancelled.cancel(None, NOW))
    failed = queued()
    evolve(failed, failed.fail("scene missing", NOW))
    for job in (cancelled, failed):
        assert refused(job.queue, "x", NOW) is JobFinished


def test_a_cancelling_job_is_neither_queued_nor_changed_and_says_so() -> None:
    job = cancelling()
    assert refused(job.queue, "x", NOW) is JobCancelling
    with pytest.raises(JobCancelling) as e:
        job.update(JobChanges(name="renamed"))
    assert (e.value.code, e.value.http_status, e.value.retryable) == ("job_cancelling", 409, False)
    assert e.value.details == JobRef(job_id="job_1")


def test_a_job_with_a_running_preparation_step_cannot_be_queued() -> None:
    job = given(staged(), JobStepStarted(job_id="job_1", step=StepName.repath, at=NOW))
    assert refused(job.queue, "x", NOW) is InvalidStateTransition
    # Recording the queueing while a step runs is refused too (the state machine's guard).
    with pytest.raises(InvalidStateTransition):
        job.record(JobQueued(job_id="job_1", at=NOW))


# -- start -------------------------------------------------------------------------------


def test_starting_the_render_moves_a_queued_job_to_rendering_once() -> None:
    job = queued()
    events = job.start_render(NOW)
    assert types(events) == ["JobStepStarted"]
    evolve(job, events)
    assert job.status is S.rendering and job.step(StepName.render).status is StepStatus.running
    assert job.start_render(NOW) == []
    assert view(job).eta.reason == "no_measurements"


def test_a_start_that_arrives_after_a_task_result_or_the_end_changes_nothing() -> None:
    job = queued()
    evolve(job, record(job, 0))
    assert job.start_render(NOW) == []
    evolve(job, job.complete(NOW))
    assert job.start_render(NOW) == []
    assert submitted().start_render(NOW) == []


# -- frames ------------------------------------------------------------------------------


def test_recording_a_task_counts_its_frames_and_the_render_steps_progress() -> None:
    job = rendering(frames=24, chunk_size=4)
    events = record(job, 0)
    assert types(events) == ["JobFramesRendered"]
    evolve(job, events)
    assert job.frames_done == 4
    assert view(job).step(StepName.render).progress_percent == 16.7  # 4/24, one decimal
    assert view(job).progress_percent == round(20 + 75 * 16.7 / 100, 1)
    evolve(job, record(job, 1))
    assert job.frames_done == 8 and view(job).step(StepName.render).progress_percent == 33.3
    envelope = view(job).envelope(9, NOW)
    assert envelope.frames_done == 8 and envelope.frames_total == 24


def test_a_task_result_before_the_render_start_starts_the_render_step_first() -> None:
    job = queued()
    events = record(job, 3, at=NOW + timedelta(minutes=2))
    assert types(events) == ["JobStepStarted", "JobFramesRendered"]
    evolve(job, events)
    assert job.status is S.rendering and job.frames_done == 4
    assert view(job).step(StepName.render).started_at == NOW + timedelta(minutes=2)


def test_recording_the_same_task_again_changes_nothing() -> None:
    job = rendering()
    evolve(job, record(job, 2))
    assert record(job, 2) == []
    assert record(job, 2, worker="another", seconds=99) == []  # a retry reported twice
    assert job.frames_done == 4 and job.tasks_recorded == 1


def test_a_late_result_after_a_cancel_or_a_failure_changes_nothing() -> None:
    cancelled = cancelling()
    evolve(cancelled, cancelled.confirm_cancelled(NOW))
    failed = rendering()
    evolve(failed, failed.fail("farm gone", NOW))
    for job in (cancelled, failed):
        assert record(job, 0) == []


def test_results_still_arriving_while_cancelling_are_recorded_without_moving_the_job() -> None:
    job = queued()
    evolve(job, job.cancel("wrong camera", NOW))
    assert job.status is S.cancelling
    events = record(job, 0)
    assert types(events) == ["JobFramesRendered"]  # no step start: the job stays cancelling
    assert evolve(job, events).status is S.cancelling and job.frames_done == 4


def test_a_completed_job_records_a_late_task_of_its_own_render_only() -> None:
    job = rendering()
    evolve(job, record(job, 0))
    evolve(job, job.complete(NOW))
    late = record(job, 5)
    assert types(late) == ["JobFramesRendered"]
    evolve(job, late)
    assert job.status is S.completed and job.frames_done == 8
    assert view(job).step(StepName.render).progress_percent == 100.0
    assert record(job, 1, render_id="job_1.full.2") == []


def test_a_new_render_of_the_job_counts_from_zero_and_the_old_ones_results_are_ignored() -> None:
    job = rendering()
    evolve(job, record(job, 0))
    evolve(job, record(job, 1))
    evolve(job, record(job, 0, render_id="job_1.full.2", worker="w9", seconds=50))
    assert job.render_id == "job_1.full.2" and job.past_render_ids == [RENDER]
    assert (job.frames_done, job.tasks_recorded, view(job).workers) == (4, 1, ["w9"])
    assert record(job, 2) == []  # attempt 1 was replaced
    assert types(record(job, 1, render_id="job_1.full.2")) == ["JobFramesRendered"]


def test_frames_cannot_be_recorded_for_a_job_that_was_never_queued() -> None:
    assert refused(record, submitted(), 0) is InvalidStateTransition


def test_recorded_task_ids_are_kept_as_ranges_so_the_state_stays_small() -> None:
    job = rendering(frames=2000, chunk_size=1)
    order = list(range(2000))
    random.Random(7).shuffle(order)
    for task_id in order[:1000]:
        evolve(job, record(job, task_id, frames=[task_id + 1], worker=f"w{task_id % 8}"))
    assert 1 < len(job.task_ranges) < 1000
    for task_id in order[1000:]:
        evolve(job, record(job, task_id, frames=[task_id + 1], worker=f"w{task_id % 8}"))
    assert job.task_ranges == [(0, 1999)]
    assert job.frames_done == 2000 and job.tasks_recorded == 2000
    assert all(record(job, t, frames=[t + 1]) == [] for t in (0, 777, 1999))
    stored = json.dumps(job.model_dump(mode="json"))
    assert len(stored) < 4000  # no list of tasks or frames in the state
    again = Job.model_validate(json.loads(stored))  # as a snapshot stores and reads it
    assert again.model_dump() == job.model_dump() and record(again, 777, frames=[778]) == []


# -- logs --------------------------------------------------------------------------------


def test_a_step_log_is_one_event() -> None:
    job = rendering()
    [event] = job.log_step(StepName.render, LogLevel.warning, "task 3 retried", NOW)
    assert isinstance(event, JobStepLogged) and event.message == "task 3 retried"
    assert evolve(job, [event]).status is S.rendering


# -- complete, fail, confirm cancelled -----------------------------------------------------


def test_completing_a_rendering_job_succeeds_the_render_step() -> None:
    job = rendering()
    events = job.complete(NOW)
    assert types(events) == ["JobStepSucceeded", "JobCompleted"]
    evolve(job, events)
    assert job.status is S.completed and view(job).progress_percent == 100.0
    assert job.step(StepName.render).status is StepStatus.succeeded
    envelope = view(job).envelope(8, NOW)
    assert envelope.eta.reason == "finished" and envelope.allowed_actions == []
    assert job.complete(NOW) == []


def test_completing_a_job_whose_start_never_arrived_starts_the_render_step_first() -> None:
    job = queued()
    events = job.complete(NOW)
    assert types(events) == ["JobStepStarted", "JobStepSucceeded", "JobCompleted"]
    assert evolve(job, events).status is S.completed


def test_a_completion_after_the_cancel_was_asked_completes_the_job() -> None:
    job = cancelling()
    assert types(job.complete(NOW)) == ["JobStepSucceeded", "JobCompleted"]
    assert evolve(job, job.complete(NOW)).status is S.completed
    assert S.completed in TRANSITIONS[S.cancelling]


def test_a_completion_after_a_cancel_or_a_failure_changes_nothing() -> None:
    job = cancelling()
    evolve(job, job.confirm_cancelled(NOW))
    assert job.complete(NOW) == []
    failed = rendering()
    evolve(failed, failed.fail("boom", NOW))
    assert failed.complete(NOW) == []


def test_a_job_that_was_never_queued_cannot_complete() -> None:
    assert refused(submitted().complete, NOW) is InvalidStateTransition


def test_failing_fails_the_render_step_or_the_running_step_and_the_job() -> None:
    job = rendering()
    events = job.fail("out of memory on every worker", NOW)
    assert types(events) == ["JobStepFailed", "JobFailed"]
    evolve(job, events)
    assert job.status is S.failed and job.failure_reason == "out of memory on every worker"
    render = view(job).step(StepName.render)
    assert (render.status, render.error) == (StepStatus.failed, "out of memory on every worker")
    assert job.step(StepName.render).status is StepStatus.failed
    assert job.fail("again", NOW) == []

    preparing = given(staged(), JobStepStarted(job_id="job_1", step=StepName.repath, at=NOW))
    [step_failed, _] = preparing.fail("bad path", NOW)
    assert isinstance(step_failed, JobStepFailed) and step_failed.step is StepName.repath


@pytest.mark.parametrize("status", [s for s in S if s not in (S.completed, S.failed, S.cancelled)])
def test_every_open_status_may_fail(status: JobStatus) -> None:
    assert S.failed in TRANSITIONS[status]


def test_the_farms_confirmation_cancels_a_cancelling_job_once() -> None:
    job = cancelling()
    events = job.confirm_cancelled(NOW)
    assert types(events) == ["JobCancelled"]
    evolve(job, events)
    assert job.status is S.cancelled
    assert job.step(StepName.render).status is StepStatus.cancelled
    assert job.confirm_cancelled(NOW) == []


def test_a_render_cancelled_on_the_farm_without_a_request_fails_the_job() -> None:
    for job in (queued(), rendering()):
        events = job.confirm_cancelled(NOW)
        assert types(events) == ["JobStepFailed", "JobFailed"]
        evolve(job, events)
        assert job.status is S.failed and job.failure_reason == CANCELLED_ON_FARM
        assert view(job).step(StepName.render).error == CANCELLED_ON_FARM


def test_a_confirmation_for_an_ended_job_changes_nothing() -> None:
    done = rendering()
    evolve(done, done.complete(NOW))
    failed = rendering()
    evolve(failed, failed.fail("x", NOW))
    assert done.confirm_cancelled(NOW) == failed.confirm_cancelled(NOW) == []


# -- the owner's slot --------------------------------------------------------------------


def ended_jobs() -> list[tuple[str, Job, list[Event]]]:
    ended: list[tuple[str, Job, Callable[[Job], list[Event]]]] = [
        ("completed", rendering(), lambda j: j.complete(NOW)),
        ("completed while cancelling", cancelling(), lambda j: j.complete(NOW)),
        ("failed", rendering(), lambda j: j.fail("x", NOW)),
        ("cancel confirmed", cancelling(), lambda j: j.confirm_cancelled(NOW)),
        ("cancelled on the farm", rendering(), lambda j: j.confirm_cancelled(NOW)),
        ("cancelled before the farm", submitted(), lambda j: j.cancel(None, NOW)),
    ]
    return [(name, job, decide(job)) for name, job, decide in ended]


def test_every_way_a_job_ends_carries_an_event_that_frees_the_owners_slot() -> None:
    for name, job, events in ended_jobs():
        assert evolve(job, events).status in (S.completed, S.failed, S.cancelled), name
        assert any(isinstance(e, TERMINAL_EVENTS) for e in events), name
        owner = OwnerJobs(active=["job_0", "job_1"])
        owner.free("usr_1", "job_1")
        assert owner.active == ["job_0"] and owner.free("usr_1", "job_1") == []
    assert set(TERMINAL_EVENTS) == {JobCompleted, JobFailed, JobCancelled}


# -- ETA ---------------------------------------------------------------------------------


def test_progress_counts_only_work_done_and_waiting_adds_nothing() -> None:
    """Each preparation step 5 % once it succeeded (a running one its share of its own
    progress), the test render 5 % once it ran, the render 75 % times frames done over
    frames; a skipped step and time spent queued count nothing."""
    assert view(submitted()).progress_percent == 0.0
    job = staging()
    evolve(job, job.record_staging_progress(50, 100, NOW))
    assert (job.status, view(job).progress_percent) == (S.preparing, 2.5)
    assert view(staged()).progress_percent == 5.0
    ready = prepared()
    assert (ready.status, view(ready).progress_percent) == (S.ready, 20.0)
    waiting = queued()  # its test render was skipped: no share for it
    assert (waiting.status, view(waiting).progress_percent) == (S.queued, 20.0)
    job = rendering()
    assert (job.status, view(job).progress_percent) == (S.rendering, 20.0)
    evolve(job, record(job, 0))
    assert view(job).progress_percent == round(20 + 75 * 16.7 / 100, 1)  # 4 of 24 frames
    evolve(job, job.complete(NOW))
    assert (job.status, view(job).progress_percent) == (S.completed, 100.0)


def test_a_job_queued_with_every_step_skipped_reads_no_progress() -> None:
    old = submitted_before_uploads()
    seen = JobView.submitted(old)
    for e in given(Job(), old).queue("no scene processing yet", NOW):
        seen.apply(e)
    assert (seen.status, seen.progress_percent) == (S.queued, 0.0)


def view(job: Job, *history: Event) -> JobView:
    """The jobs read model's view of what ``job`` recorded, then of ``history``."""
    first, *rest = [*job.pending, *history]
    assert isinstance(first, JobSubmitted)
    seen = JobView.submitted(first)
    for e in rest:
        seen.apply(e)
    return seen


def eta(job: Job, *history: Event) -> EtaView:
    return view(job, *history).eta


def test_the_eta_spreads_the_tasks_left_at_their_mean_time_over_the_workers_seen() -> None:
    job = rendering(frames=24, chunk_size=4)  # 6 tasks
    evolve(job, record(job, 0, worker="a", seconds=10, at=NOW))
    # 5 tasks left x 10 s, 1 worker
    assert eta(job) == EtaView(eta_seconds=50, eta_at=NOW + timedelta(seconds=50), reason=None)
    later = NOW + timedelta(seconds=5)
    evolve(job, record(job, 1, worker="b", seconds=20, at=later))
    # 4 left x mean 15 s / 2 workers
    assert eta(job) == EtaView(eta_seconds=30, eta_at=later + timedelta(seconds=30), reason=None)
    evolve(job, record(job, 2, worker="c", seconds=15, at=later))
    evolve(job, record(job, 3, worker="d", seconds=15, at=later))
    # 2 left x 15 s; 4 workers seen but only 2 tasks left to share
    assert eta(job).eta_seconds == 15
    evolve(job, record(job, 4, worker="a", seconds=15, at=later))
    evolve(job, record(job, 5, worker="a", seconds=15, at=later))
    assert eta(job) == EtaView(eta_seconds=0, eta_at=later, reason=None)


def test_the_eta_rounds_up_to_whole_seconds_and_counts_a_short_last_task() -> None:
    job = rendering(frames=7, chunk_size=3)  # tasks of 3, 3 and 1 frames
    evolve(job, record(job, 0, seconds=0.1))
    evolve(job, record(job, 1, seconds=0.2))
    # 1 left x mean 0.15 s: 1 s, not 0; float noise (0.1 + 0.2) never adds a second
    assert eta(job).eta_seconds == 1
    job = rendering(frames=30, chunk_size=1)
    for t in range(3):
        evolve(job, record(job, t, frames=[t + 1], seconds=0.1))
    assert eta(job).eta_seconds == 3  # 27 x 0.1 s: 2.7 -> 3


def test_the_eta_counts_from_the_latest_task_even_when_results_arrive_out_of_order() -> None:
    job = rendering(frames=12, chunk_size=4)
    evolve(job, record(job, 1, seconds=60, at=NOW + timedelta(minutes=2)))
    evolve(job, record(job, 0, seconds=60, at=NOW + timedelta(minutes=1)))
    assert eta(job).eta_at == NOW + timedelta(minutes=2, seconds=60)


def test_without_a_measurement_or_while_not_rendering_there_is_no_eta() -> None:
    assert eta(submitted()).reason == "not_started"
    assert eta(queued()).reason == "not_started"
    assert eta(rendering()) == EtaView(eta_seconds=None, eta_at=None, reason="no_measurements")

    job = rendering()
    evolve(job, record(job, 0))
    paused = JobPaused(job_id="job_1", reason="cost cap", at=NOW)
    given(job, paused)
    assert eta(job, paused).reason == "paused"
    done = rendering()
    evolve(done, record(done, 0))
    evolve(done, done.complete(NOW))
    assert eta(done).reason == "finished"


def test_a_frames_event_carries_what_the_frames_read_model_needs() -> None:
    job = rendering()
    [event] = record(job, 0, worker="w7", seconds=12.5)
    assert isinstance(event, JobFramesRendered)
    assert (event.render_id, event.task_id, event.worker, event.render_seconds) == (
        RENDER,
        0,
        "w7",
        12.5,
    )
    assert [f.frame for f in event.frames] == [1, 2, 3, 4]
