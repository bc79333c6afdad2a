"""The scheduler's policy: job, billing, staging and render events in, commands out. Pure: no
I/O.

No render starts without a hold: a submitted job waits for billing's first
``billing.JobCostHeld``. Then its scene is first staged to the farm by the upload service;
its staging events become the job commands that show the ``stage_scene`` step (start,
progress, logs, success with the staged key, or failure). Once staged, the job is queued
(which freezes its render settings), then its render is ordered from the deadline-bridge
with the settings the queue reply froze. A job from before scene uploads (no scene) is
queued at once (once held). A
cancel stops the staging and asks the bridge to stop the render; a render the bridge never
had is confirmed cancelled at once. Each render event becomes the job command that records
it on the job. A hold that cannot be placed or grown (``billing.JobHoldRefused``) pauses the
job and suspends its render on the farm; the hold placed later (``JobCostHeld`` with
``resumed``) resumes the job and its render, or stages the scene of a job whose first hold
was refused. The cost cap reached (``billing.JobCostCapReached``) stops the job: it ends
failed with ``cost_cap_reached`` once its render is cancelled. Inbox, command ids, retries,
refusals and state belong to the kit (:mod:`libs.process`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.billing import JobCostCapReached, JobCostHeld, JobHoldRefused, TaskCharged
from contracts.envelope import AwaitingReason
from contracts.errors import DomainError, JobCancelling, JobFinished, RenderNotFound
from contracts.jobs import (
    ACCOUNT_SUSPENDED,
    CompleteJob,
    CompleteTestRender,
    ConfirmJobCancelled,
    FailJob,
    FailTestRender,
    FullRenderStartedBy,
    JobAccepted,
    JobCancellationRequested,
    JobFramesChanged,
    JobFullRenderReleased,
    JobPaused,
    JobPriority,
    JobRenderSettingsChanged,
    JobResumed,
    JobScenePrepared,
    JobSubmitted,
    JobTestRenderCompleted,
    JobTestRenderFailed,
    JobTestRenderRequested,
    LogJobStep,
    LogLevel,
    PauseJob,
    QueueJob,
    RecordFramesRendered,
    RecordSceneNeededFilesStaged,
    RecordSceneStaged,
    RecordSceneStagingProgress,
    RecordTestRenderFrames,
    RecordTestRenderStarted,
    RenderOrder,
    ResumeJob,
    StartFullRender,
    StartJobRender,
    StartSceneStaging,
    StepName,
    StopJob,
    TestRenderFrame,
    TestRenderQuality,
    default_test_frames,
)
from contracts.preparation import (
    JobSceneSettings,
    PreparationPriority,
    PreparationQueued,
    PrepareScene,
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
    RenderResumed,
    RenderStatus,
    RenderSubmitted,
    RenderSuspended,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskRequeued,
    RenderTaskStarted,
    ResumeRender,
    SubmitRender,
    SuspendRender,
    render_id_for,
    render_kind_of,
    split_render_id,
)
from contracts.staging import (
    CancelStaging,
    SceneFilesAwaited,
    SceneNeededFilesStaged,
    SceneRef,
    SceneStaged,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingStarted,
    StageScene,
    StagingAccepted,
)
from libs.process import Cause, ProcessManager, Send

#: The upload service's staging events the scheduler turns into job commands.
StagingEvent = (
    SceneStagingStarted
    | SceneStagingProgressed
    | SceneNeededFilesStaged
    | SceneFilesAwaited
    | SceneStaged
    | SceneStagingFailed
)
#: Billing's events about a job's hold and cap the scheduler follows.
BillingEvent = JobCostHeld | JobHoldRefused | JobCostCapReached
#: The job's events that change what its scene's settings step writes.
JobSettingsEvent = JobFramesChanged | JobRenderSettingsChanged
#: The job's test render and full-render release events the scheduler follows.
TestRenderJobEvent = (
    JobTestRenderRequested | JobTestRenderCompleted | JobTestRenderFailed | JobFullRenderReleased
)
#: A pause or resume on the job: followed for its owner's suspension (the scheduler's own
#: pauses for credits come from ``JobHoldRefused``).
JobPauseEvent = JobPaused | JobResumed
#: The code a job stopped at its cost cap fails with.
COST_CAP_REACHED = "cost_cap_reached"


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
        total = event.bytes_copied + event.bytes_prestaged
        message = f"staged {size_text(total)} to {event.staged_key}, every file's SHA-256 checked"
        if event.bytes_prestaged:
            message += (
                f" ({size_text(event.bytes_prestaged)} of it staged as it was uploaded,"
                f" {size_text(event.bytes_copied)} fetched now)"
            )
    return LogJobStep(
        job_id=event.job_id,
        step=StepName.stage_scene,
        level=LogLevel.info,
        message=message,
        at=event.at,
    )


def needed_log(event: SceneNeededFilesStaged) -> LogJobStep:
    """The ``stage_scene`` log line of the test frames' files staged before the rest."""
    files = "1 file" if len(event.files) == 1 else f"{len(event.files)} files"
    rest = event.bytes_total - event.bytes_needed
    return LogJobStep(
        job_id=event.job_id,
        step=StepName.stage_scene,
        level=LogLevel.info,
        message=f"the {files} the test frames need ({size_text(event.bytes_needed)}) are on"
        f" the farm after {event.seconds:.1f} s; the scene is prepared from them while the"
        f" other {size_text(rest)} are copied",
        at=event.at,
    )


