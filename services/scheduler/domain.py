"""The scheduler's policy: job, staging and render events in, commands out. Pure: no I/O.

A submitted job's scene is first staged to the farm by the upload service; its staging
events become the job commands that show the ``stage_scene`` step (start, progress, logs,
success with the staged key, or failure). Once staged, the job is queued (which freezes
its render settings), then its render is ordered from the deadline-bridge with the settings
the queue reply froze. A job from before scene uploads (no scene) is queued at once. A
cancel stops the staging and asks the bridge to stop the render; a render the bridge never
had is confirmed cancelled at once. Each render event becomes the job command that records
it on the job. Inbox, command ids, retries, refusals and state belong to the kit
(:mod:`libs.process`).
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
    RecordSceneStaged,
    RecordSceneStagingProgress,
    RenderOrder,
    StartJobRender,
    StartSceneStaging,
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
from contracts.staging import (
    CancelStaging,
    SceneStaged,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingStarted,
    StageScene,
    StagingAccepted,
)
from libs.process import Cause, ProcessManager, Send

#: The upload service's staging events the scheduler turns into job commands.
StagingEvent = SceneStagingStarted | SceneStagingProgressed | SceneStaged | SceneStagingFailed


def frames_text(frames: list[int]) -> str:
    return f"{frames[0]}-{frames[-1]}" if len(frames) > 1 else str(frames[0])


def size_text(size_bytes: int) -> str:
    """Bytes for a log line: ``512 B``, ``12.0 MiB``, ``200.0 GiB``."""
    size, units = float(size_bytes), ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{size_bytes} B" if units[0] == "B" else f"{size:.1f} {units[0]}"


def staging_log(event: SceneStagingStarted | SceneStaged) -> LogJobStep:
    """The ``stage_scene`` log line of a staging start or end."""
    if isinstance(event, SceneStagingStarted):
        files = "1 file" if event.files_total == 1 else f"{event.files_total} files"
        message = f"copying the scene to the farm: {files}, {size_text(event.bytes_total)}"
    elif event.reused:
        message = f"the farm holds this scene already: reusing {event.staged_key}"
    else:
        message = (
            f"staged {size_text(event.bytes_copied)} to {event.staged_key}, every file's"
            " SHA-256 checked"
        )
    return LogJobStep(
        job_id=event.job_id,
        step=StepName.stage_scene,
        level=LogLevel.info,
        message=message,
        at=event.at,
    )


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


#: Refusals the policy plans for: a job cancelled before it was queued (or while its scene
#: was staged), a render the bridge never had. Recorded, not alerted.
CANCELLED_BEFORE_QUEUED = (JobFinished, JobCancelling)
NEVER_ON_THE_FARM = (RenderNotFound,)


class JobRender(BaseModel):
    """The scheduler's state of one job: whether its scene is being staged, its render and
    how that stands."""

    staging: bool = False
    render_id: str | None = None
    status: RenderStatus | None = None
    farm_job_id: str | None = None


class RenderProcess(ProcessManager[JobRender]):
    """Takes a job from submission to the end of its render."""

    name = "scheduler"
    subjects = (
        f"events.{JobSubmitted.event_type}",
        f"events.{JobCancellationRequested.event_type}",
        f"events.{SceneStagingStarted.event_type}",
        f"events.{SceneStagingProgressed.event_type}",
        f"events.{SceneStaged.event_type}",
        f"events.{SceneStagingFailed.event_type}",
        "events.render.>",
    )
    state_type = JobRender

    def __init__(self, skip_reason: str) -> None:
        #: Why the steps before the render are skipped, until scene processing exists.
        self.skip_reason = skip_reason

    def key(self, event: Event) -> str | None:
        if isinstance(event, JobSubmitted | JobCancellationRequested | RenderEvent | StagingEvent):
            return event.job_id
        return None

    def evolve(self, state: JobRender, event: Event) -> JobRender:
        if isinstance(event, JobSubmitted):
            return JobRender(
                staging=event.scene is not None,
                render_id=render_id_for(event.job_id, RenderKind.full, 1),
            )
        if isinstance(event, SceneStaged | SceneStagingFailed):
            return state.model_copy(update={"staging": False})
        status = render_status_after(event)
        if status is None or not isinstance(event, RenderEvent):
            return state
        farm_job_id = event.farm_job_id if isinstance(event, RenderSubmitted) else None
        return JobRender(
            staging=state.staging,
            render_id=event.render_id,
            status=status,
            farm_job_id=farm_job_id or state.farm_job_id,
        )

    def policy(self, cause: Cause, state: JobRender) -> list[Send]:
        event = cause.event
        match event:
            case JobSubmitted() if event.scene is not None:
                return [self._stage(event, cause)]
            case JobSubmitted():  # from before scene uploads: the farm opens its key as given
                return [self._queue(event.job_id, cause)]
            case JobCancellationRequested():
                stop_staging = [self._stop_staging(event.job_id)] if state.staging else []
                return [*stop_staging, self._stop(event.job_id, state, cause)]
            case SceneStagingStarted():
                start = StartSceneStaging(job_id=event.job_id, at=event.at)
                return [self._staging_step(start), self._staging_step(staging_log(event))]
            case SceneStagingProgressed():
                progress = RecordSceneStagingProgress(
                    job_id=event.job_id,
                    bytes_done=event.bytes_done,
                    bytes_total=event.bytes_total,
                    at=event.at,
                )
                return [self._staging_step(progress)]
            case SceneStaged():
                return [self._staging_step(staging_log(event)), self._staged(event, cause)]
            case SceneStagingFailed():
                fail = FailJob(
                    job_id=event.job_id,
                    reason=f"the scene could not be staged to the farm: {event.reason}",
                    code=event.code,
                    at=event.at,
                )
                return [Send(fail, JobAccepted)]
        return [self._record(cmd, cause) for cmd in job_commands_for(event)]

    def _stage(self, event: JobSubmitted, cause: Cause) -> Send:
        """Ask the upload service to stage the job's scene; a refusal fails the job."""
        assert event.scene is not None

        def fail(e: DomainError[Any]) -> list[Send]:
            reason = f"the scene could not be staged to the farm: {e.message}"
            cmd = FailJob(job_id=event.job_id, reason=reason, code=e.code, at=cause.recorded_at)
            return [Send(cmd, JobAccepted)]

        return Send(
            StageScene(job_id=event.job_id, owner_id=event.owner_id, scene=event.scene),
            StagingAccepted,
            if_refused=fail,
        )

    def _staging_step(self, cmd: Command) -> Send:
        """Record a staging event on the job; a job that ended meanwhile (cancelled while
        its scene was copied) refuses it, as planned."""
        return Send(cmd, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)

    def _staged(self, event: SceneStaged, cause: Cause) -> Send:
        """Record the staged scene on the job, then queue it and order its render."""
        staged = RecordSceneStaged(
            job_id=event.job_id, scene_key=event.staged_key, reused=event.reused, at=event.at
        )
        return Send(
            staged,
            JobAccepted,
            then=lambda _: [self._queue(event.job_id, cause)],
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _stop_staging(self, job_id: str) -> Send:
        return Send(CancelStaging(job_id=job_id, reason="the job was cancelled"), StagingAccepted)

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
