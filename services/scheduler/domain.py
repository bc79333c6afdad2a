"""What the scheduler does about each event: pure decisions, no I/O.

A render event becomes the job command that records it on the job. Job events that need
the farm (submission, cancel) are handled by :mod:`services.scheduler.manager`, because
their second step depends on the first one's reply.
"""

from __future__ import annotations

from contracts.base import Command, Event
from contracts.jobs import (
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    LogJobStep,
    LogLevel,
    RecordFramesRendered,
    StartJobRender,
    StepName,
)
from contracts.render import (
    RenderCancelled,
    RenderCompleted,
    RenderFailed,
    RenderStatus,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskRequeued,
    RenderTaskStarted,
)


def frames_text(frames: list[int]) -> str:
    return f"{frames[0]}-{frames[-1]}" if len(frames) > 1 else str(frames[0])


def job_commands_for(event: Event) -> list[Command]:
    """The job commands that record a render event on the job."""
    match event:
        case RenderTaskStarted():
            return [StartJobRender(job_id=event.job_id, render_id=event.render_id, at=event.at)]
        case RenderTaskCompleted():
            return [
                RecordFramesRendered(
                    job_id=event.job_id,
                    render_id=event.render_id,
                    task_id=event.task_id,
                    frames=event.outputs,
                    worker=event.worker,
                    render_seconds=event.render_seconds,
                    at=event.finished_at,
                )
            ]
        case RenderTaskFailed():
            then = "requeued" if event.will_retry else "no retries left"
            return [
                LogJobStep(
                    job_id=event.job_id,
                    step=StepName.render,
                    level=LogLevel.warning if event.will_retry else LogLevel.error,
                    message=f"task {event.task_id} (frames {frames_text(event.frames)}) failed on"
                    f" {event.worker or 'a worker'} (failure {event.failures}): {event.error};"
                    f" {then}",
                    at=event.at,
                )
            ]
        case RenderTaskRequeued():
            return [
                LogJobStep(
                    job_id=event.job_id,
                    step=StepName.render,
                    level=LogLevel.info,
                    message=f"task {event.task_id} requeued on the farm",
                    at=event.at,
                )
            ]
        case RenderCompleted():
            return [CompleteJob(job_id=event.job_id, at=event.at)]
        case RenderFailed():
            return [FailJob(job_id=event.job_id, reason=event.error, at=event.at)]
        case RenderCancelled():
            return [ConfirmJobCancelled(job_id=event.job_id, at=event.at)]
    return []


def render_status_after(event: Event) -> RenderStatus | None:
    """The render's status in the scheduler's view after ``event``, if it changes it."""
    match event:
        case RenderCompleted():
            return RenderStatus.completed
        case RenderFailed():
            return RenderStatus.failed
        case RenderCancelled():
            return RenderStatus.cancelled
    return None
