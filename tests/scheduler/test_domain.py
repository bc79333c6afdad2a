"""What the scheduler asks of the job service for each render event."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.jobs import (
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    FrameOutput,
    LogJobStep,
    LogLevel,
    RecordFramesRendered,
    StartJobRender,
)
from contracts.render import (
    RenderCancelled,
    RenderCompleted,
    RenderFailed,
    RenderKind,
    RenderOrdered,
    RenderStatus,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskStarted,
)
from services.scheduler.domain import job_commands_for, render_status_after

T = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
IDS = {"job_id": "job_1", "render_id": "job_1.full.1"}


def test_a_started_task_starts_the_jobs_render_step() -> None:
    event = RenderTaskStarted(**IDS, task_id=0, frames=[1], worker="w1", at=T)
    assert job_commands_for(event) == [StartJobRender(**IDS, at=T)]


def test_a_completed_task_records_its_frames_with_the_farms_timings() -> None:
    out = [
        FrameOutput(
            frame=1,
            output_id="j1-full-0000001",
            object_key="jobs/u1/j1/full/frame_0001.png",
            size_bytes=9,
            sha256="0" * 64,
        )
    ]
    event = RenderTaskCompleted(
        **IDS,
        task_id=0,
        frames=[1],
        worker="w1",
        started_at=T,
        finished_at=T.replace(minute=2),
        render_seconds=120.0,
        outputs=out,
    )
    [cmd] = job_commands_for(event)
    assert cmd == RecordFramesRendered(
        **IDS, task_id=0, frames=out, worker="w1", render_seconds=120.0, at=T.replace(minute=2)
    )


def test_task_failures_are_logged_on_the_render_step_with_the_farms_error() -> None:
    def failed(will_retry: bool) -> LogJobStep:
        event = RenderTaskFailed(
            **IDS,
            task_id=3,
            frames=[7, 8],
            worker="w2",
            error="missing texture",
            failures=1,
            will_retry=will_retry,
            at=T,
        )
        [cmd] = job_commands_for(event)
        assert isinstance(cmd, LogJobStep)
        return cmd

    retried, final = failed(True), failed(False)
    assert retried.level is LogLevel.warning and final.level is LogLevel.error
    assert "task 3 (frames 7-8) failed on w2" in retried.message
    assert "missing texture" in retried.message and "requeued" in retried.message
    assert "no retries left" in final.message


def test_the_renders_end_ends_the_job() -> None:
    assert job_commands_for(RenderCompleted(**IDS, frames_rendered=3, at=T)) == [
        CompleteJob(job_id="job_1", at=T)
    ]
    assert job_commands_for(RenderFailed(**IDS, error="task 0 failed", at=T)) == [
        FailJob(job_id="job_1", reason="task 0 failed", at=T)
    ]
    assert job_commands_for(RenderCancelled(**IDS, reason=None, at=T)) == [
        ConfirmJobCancelled(job_id="job_1", at=T)
    ]
    assert render_status_after(RenderCompleted(**IDS, frames_rendered=3, at=T)) == (
        RenderStatus.completed
    )


def test_an_order_asks_nothing_of_the_job_and_marks_the_render_ordered() -> None:
    ordered = RenderOrdered(
        **IDS,
        owner_id="usr_1",
        kind=RenderKind.full,
        attempt=1,
        frames=[1],
        chunk_size=1,
        output_dir="/r",
        output_pattern="frame_####.png",
        at=T,
    )
    assert job_commands_for(ordered) == []
    assert render_status_after(ordered) is RenderStatus.ordered