def awaiting_log(event: SceneFilesAwaited) -> LogJobStep:
    """The ``stage_scene`` log line of a staging that waits for files not uploaded yet."""
    files = "1 file" if event.files_waiting == 1 else f"{event.files_waiting} files"
    first = ", ".join(event.paths[:3]) + (", ..." if event.files_waiting > 3 else "")
    if event.needed:
        waits = (
            f"the test render waits for {event.needed_files_waiting} of them its frames need,"
            " the full render for all of them"
        )
    else:
        waits = "the files the test frames need are on the farm; the full render waits"
    return LogJobStep(
        job_id=event.job_id,
        step=StepName.stage_scene,
        level=LogLevel.info,
        message=f"waiting for the upload of {files} ({size_text(event.bytes_waiting)}:"
        f" {first}); {event.files_done} of {event.files_total} files"
        f" ({size_text(event.bytes_done)} of {size_text(event.bytes_total)}) are on the"
        f" farm; {waits}",
        at=event.at,
    )


def task_failed_log(event: RenderTaskFailed, step: StepName) -> LogJobStep:
    """The line a farm task's failure writes in the log of ``step``."""
    then = "requeued" if event.will_retry else "no retries left"
    return LogJobStep(
        job_id=event.job_id,
        step=step,
        level=LogLevel.warning if event.will_retry else LogLevel.error,
        message=f"task {event.task_id} (frames {frames_text(event.frames)}) failed on"
        f" {event.worker or 'a worker'} (failure {event.failures}): {event.error}; {then}",
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
                    peak_memory_bytes=event.peak_memory_bytes,
                )
            ]
        case RenderTaskFailed():
            return [task_failed_log(event, StepName.render)]
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


def is_test_render(render_id: str | None) -> bool:
    """Whether ``render_id`` names a test render (not a full render, nor no render id)."""
    try:
        return render_kind_of(render_id or "") is RenderKind.test
    except ValueError:
        return False


