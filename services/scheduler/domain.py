"""The scheduler's policy: job and render events in, commands out. Pure: no I/O.

A submitted job is queued (which freezes its render settings), then its render is ordered
from the deadline-bridge with the settings the queue reply froze. A cancel asks the bridge
to stop the render; a render the bridge never had is confirmed cancelled at once. Each
render event becomes the job command that records it on the job. Inbox, command ids,
retries, refusals and state belong to the kit (:mod:`libs.process`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.errors import DomainError, JobCancelling, JobFinished, RenderNotFound
from contracts.jobs import (
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    JobAccepted,
    JobCancellationRequested,
    JobSubmitted,
    LogJobStep,
    LogLevel,
    QueueJob,
    RecordFramesRendered,
    RenderOrder,
    StartJobRender,
    StepName,
)
from contracts.render import (
    CancelRender,
    RenderAccepted,
    RenderCancelled,
    RenderCompleted,
    RenderEvent,
    RenderFailed,
    RenderKind,
    RenderOrdered,
    RenderStatus,
    RenderSubmitted,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskRequeued,
    RenderTaskStarted,
    SubmitRender,
    render_id_for,
)
from libs.process import Cause, ProcessManager, Send


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
        case RenderOrdered():
            return RenderStatus.ordered
        case RenderSubmitted():
            return RenderStatus.submitted
        case RenderCompleted():
            return RenderStatus.completed
        case RenderFailed():
            return RenderStatus.failed
        case RenderCancelled():
            return RenderStatus.cancelled
    return None


#: Refusals the policy plans for: a job cancelled before it was queued, a render the
#: bridge never had. Recorded, not alerted.
CANCELLED_BEFORE_QUEUED = (JobFinished, JobCancelling)
NEVER_ON_THE_FARM = (RenderNotFound,)


class JobRender(BaseModel):
    """The scheduler's state of one job: its render and how that stands."""

    render_id: str | None = None
    status: RenderStatus | None = None
    farm_job_id: str | None = None


class RenderProcess(ProcessManager[JobRender]):
    """Takes a job from submission to the end of its render."""

    name = "scheduler"
    subjects = (
        f"events.{JobSubmitted.event_type}",
        f"events.{JobCancellationRequested.event_type}",
        "events.render.>",
    )
    state_type = JobRender

    def __init__(self, skip_reason: str) -> None:
        #: Why the steps before the render are skipped, until scene processing exists.
        self.skip_reason = skip_reason

    def key(self, event: Event) -> str | None:
        if isinstance(event, JobSubmitted | JobCancellationRequested | RenderEvent):
            return event.job_id
        return None

    def evolve(self, state: JobRender, event: Event) -> JobRender:
        if isinstance(event, JobSubmitted):
            return JobRender(render_id=render_id_for(event.job_id, RenderKind.full, 1))
        status = render_status_after(event)
        if status is None or not isinstance(event, RenderEvent):
            return state
        farm_job_id = event.farm_job_id if isinstance(event, RenderSubmitted) else None
        return JobRender(
            render_id=event.render_id,
            status=status,
            farm_job_id=farm_job_id or state.farm_job_id,
        )

    def policy(self, cause: Cause, state: JobRender) -> list[Send]:
        event = cause.event
        match event:
            case JobSubmitted():
                return [self._queue(event.job_id, cause)]
            case JobCancellationRequested():
                return [self._stop(event.job_id, state, cause)]
        return [self._record(cmd, cause) for cmd in job_commands_for(event)]

    def _queue(self, job_id: str, cause: Cause) -> Send:
        """Queue the job, then order its render with the settings queueing froze."""
        return Send(
            QueueJob(job_id=job_id, skip_reason=self.skip_reason),
            RenderOrder,
            then=lambda order: [self._order(order, cause)],
            # Cancelled before it was queued: make sure nothing runs on the farm.
            if_refused=lambda _: [self._stop(job_id, JobRender(), cause)],
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _order(self, order: RenderOrder, cause: Cause) -> Send:
        def fail(e: DomainError[Any]) -> list[Send]:
            reason = f"the render farm refused the render order: {e.message}"
            return [
                Send(FailJob(job_id=order.job_id, reason=reason, at=cause.recorded_at), JobAccepted)
            ]

        return Send(
            SubmitRender(
                job_id=order.job_id,
                owner_id=order.owner_id,
                kind=RenderKind.full,
                attempt=1,
                name=order.name,
                scene_key=order.scene_key,
                renderer=order.renderer,
                frame_range=order.frame_range,
                chunk_size=order.chunk_size,
                resolution=order.resolution,
                render_settings=order.render_settings,
                priority=order.priority,
            ),
            RenderAccepted,
            if_refused=fail,
        )

    def _stop(self, job_id: str, state: JobRender, cause: Cause) -> Send:
        """Cancel the job's render on the farm; with none there, confirm the cancel at once."""
        render_id = state.render_id or render_id_for(job_id, RenderKind.full, 1)
        confirm = ConfirmJobCancelled(job_id=job_id, at=cause.recorded_at)
        return Send(
            CancelRender(render_id=render_id, reason="the job was cancelled"),
            RenderAccepted,
            if_refused=lambda _: [Send(confirm, JobAccepted)],
            tolerate=NEVER_ON_THE_FARM,
        )

    def _record(self, cmd: Command, cause: Cause) -> Send:
        """Record a render event on the job. A refused completion fails the job with the
        reason, or it would stay rendering for ever."""
        if isinstance(cmd, CompleteJob):
            job_id = cmd.job_id

            def fail(e: DomainError[Any]) -> list[Send]:
                reason = f"the render completed but the job refused it: {e.code}: {e.message}"
                return [Send(FailJob(job_id=job_id, reason=reason, at=cmd.at), JobAccepted)]

            return Send(cmd, JobAccepted, if_refused=fail)
        return Send(cmd, JobAccepted)