def test_render_commands_for(event: Event) -> list[Command]:
    """The job commands that record a test render's farm event on the job."""
    match event:
        case RenderTaskCompleted():
            share = event.render_seconds / max(1, len(event.outputs))
            frames = [
                TestRenderFrame(
                    output=output,
                    task_id=event.task_id,
                    render_seconds=round(share, 3),
                    peak_memory_bytes=event.peak_memory_bytes,
                    worker=event.worker,
                )
                for output in event.outputs
            ]
            record = RecordTestRenderFrames(
                job_id=event.job_id, render_id=event.render_id, frames=frames, at=event.finished_at
            )
            return [record] if frames else []
        case RenderTaskFailed():
            return [task_failed_log(event, StepName.test_render)]
        case RenderCompleted():
            return [CompleteTestRender(job_id=event.job_id, render_id=event.render_id, at=event.at)]
        case RenderFailed():
            return [
                FailTestRender(
                    job_id=event.job_id, render_id=event.render_id, reason=event.error, at=event.at
                )
            ]
        case RenderCancelled():
            reason = event.reason or "the test render was cancelled on the farm"
            return [
                FailTestRender(
                    job_id=event.job_id, render_id=event.render_id, reason=reason, at=event.at
                )
            ]
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
        case RenderSuspended():
            return RenderStatus.suspended
        case RenderResumed():
            return RenderStatus.submitted
    return None


#: Refusals the policy plans for: a job cancelled before it was queued (or while its scene
#: was staged), a render the bridge never had. Recorded, not alerted.
CANCELLED_BEFORE_QUEUED = (JobFinished, JobCancelling)
NEVER_ON_THE_FARM = (RenderNotFound,)


class TestRenderOrder(BaseModel):
    """The job's latest test render, as the scheduler follows it."""

    __test__ = False  # not a pytest test class

    render_id: str
    frames: list[int]
    budget_credits: Decimal | None = None
    quality: TestRenderQuality = TestRenderQuality()
    ordered: bool = False
    completed: bool = False
    failed: bool = False
    #: Farm tasks of it billing charged, and the estimate's high end after the last one.
    charged_tasks: list[int] = []
    estimate_high_credits: Decimal | None = None

    @property
    def in_flight(self) -> bool:
        return not (self.completed or self.failed)

    @property
    def priced(self) -> bool:
        """Rendered, and every frame's task charged: the re-estimate is final."""
        return self.completed and len(self.charged_tasks) >= len(self.frames)


class JobRender(BaseModel):
    """The scheduler's state of one job: what it was submitted with, whether billing holds
    its credits, whether its scene is being staged or was, its render and how that stands."""

    staging: bool = False
    render_id: str | None = None
    status: RenderStatus | None = None
    farm_job_id: str | None = None
    #: ``JobSubmitted`` seen: who owns the job and the scene it renders (None: from before
    #: scene uploads, queued as it is).
    submitted: bool = False
    owner_id: str = ""
    scene: SceneRef | None = None
    #: The job's settings as last changed (the scene's settings step writes them).
    settings: JobSceneSettings | None = None
    #: Billing placed the job's first hold (it may come before the submission is seen).
    held: bool = False
    #: The render path began: the scene asked to be staged, or a scene-less job queued.
    started: bool = False
    staged: bool = False
    #: Where the staged scene is (relative to the farm's scene root), once staged.
    staged_key: str | None = None
    #: Where the files the test frames need are, once staged before the rest (a manifest
    #: scene): the scene is prepared from them, and a test render may run on them.
    needed_key: str | None = None
    #: The scene workers prepared the staged scene (``job.JobScenePrepared``).
    prepared: bool = False
    #: Paused awaiting credits (a hold refused), until a hold is placed, and why.
    paused: bool = False
    awaiting_reason: str | None = None
    #: Paused for the owner's suspension (``JobPaused`` ``account_suspended``), until the
    #: reactivation resumes it.
    suspended: bool = False
    #: What a test render's farm job needs (the full render's come from the queue reply).
    name: str = ""
    priority: JobPriority = JobPriority.normal
    #: The prepared scene (``job.JobScenePrepared``), relative to the farm's scene root.
    scene_key: str | None = None
    #: As submitted; False: the full render waits for ``job.JobFullRenderReleased``.
    start_full_render: bool = True
    released: bool = False
    test: TestRenderOrder | None = None

    @property
    def full_may_start(self) -> bool:
        """The full render may be queued once the scene is prepared, the whole of it staged
        (a test render may run on the files it needs before), and no test runs."""
        waits = self.test is not None and self.test.in_flight
        whole = self.staged or self.scene is None
        return (self.start_full_render or self.released) and whole and not waits

    @property
    def halted(self) -> bool:
        """Paused, for credits or for the owner's suspension: nothing new starts."""
        return self.paused or self.suspended

    @property
    def on_farm(self) -> bool:
        """A render was ordered and has not finished (suspending it is worth asking)."""
        return self.status in (RenderStatus.ordered, RenderStatus.submitted)


def test_frames_of(state: JobRender) -> list[int]:
    """The frames a test render of the job renders: those asked for, else the first,
    middle and last (known when the job is submitted, so staged first either way)."""
    if state.test is not None:
        return state.test.frames
    return default_test_frames(state.settings.frame_range) if state.settings else []


def starts(state: JobRender, event: Event) -> bool:
    """Whether ``event`` begins the job's render path: the first hold and the submission are
    both seen (in either order) and it has not begun yet."""
    if state.started:
        return False
    match event:
        case JobSubmitted():
            return state.held
        case JobCostHeld():
            return state.submitted
    return False


class RenderProcess(ProcessManager[JobRender]):
    """Takes a job from submission to the end of its render."""

    name = "scheduler"
    subjects = (
        f"events.{JobSubmitted.event_type}",
        f"events.{JobCancellationRequested.event_type}",
        f"events.{JobFramesChanged.event_type}",
        f"events.{JobRenderSettingsChanged.event_type}",
        f"events.{JobScenePrepared.event_type}",
        f"events.{JobTestRenderRequested.event_type}",
        f"events.{JobTestRenderCompleted.event_type}",
        f"events.{JobTestRenderFailed.event_type}",
        f"events.{JobFullRenderReleased.event_type}",
        f"events.{JobPaused.event_type}",
        f"events.{JobResumed.event_type}",
        f"events.{TaskCharged.event_type}",
        f"events.{JobCostHeld.event_type}",
        f"events.{JobHoldRefused.event_type}",
        f"events.{JobCostCapReached.event_type}",
        f"events.{SceneStagingStarted.event_type}",
        f"events.{SceneStagingProgressed.event_type}",
        f"events.{SceneNeededFilesStaged.event_type}",
        f"events.{SceneFilesAwaited.event_type}",
        f"events.{SceneStaged.event_type}",
        f"events.{SceneStagingFailed.event_type}",
        "events.render.>",
    )
    state_type = JobRender

    def __init__(self, skip_reason: str) -> None:
        #: Why the steps before the render are skipped, until scene processing exists.
        self.skip_reason = skip_reason

    def key(self, event: Event) -> str | None:
        if isinstance(event, TaskCharged) and not is_test_render(event.line.render_id):
            return None  # a full render's task: nothing here; no state read or written
        if isinstance(
            event,
            JobSubmitted
            | JobCancellationRequested
            | JobSettingsEvent
            | JobScenePrepared
            | TestRenderJobEvent
            | JobPauseEvent
            | TaskCharged
            | RenderEvent
            | StagingEvent
            | BillingEvent,
        ):
            return event.job_id
        return None

    def evolve(self, state: JobRender, event: Event) -> JobRender:
        update: dict[str, Any] = {}
        if isinstance(event, JobSubmitted):
            update = {
                "submitted": True,
                "owner_id": event.owner_id,
                "scene": event.scene,
                "render_id": state.render_id or render_id_for(event.job_id, RenderKind.full, 1),
                "settings": JobSceneSettings(
                    renderer=event.renderer,
                    frame_range=event.frame_range,
                    resolution=event.resolution,
                    render_settings=event.render_settings,
                ),
                "name": event.name,
                "priority": event.priority,
                "start_full_render": event.start_full_render,
            }
        elif isinstance(event, JobSettingsEvent) and state.settings is not None:
            changed = (
                {"frame_range": event.frame_range}
                if isinstance(event, JobFramesChanged)
                else {"resolution": event.resolution, "render_settings": event.render_settings}
            )
            update = {"settings": state.settings.model_copy(update=changed)}
        elif isinstance(event, JobScenePrepared):
            update = {"prepared": True, "scene_key": event.scene_key}
        elif isinstance(event, JobTestRenderRequested):
            test = TestRenderOrder(
                render_id=event.render_id,
                frames=event.frames,
                budget_credits=event.budget_credits,
                quality=event.quality,
            )
            update = {"test": test}
        elif isinstance(event, JobFullRenderReleased):
            update = {"released": True}
        elif isinstance(event, JobTestRenderCompleted | JobTestRenderFailed):
            if state.test is not None and state.test.render_id == event.render_id:
                ended = "completed" if isinstance(event, JobTestRenderCompleted) else "failed"
                update = {"test": state.test.model_copy(update={ended: True})}
        elif isinstance(event, TaskCharged):
            if state.test is not None and event.line.render_id == state.test.render_id:
                tasks = sorted({*state.test.charged_tasks, event.line.task_id or 0})
                estimate = event.totals.estimate
                high = estimate.high_credits if estimate else state.test.estimate_high_credits
                charged: dict[str, Any] = {"charged_tasks": tasks, "estimate_high_credits": high}
                update = {"test": state.test.model_copy(update=charged)}
        elif isinstance(event, RenderEvent) and is_test_render(event.render_id):
            current = state.test
            ordered = isinstance(event, RenderOrdered | RenderSubmitted)
            if current is not None and current.render_id == event.render_id and ordered:
                update = {"test": current.model_copy(update={"ordered": True})}
        elif isinstance(event, JobCostHeld):
            update = {"held": True, "paused": False}
        elif isinstance(event, JobHoldRefused):
            reason = (event.totals.awaiting_reason or event.reason).value
            update = {"paused": True, "awaiting_reason": reason}
        elif isinstance(event, JobPaused) and event.reason == ACCOUNT_SUSPENDED:
            update = {"suspended": True}
        elif isinstance(event, JobResumed):
            update = {"suspended": False}
        elif isinstance(event, SceneNeededFilesStaged):
            update = {"needed_key": event.staged_key}
        elif isinstance(event, SceneStaged):
            update = {"staging": False, "staged": True, "staged_key": event.staged_key}
        elif isinstance(event, SceneStagingFailed):
            update = {"staging": False}
        elif isinstance(event, RenderEvent) and (status := render_status_after(event)):
            farm_job_id = event.farm_job_id if isinstance(event, RenderSubmitted) else None
            update = {
                "render_id": event.render_id,
                "status": status,
                "farm_job_id": farm_job_id or state.farm_job_id,
            }
        after = state.model_copy(update=update)
        if starts(state, event):
            scene = after.scene
            after = after.model_copy(update={"started": True, "staging": scene is not None})
        return after

    def policy(self, cause: Cause, state: JobRender) -> list[Send]:
        event = cause.event
        match event:
            case JobSubmitted() if starts(state, event):
                return [self._start(event.job_id, self.evolve(state, event), cause)]
            case JobSubmitted():
                return []  # no render starts before billing holds the job's credits
            case JobCostHeld() if event.resumed and state.suspended:
                return []  # the owner's reactivation resumes the job
            case JobCostHeld() if event.resumed:
                return [self._resume(event.job_id, state, cause)]
            case JobCostHeld() if starts(state, event):
                return [self._start(event.job_id, state, cause)]
            case JobCostHeld():
                return []  # the hold grew while the job renders: nothing changes here
            case JobHoldRefused():
                return [self._pause(event, state)]
            case JobPaused() if event.reason == ACCOUNT_SUSPENDED and not state.suspended:
                return self._suspend_render(state, event.reason)
            case JobResumed() if state.suspended:
                return self._after_reactivation(event.job_id, self.evolve(state, event), cause)
            case JobPaused() | JobResumed():
                return []  # the scheduler's own pauses and resumes for credits
            case JobCostCapReached():
                cap = event.totals.cap_credits
                reason = f"the job's cost reached its cap of {cap} credits"
                stop = StopJob(
                    job_id=event.job_id, code=COST_CAP_REACHED, reason=reason, at=event.at
                )
                return [Send(stop, JobAccepted)]
            case JobCancellationRequested():
                stop_staging = [self._stop_staging(event.job_id)] if state.staging else []
                test = state.test
                stop_test = []
                # Asked of the bridge even before its RenderOrdered is seen here: the order
                # was answered before this event was handled (a render it lacks is fine).
                if test is not None and test.in_flight:
                    cancel = CancelRender(render_id=test.render_id, reason="the job was cancelled")
                    stop_test = [Send(cancel, RenderAccepted, tolerate=NEVER_ON_THE_FARM)]
                return [*stop_staging, *stop_test, self._stop(event.job_id, state, cause)]
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
            case SceneFilesAwaited():
                return [self._staging_step(awaiting_log(event))]
            case SceneNeededFilesStaged():
                after = self.evolve(state, event)
                return [self._staging_step(needed_log(event)), self._needed(event, after, cause)]
            case SceneStaged():
                after = self.evolve(state, event)
                return [self._staging_step(staging_log(event)), self._staged(event, after, cause)]
            case JobScenePrepared() if not state.halted:
                return self._after_prepared(event.job_id, self.evolve(state, event), cause)
            case JobScenePrepared():
                return []  # paused meanwhile: queued once resumed
            case JobTestRenderRequested():
                after = self.evolve(state, event)
                ready = after.prepared and after.held and not after.halted
                return [self._order_test(after, cause)] if ready and after.status is None else []
            case JobFullRenderReleased():
                after = self.evolve(state, event)
                ready = after.prepared and not after.halted and after.status is None
                return [self._queue(event.job_id, cause)] if ready and after.full_may_start else []
            case JobTestRenderCompleted() | JobTestRenderFailed():
                return self._after_test_render(state, self.evolve(state, event), cause)
            case TaskCharged():
                return self._after_test_render(state, self.evolve(state, event), cause)
            case _ if isinstance(event, RenderEvent) and is_test_render(event.render_id):
                cmds = test_render_commands_for(event)
                return [Send(cmd, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED) for cmd in cmds]
            case SceneStagingFailed():
                fail = FailJob(
                    job_id=event.job_id,
                    reason=f"the scene could not be staged to the farm: {event.reason}",
                    code=event.code,
                    at=event.at,
                )
                return [Send(fail, JobAccepted)]
        return [self._record(cmd, cause) for cmd in job_commands_for(event)]

    def _start(self, job_id: str, state: JobRender, cause: Cause) -> Send:
        """Begin the render path: stage the scene, or queue a job from before scene uploads
        (the farm opens its key as given)."""
        if state.scene is None:
            return self._queue(job_id, cause)
        return self._stage(job_id, state.owner_id, state.scene, test_frames_of(state), cause)

    def _stage(
        self, job_id: str, owner_id: str, scene: SceneRef, frames: list[int], cause: Cause
    ) -> Send:
        """Ask the upload service to stage the job's scene, the files of the test frames
        ``frames`` first; a refusal fails the job."""

        def fail(e: DomainError[Any]) -> list[Send]:
            reason = f"the scene could not be staged to the farm: {e.message}"
            cmd = FailJob(job_id=job_id, reason=reason, code=e.code, at=cause.recorded_at)
            return [Send(cmd, JobAccepted)]

        return Send(
            StageScene(job_id=job_id, owner_id=owner_id, scene=scene, test_frames=frames),
            StagingAccepted,
            if_refused=fail,
        )

    def _pause(self, event: JobHoldRefused, state: JobRender) -> Send:
        """Pause the job (a job that ended meanwhile refuses, as planned), then suspend its
        render if one is on the farm."""
        reason = (event.totals.awaiting_reason or event.reason).value
        on_farm = self._suspend_render(state, reason)
        return Send(
            PauseJob(job_id=event.job_id, reason=reason, at=event.at),
            JobAccepted,
            then=lambda _: on_farm,
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _suspend_render(self, state: JobRender, reason: str) -> list[Send]:
        """Suspend the job's full render, if one is on the farm."""
        if not state.on_farm:
            return []
        suspend = SuspendRender(render_id=state.render_id or "", reason=reason)
        return [Send(suspend, RenderAccepted, tolerate=NEVER_ON_THE_FARM)]

    def _after_reactivation(self, job_id: str, state: JobRender, cause: Cause) -> list[Send]:
        """The owner's reactivation resumed the job: still short of credits, it is paused
        for them again; else what it waited for goes on."""
        if state.paused:
            reason = state.awaiting_reason or AwaitingReason.insufficient_credits.value
            pause = PauseJob(job_id=job_id, reason=reason, at=cause.recorded_at)
            return [Send(pause, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)]
        return self._resume_next(job_id, state, cause)

    def _resume(self, job_id: str, state: JobRender, cause: Cause) -> Send:
        """Resume the job (a hold was placed again), then what it waited for."""
        nxt = self._resume_next(job_id, state, cause)
        return Send(
            ResumeJob(job_id=job_id, at=cause.recorded_at),
            JobAccepted,
            then=lambda _: nxt,
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _resume_next(self, job_id: str, state: JobRender, cause: Cause) -> list[Send]:
        """What a resumed job waited for: its suspended render, the staging of its scene (its
        first hold was refused), or the queueing of its staged scene."""
        nxt: list[Send] = []
        if state.status is RenderStatus.suspended:
            assert state.render_id is not None
            resume = ResumeRender(render_id=state.render_id)
            nxt = [Send(resume, RenderAccepted, tolerate=NEVER_ON_THE_FARM)]
        elif not state.started and state.submitted:
            nxt = [self._start(job_id, state, cause)]
        elif state.prepared and state.status is None:
            nxt = self._after_prepared(job_id, state, cause)
        elif (key := state.staged_key or state.needed_key) and state.status is None:
            nxt = [self._prepare(job_id, state, key, cause)]
        return nxt

    def _after_prepared(self, job_id: str, state: JobRender, cause: Cause) -> list[Send]:
        """The scene is prepared: its test render first when one was asked for, then the
        full render when it may start; else the job waits at ready."""
        test = state.test
        if test is not None and not test.ordered and test.in_flight:
            return [self._order_test(state, cause)]
        return [self._queue(job_id, cause)] if state.full_may_start else []

    def _order_test(self, state: JobRender, cause: Cause) -> Send:
        """Mark the job test rendering, then order the test render from the bridge (its own
        pool and priority, one frame per task); a refusal fails the test render only."""
        test, settings = state.test, state.settings
        assert test is not None and settings is not None and state.scene_key is not None
        job_id, _, attempt = split_render_id(test.render_id)

        def refused(e: DomainError[Any]) -> list[Send]:
            reason = f"the render farm refused the test render: {e.message}"
            fail = FailTestRender(
                job_id=job_id, render_id=test.render_id, reason=reason, at=cause.recorded_at
            )
            return [Send(fail, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)]

        submit = SubmitRender(
            job_id=job_id,
            owner_id=state.owner_id,
            kind=RenderKind.test,
            attempt=attempt,
            name=f"{state.name} (test)",
            scene_key=state.scene_key,
            renderer=settings.renderer,
            frame_range=settings.frame_range,
            chunk_size=1,
            resolution=test.quality.resolution_of(settings.resolution),
            render_settings=test.quality.settings_of(settings.render_settings),
            priority=state.priority,
            frames=test.frames,
        )
        start = RecordTestRenderStarted(
            job_id=job_id, render_id=test.render_id, at=cause.recorded_at
        )
        return Send(
            start,
            JobAccepted,
            then=lambda _: [Send(submit, RenderAccepted, if_refused=refused)],
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _after_test_render(self, before: JobRender, after: JobRender, cause: Cause) -> list[Send]:
        """Once the test render ended: the full render, if it may start; with a budget, once
        every test frame is charged, start it if the re-estimate's high end is within it."""
        was, now = before.test, after.test
        if now is None or was is None or now.render_id != was.render_id:
            return []
        job_id = split_render_id(now.render_id)[0]
        ended_now = was.in_flight and not now.in_flight
        if ended_now and after.full_may_start and after.status is None and after.prepared:
            return [self._queue(job_id, cause)]
        may_start = after.start_full_render or after.released
        if may_start or now.budget_credits is None or not now.completed:
            return []
        if was.priced or not now.priced:
            return []  # decided once: when the last of rendered-and-charged arrives
        high = now.estimate_high_credits
        if high is not None and high <= now.budget_credits:
            release = StartFullRender(job_id=job_id, by=FullRenderStartedBy.budget)
            return [Send(release, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)]
        if high is None:
            why = "the job has no re-estimate (no prices in force)"
        else:
            why = f"the re-estimate's high end, {high} credits, is above the budget of"
            why += f" {now.budget_credits}"
        message = f"{why}: the full render waits for POST /v1/jobs/{job_id}/start"
        log = LogJobStep(
            job_id=job_id,
            step=StepName.test_render,
            level=LogLevel.warning,
            message=message,
            at=cause.recorded_at,
        )
        return [Send(log, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)]

    def _staging_step(self, cmd: Command) -> Send:
        """Record a staging event on the job; a job that ended meanwhile (cancelled while
        its scene was copied) refuses it, as planned."""
        return Send(cmd, JobAccepted, tolerate=CANCELLED_BEFORE_QUEUED)

    def _needed(self, event: SceneNeededFilesStaged, state: JobRender, cause: Cause) -> Send:
        """Record on the job that its test frames' files are staged, then have the scene
        prepared from them while the rest is copied (a job paused meanwhile is prepared
        once resumed)."""
        needed = RecordSceneNeededFilesStaged(
            job_id=event.job_id,
            scene_key=event.staged_key,
            files=len(event.files),
            bytes_staged=event.bytes_needed,
            at=event.at,
        )
        ready = not state.halted and state.scene is not None and state.settings is not None
        nxt = [self._prepare(event.job_id, state, event.staged_key, cause)] if ready else []
        return Send(needed, JobAccepted, then=lambda _: nxt, tolerate=CANCELLED_BEFORE_QUEUED)

    def _staged(self, event: SceneStaged, state: JobRender, cause: Cause) -> Send:
        """Record the staged scene on the job, then have it prepared (a job paused meanwhile
        is prepared once resumed). A scene prepared from its needed files already goes on
        to its full render, if that may start now that the whole scene is there."""
        staged = RecordSceneStaged(
            job_id=event.job_id, scene_key=event.staged_key, reused=event.reused, at=event.at
        )
        # Not while paused, nor for a job never seen submitted (no settings to apply).
        ready = not state.halted and state.scene is not None and state.settings is not None
        nxt: list[Send] = []
        if ready and state.prepared:
            nxt = [self._queue(event.job_id, cause)] if state.full_may_start else []
            nxt = nxt if state.status is None else []
        elif ready:  # asked again if ordered from the needed files: that queues nothing
            nxt = [self._prepare(event.job_id, state, event.staged_key, cause)]
        return Send(
            staged,
            JobAccepted,
            then=lambda _: nxt,
            tolerate=CANCELLED_BEFORE_QUEUED,
        )

    def _prepare(self, job_id: str, state: JobRender, staged_key: str | None, cause: Cause) -> Send:
        """Queue the staged scene's check, repathing and settings for the scene workers; a
        refusal fails the job."""
        assert state.scene is not None and state.settings is not None and staged_key

        def fail(e: DomainError[Any]) -> list[Send]:
            reason = f"the scene could not be queued for preparation: {e.message}"
            cmd = FailJob(job_id=job_id, reason=reason, code=e.code, at=cause.recorded_at)
            return [Send(cmd, JobAccepted)]

        # A job waiting for a test render (asked for, or submitted to wait for one) is
        # prepared before jobs that go straight to their full render.
        waits_for_test = state.test is not None or not state.start_full_render
        order = PrepareScene(
            job_id=job_id,
            owner_id=state.owner_id,
            staged_key=staged_key,
            settings=state.settings,
            priority=PreparationPriority.test if waits_for_test else PreparationPriority.full,
        )
        return Send(order, PreparationQueued, if_refused=fail)

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
