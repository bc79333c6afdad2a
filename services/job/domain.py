"""The job aggregate: the lifecycle state machine and the rules of each command.

It keeps what its decisions need; what clients see (the envelope, progress, the ETA) is the
jobs read model's own view (:mod:`services.job.views`). Pure: no I/O and no clock (times come
in with the command or the event).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel

from contracts.base import Event
from contracts.errors import (
    FieldProblem,
    InvalidStateTransition,
    JobCancelling,
    JobFinished,
    JobLimitReached,
    JobNotEditable,
    JobTransition,
    TestRenderInProgress,
    TestRenderNotAllowed,
    ValidationFailed,
)
from contracts.jobs import (
    ACCOUNT_SUSPENDED,
    SCENE_CHECK_FAILED,
    TERMINAL_STATUSES,
    FrameOutput,
    FrameRange,
    FullRenderStartedBy,
    JobCancellationRequested,
    JobCancelled,
    JobChanges,
    JobCompleted,
    JobCostCapChanged,
    JobCostRecorded,
    JobFailed,
    JobFramesChanged,
    JobFramesRendered,
    JobFullRenderReleased,
    JobKilled,
    JobPaused,
    JobPriority,
    JobPriorityChanged,
    JobQueued,
    JobRenamed,
    JobRenderSettingsChanged,
    JobResumed,
    JobSceneChecked,
    JobSceneNeededFilesStaged,
    JobScenePrepared,
    JobSceneStaged,
    JobSlotFreed,
    JobSlotTaken,
    JobSpec,
    JobStatus,
    JobStepFailed,
    JobStepLogged,
    JobStepProgressed,
    JobStepSkipped,
    JobStepStarted,
    JobStepSucceeded,
    JobSubmitted,
    JobTestRenderCompleted,
    JobTestRenderDeadlineMissed,
    JobTestRenderFailed,
    JobTestRenderFramesRendered,
    JobTestRenderRequested,
    JobTestRenderStarted,
    KillCause,
    LogLevel,
    Renderer,
    RenderSettings,
    Resolution,
    StepName,
    StepStatus,
    TestRenderFrame,
    TestRenderQuality,
    TestRenderStatus,
    default_test_frames,
)
from contracts.render import RenderKind, render_id_for
from contracts.scenes import SceneFinding
from contracts.staging import SceneRef
from libs.eventstore.aggregate import Aggregate

S = JobStatus

#: Which status may follow which. Anything else is a bug in the caller, refused loudly.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # paused: its first hold was refused, before it was staged or queued.
    S.submitted: frozenset({S.preparing, S.ready, S.queued, S.paused, S.cancelled, S.failed}),
    # queued: once no step runs (the scene staged); see Job.queue.
    S.preparing: frozenset({S.ready, S.queued, S.paused, S.failed, S.cancelled}),
    S.ready: frozenset({S.test_rendering, S.queued, S.cancelled, S.failed}),
    S.test_rendering: frozenset({S.test_render_ready, S.ready, S.failed, S.cancelling}),
    S.test_render_ready: frozenset({S.test_rendering, S.queued, S.ready, S.cancelled, S.failed}),
    S.queued: frozenset({S.rendering, S.paused, S.failed, S.cancelling}),
    S.rendering: frozenset({S.completed, S.failed, S.paused, S.cancelling}),
    # Back where it was paused from (see resumed_status).
    S.paused: frozenset({S.submitted, S.preparing, S.queued, S.rendering, S.cancelling, S.failed}),
    # completed: the farm finished the render before the cancel reached it.
    S.cancelling: frozenset({S.cancelled, S.failed, S.completed}),
    S.completed: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}

#: Frames, resolution and render settings can change only before rendering starts.
SETTINGS_EDITABLE = frozenset({S.submitted, S.preparing, S.ready, S.test_render_ready})
#: Cancelling from these needs the farm to confirm it stopped; from others it is immediate
#: (a job paused before it was queued has nothing on the farm: see Job.farm_busy).
FARM_BUSY = frozenset({S.test_rendering, S.queued, S.rendering, S.paused})
#: Statuses a job may be paused from (submitted and preparing: its first hold was refused).
PAUSABLE = frozenset({S.submitted, S.preparing, S.queued, S.rendering})

#: The status a job is in once a step starts, and once one of these steps succeeds.
STEP_STARTS_STATUS = {
    StepName.stage_scene: S.preparing,
    StepName.scene_check: S.preparing,
    StepName.repath: S.preparing,
    StepName.render_settings: S.preparing,
    StepName.test_render: S.test_rendering,
    StepName.render: S.rendering,
}
STEP_SUCCEEDS_STATUS = {
    StepName.render_settings: S.ready,
    StepName.test_render: S.test_render_ready,
}


def resumed_status(paused_from: JobStatus | None, running: Sequence[StepName]) -> JobStatus:
    """Where a paused job goes back to: ``rendering`` if the render step runs, ``queued`` if
    it was paused once queued (or from history that did not say), else the phase of the
    step that runs (``preparing``) or where it was paused from (``submitted``)."""
    if StepName.render in running:
        return S.rendering
    if paused_from not in (S.submitted, S.preparing):
        return S.queued
    if running:
        return STEP_STARTS_STATUS[running[0]]
    return paused_from


def status_after(
    status: JobStatus | None, event: Event, resumes_to: JobStatus | None = None
) -> JobStatus | None:
    """The status ``event`` moves a job in ``status`` to, or None if it does not move it.

    One rule for the aggregate (which checks the move against :data:`TRANSITIONS`) and the
    jobs read model (which shows it); ``resumes_to`` (:func:`resumed_status`) is read only
    for a resume."""
    match event:
        case JobSubmitted():
            return S.submitted
        case JobStepStarted():
            # A paused job stays paused while a step that costs nothing runs.
            return None if status is S.paused else STEP_STARTS_STATUS[event.step]
        case JobStepSucceeded():
            return STEP_SUCCEEDS_STATUS.get(event.step)
        case JobScenePrepared():
            return None if status is S.paused else S.ready
        case JobTestRenderFailed():
            return S.ready if status is S.test_rendering else None
        case JobQueued():
            return S.queued
        case JobPaused():
            return S.paused
        case JobResumed():
            return resumes_to
        case JobCompleted():
            return S.completed
        case JobFailed():
            return S.failed
        case JobCancellationRequested():
            return S.cancelling if status in FARM_BUSY else None
        case JobCancelled():
            return S.cancelled
    return None


class Step(BaseModel):
    """A step as the job's decisions see it: its status (times, progress and errors are the
    jobs view's)."""

    name: StepName
    status: StepStatus = StepStatus.pending


class TestRender(BaseModel):
    """The job's latest test render, as its decisions see it."""

    __test__ = False  # not a pytest test class

    render_id: str
    frames: list[int]
    status: TestRenderStatus = TestRenderStatus.requested
    deadline_at: datetime
    deadline_missed: bool = False
    rendered: list[int] = []

    @property
    def in_flight(self) -> bool:
        return self.status in (TestRenderStatus.requested, TestRenderStatus.rendering)


#: A test render may be asked for in these (before the full render is queued).
TEST_RENDERABLE = frozenset({S.submitted, S.preparing, S.ready, S.test_render_ready})


#: The status a step event gives its step.
STEP_STATUS_AFTER: dict[type[Event], StepStatus] = {
    JobStepStarted: StepStatus.running,
    JobStepSucceeded: StepStatus.succeeded,
    JobStepFailed: StepStatus.failed,
    JobStepSkipped: StepStatus.skipped,
}


#: Steps a full render does not wait for: queueing skips those still pending (the scene
#: is staged only for a job with a scene upload; jobs from before uploads skip it).
_PRE_RENDER_STEPS = (
    StepName.stage_scene,
    StepName.scene_check,
    StepName.repath,
    StepName.render_settings,
    StepName.test_render,
)
#: Statuses a job may be queued from (``preparing`` only once no step runs).
QUEUEABLE = frozenset({S.submitted, S.preparing, S.ready, S.test_render_ready})
#: Queueing a job in these changes nothing: it is queued already, or further on.
QUEUED_OR_LATER = frozenset({S.queued, S.rendering, S.paused, S.completed})
#: Why a job fails when its render disappears from the farm without a cancel being asked.
CANCELLED_ON_FARM = "the render was cancelled on the farm"
#: Events that end a job; the owner's active-job slot is freed in the same append.
TERMINAL_EVENTS = (JobCompleted, JobFailed, JobCancelled)

TaskRanges = list[tuple[int, int]]


def _has_task(ranges: Sequence[tuple[int, int]], task_id: int) -> bool:
    i = bisect_right(ranges, (task_id, math.inf)) - 1
    return i >= 0 and ranges[i][0] <= task_id <= ranges[i][1]


def _with_task(ranges: Sequence[tuple[int, int]], task_id: int) -> TaskRanges:
    """``ranges`` (sorted, disjoint, inclusive) plus ``task_id``, merging neighbours.

    Farm tasks mostly finish in order, so a whole render's task ids stay a handful of ranges
    however many tasks it has: the job state stays small."""
    out = list(ranges)
    if _has_task(out, task_id):
        return out
    i = bisect_left(out, (task_id, task_id))
    left = i > 0 and out[i - 1][1] == task_id - 1
    right = i < len(out) and out[i][0] == task_id + 1
    if left and right:
        out[i - 1 : i + 1] = [(out[i - 1][0], out[i][1])]
    elif left:
        out[i - 1] = (out[i - 1][0], task_id)
    elif right:
        out[i] = (task_id, out[i][1])
    else:
        out.insert(i, (task_id, task_id))
    return out


class Job(Aggregate):
    """A render job (stream ``job-<job id>``)."""

    stream_prefix = "job"

    job_id: str = ""
    owner_id: str = ""
    status: JobStatus | None = None
    name: str = ""
    #: The upload or manifest the job renders (None for jobs from before uploads).
    scene: SceneRef | None = None
    #: The scene file relative to the farm's scene root: known once staged (or, for jobs
    #: from before uploads, as submitted).
    scene_key: str | None = None
    #: The files the test frames need are staged (``scene_key``: there), the rest is not.
    needed_staged: bool = False
    #: The staging's progress as last recorded (it only moves forward).
    staging_percent: float = 0.0
    #: The scene steps' progress as last recorded, by step (it only moves forward).
    step_percent: dict[StepName, float] = {}
    #: The scene steps ran (or were skipped): ``scene_key`` is the prepared scene.
    prepared: bool = False
    renderer: Renderer = Renderer.blender_cycles
    frame_range: FrameRange | None = None
    chunk_size: int = 1
    resolution: Resolution | None = None
    render_settings: RenderSettings = RenderSettings()
    priority: JobPriority = JobPriority.normal
    cost_cap_credits: Decimal | None = None
    steps: list[Step] = []
    frames_done: int = 0
    failure_reason: str | None = None
    created_at: datetime | None = None
    # The farm render the job's frames come from, and the renders it replaced (whose late
    # results are ignored). Counters below are for the current render only.
    render_id: str | None = None
    past_render_ids: list[str] = []
    #: Task ids recorded for ``render_id``, as sorted inclusive ranges (not one per task).
    task_ranges: TaskRanges = []
    tasks_recorded: int = 0
    #: The status the job was paused from (None unless paused, or paused in old history).
    paused_from: JobStatus | None = None
    #: Why it is paused (``JobPaused.reason``; None unless paused).
    paused_reason: str | None = None
    #: Set when the system stops the job (``cost_cap_reached``): it ends failed with it.
    stop_code: str | None = None
    stop_reason: str | None = None
    #: The version of the job's cost stream last recorded (0: none yet).
    cost_version: int = 0
    #: False: the full render waits for a release (``JobFullRenderReleased``).
    start_full_render: bool = True
    full_render_released: bool = False
    test_render: TestRender | None = None
    test_renders: int = 0

    # -- evolve -----------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        match event:
            case JobSubmitted():
                self.job_id, self.owner_id = event.job_id, event.owner_id
                self.name, self.renderer = event.name, event.renderer
                self.scene, self.scene_key = event.scene, event.scene_key
                self.frame_range, self.chunk_size = event.frame_range, event.chunk_size
                self.resolution, self.render_settings = event.resolution, event.render_settings
                self.priority, self.cost_cap_credits = event.priority, event.cost_cap_credits
                self.created_at = event.submitted_at
                self.start_full_render = event.start_full_render
                self.steps = [Step(name=n) for n in StepName]
            case JobRenamed():
                self.name = event.name
            case JobPriorityChanged():
                self.priority = event.priority
            case JobCostCapChanged():
                self.cost_cap_credits = event.cost_cap_credits
            case JobFramesChanged():
                self.frame_range, self.chunk_size = event.frame_range, event.chunk_size
            case JobRenderSettingsChanged():
                self.resolution, self.render_settings = event.resolution, event.render_settings
            case JobStepStarted() | JobStepSucceeded() | JobStepFailed() | JobStepSkipped():
                self.step(event.step).status = STEP_STATUS_AFTER[type(event)]
            case JobFramesRendered():
                self._record(event)
            case JobSceneStaged() if not self.prepared:
                self.scene_key = event.scene_key
            case JobSceneStaged():
                pass  # prepared from its needed files already: the render opens that copy
            case JobSceneNeededFilesStaged():
                self.scene_key, self.needed_staged = event.scene_key, True
            case JobStepProgressed():
                if event.step is StepName.stage_scene:
                    self.staging_percent = event.progress_percent
                else:
                    self.step_percent = {**self.step_percent, event.step: event.progress_percent}
            case JobScenePrepared():
                self.scene_key, self.prepared = event.scene_key, True
            case JobQueued():
                running = self.running_steps()
                if running:
                    self.violates(
                        InvalidStateTransition(
                            f"job {self.job_id} cannot be queued while {running[0]} runs",
                            JobTransition(from_=self.status, to=S.queued),
                        )
                    )
            case JobFailed():
                self.failure_reason = event.reason
            case JobPaused():
                if self.status is not S.paused:  # a suspension over a pause for credits
                    self.paused_from = self.status
                self.paused_reason = event.reason
            case JobCancellationRequested():
                self.stop_code = event.code
                self.stop_reason = event.reason if event.code else None
            case JobCostRecorded():
                self.cost_version = max(self.cost_version, event.cost_version)
            case JobCancelled():
                for step in self.steps:
                    if step.status in (StepStatus.pending, StepStatus.running):
                        step.status = StepStatus.cancelled
            case JobTestRenderRequested():
                self.test_renders += 1
                self.test_render = TestRender(
                    render_id=event.render_id, frames=event.frames, deadline_at=event.deadline_at
                )
            case JobTestRenderStarted():
                self._test_render_is(event.render_id, TestRenderStatus.rendering)
            case JobTestRenderFramesRendered():
                if self.test_render is not None and self.test_render.render_id == event.render_id:
                    done = {f.output.frame for f in event.frames}
                    self.test_render.rendered = sorted({*self.test_render.rendered, *done})
            case JobTestRenderCompleted():
                self._test_render_is(event.render_id, TestRenderStatus.completed)
            case JobTestRenderFailed():
                self._test_render_is(event.render_id, TestRenderStatus.failed)
            case JobTestRenderDeadlineMissed():
                if self.test_render is not None and self.test_render.render_id == event.render_id:
                    self.test_render.deadline_missed = True
            case JobFullRenderReleased():
                self.full_render_released = True
            case JobStepLogged() | JobResumed() | JobCompleted() | JobSceneChecked():
                pass  # a status change only (below); logs live in the stream
            case JobKilled():
                pass  # who killed it is for the view; the cancel request stops it
            case _:
                raise TypeError(f"job cannot apply {type(event).__name__}")
        resumes_to = None
        if isinstance(event, JobResumed):
            resumes_to = resumed_status(self.paused_from, self.running_steps())
            self.paused_from = self.paused_reason = None
        to = status_after(self.status, event, resumes_to)
        if to is not None:
            self._move(to)

    def _record(self, event: JobFramesRendered) -> None:
        if event.render_id != self.render_id:  # a new render: count from zero again
            if self.render_id is not None:
                self.past_render_ids.append(self.render_id)
            self.render_id = event.render_id
            self.task_ranges, self.tasks_recorded, self.frames_done = [], 0, 0
        self.task_ranges = _with_task(self.task_ranges, event.task_id)
        self.tasks_recorded += 1
        self.frames_done += len(event.frames)

    def _move(self, to: JobStatus) -> None:
        """Change status. A change the state machine does not allow is refused when recorded
        (see :meth:`Aggregate.violates`) and taken as it stands when replayed."""
        if to is self.status:
            return
        if to not in (TRANSITIONS[self.status] if self.status else {S.submitted}):
            self.violates(
                InvalidStateTransition(
                    f"job {self.job_id} cannot go from {self.status} to {to}",
                    JobTransition(from_=self.status, to=to),
                )
            )
        self.status = to

    def step(self, name: StepName) -> Step:
        found = next((s for s in self.steps if s.name is name), None)
        if found is None:  # a step added after this job's snapshot was taken
            found = Step(name=name)
            self.steps = sorted([*self.steps, found], key=lambda s: list(StepName).index(s.name))
        return found

    def running_steps(self) -> list[StepName]:
        return [s.name for s in self.steps if s.status is StepStatus.running]

    # -- decide -----------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.status is not None

    def submit(
        self,
        job_id: str,
        owner_id: str,
        spec: JobSpec,
        scene: SceneRef,
        now: datetime,
        api_key_id: str | None = None,
    ) -> list[Event]:
        return self.record(
            JobSubmitted(
                job_id=job_id,
                owner_id=owner_id,
                name=spec.name,
                scene=scene,
                renderer=spec.renderer,
                frame_range=spec.frame_range,
                chunk_size=spec.chunk_size,
                resolution=spec.resolution,
                render_settings=spec.render_settings,
                priority=spec.priority,
                cost_cap_credits=spec.cost_cap_credits,
                submitted_at=now,
                api_key_id=api_key_id,
                start_full_render=spec.start_full_render,
            )
        )

    def update(self, changes: JobChanges) -> list[Event]:
        self._require_open()
        if self.status is S.cancelling:
            raise JobCancelling(f"job {self.job_id} is being cancelled", job_id=self.job_id)
        wants_settings = any(
            v is not None
            for v in (
                changes.frame_range,
                changes.chunk_size,
                changes.resolution,
                changes.render_settings,
            )
        )
        if wants_settings and self.status not in SETTINGS_EDITABLE:
            raise JobNotEditable(
                f"frames and render settings cannot change once rendering has started"
                f" (job is {self.status})",
                status=self.status,
            )
        events: list[Event] = []
        jid = self.job_id
        if changes.name is not None and changes.name != self.name:
            events.append(JobRenamed(job_id=jid, name=changes.name))
        if changes.priority is not None and changes.priority is not self.priority:
            events.append(JobPriorityChanged(job_id=jid, priority=changes.priority))
        cap = None if changes.clear_cost_cap else changes.cost_cap_credits
        if (changes.clear_cost_cap or cap is not None) and cap != self.cost_cap_credits:
            events.append(JobCostCapChanged(job_id=jid, cost_cap_credits=cap))
        assert self.frame_range is not None and self.resolution is not None
        frames = changes.frame_range or self.frame_range
        chunk = changes.chunk_size or self.chunk_size
        if (frames, chunk) != (self.frame_range, self.chunk_size):
            events.append(JobFramesChanged(job_id=jid, frame_range=frames, chunk_size=chunk))
        resolution = changes.resolution or self.resolution
        settings = changes.render_settings or self.render_settings
        if (resolution, settings) != (self.resolution, self.render_settings):
            events.append(
                JobRenderSettingsChanged(
                    job_id=jid, resolution=resolution, render_settings=settings
                )
            )
        return self.record(*events)

    def cancel(self, reason: str | None, now: datetime) -> list[Event]:
        """Cancel at once if the farm has nothing running, else ask and wait for the farm.

        Cancelling a job that is cancelled or being cancelled changes nothing."""
        if self.status in (S.cancelling, S.cancelled):
            return []
        self._require_open()
        requested = JobCancellationRequested(job_id=self.job_id, reason=reason, at=now)
        if self.farm_busy:
            return self.record(requested)
        return self.record(requested, JobCancelled(job_id=self.job_id, at=now))

    def kill(self, cause: KillCause, reason: str, by: str, now: datetime) -> list[Event]:
        """Stop the job for someone other than its owner (an administrator's kill, the
        owner's suspension): ``JobKilled`` with the cancel's events, so the cancel path
        stops the farm job and billing settles. A job cancelled or being cancelled changes
        nothing; a completed or failed one is refused (``job_finished``)."""
        if self.status in (S.cancelling, S.cancelled):
            return []
        self._require_open()
        assert self.status is not None
        killed = JobKilled(
            job_id=self.job_id,
            owner_id=self.owner_id,
            job_name=self.name,
            cause=cause,
            reason=reason,
            killed_by=by,
            status=self.status,
            at=now,
        )
        requested = JobCancellationRequested(job_id=self.job_id, reason=reason, at=now)
        if self.farm_busy:
            return self.record(killed, requested)
        return self.record(killed, requested, JobCancelled(job_id=self.job_id, at=now))

    @property
    def farm_busy(self) -> bool:
        """Whether the farm may have something of the job running: stopping it then waits
        for the farm. A job paused before it was queued has nothing there."""
        if self.status is S.paused:
            return self.paused_from not in (S.submitted, S.preparing)
        return self.status in FARM_BUSY

    # -- decide: commands from the scheduler ---------------------------------------------
    #
    # The scheduler delivers at least once and may deliver out of order (a task's completion
    # before the render's start). Each method below therefore answers a repeat with no events
    # and fills in what it missed (a render step that was never started).

    def queue(self, skip_reason: str, now: datetime) -> list[Event]:
        """Queue the full render, skipping the steps before it that are still pending.

        A job queued already, or further on, changes nothing; one paused before it was
        queued is refused (it is queued once resumed)."""
        if self.status is S.paused and not self.farm_busy:
            raise InvalidStateTransition(
                f"job {self.job_id} is paused before it was queued: resume it first",
                JobTransition(from_=self.status, to=S.queued),
            )
        if self.status in QUEUED_OR_LATER:
            return []
        if self.status is S.cancelling:
            raise JobCancelling(f"job {self.job_id} is being cancelled", job_id=self.job_id)
        self._require_open()
        if self.status not in QUEUEABLE:
            raise InvalidStateTransition(
                f"job {self.job_id} cannot be queued while {self.status}",
                JobTransition(from_=self.status, to=S.queued),
            )
        if self.scene is not None and not self.prepared:
            raise InvalidStateTransition(
                f"job {self.job_id} cannot be queued before its scene is staged and prepared",
                JobTransition(from_=self.status, to=S.queued),
            )
        events: list[Event] = [
            JobStepSkipped(job_id=self.job_id, step=name, reason=skip_reason)
            for name in _PRE_RENDER_STEPS
            if self.step(name).status is StepStatus.pending
        ]
        events.append(JobQueued(job_id=self.job_id, at=now))
        return self.record(*events)

    def start_staging(self, at: datetime) -> list[Event]:
        """The scene started being copied to the farm. Only a submitted job with a scene
        moves (to preparing); a repeat, or a start after the staging ended, changes nothing."""
        self._require_scene()
        if self.status is S.submitted and self._staging() is StepStatus.pending:
            return self.record(JobStepStarted(job_id=self.job_id, step=StepName.stage_scene, at=at))
        return []

    def record_staging_progress(
        self, bytes_done: int, bytes_total: int, at: datetime
    ) -> list[Event]:
        """Bytes of the scene copied so far. A report after the staging ended, after the job
        ended, or not ahead of the last one recorded (a late delivery), changes nothing; one
        before the start starts the step first."""
        self._require_scene()
        percent = round(min(bytes_done / bytes_total, 1) * 100, 1) if bytes_total else 100.0
        if self.status in TERMINAL_STATUSES or self._staging() not in (
            StepStatus.pending,
            StepStatus.running,
        ):
            return []
        if percent <= self.staging_percent:
            return []
        events = self.start_staging(at)
        return events + self.record(
            JobStepProgressed(
                job_id=self.job_id, step=StepName.stage_scene, progress_percent=percent, at=at
            )
        )

    def record_staged(self, scene_key: str, reused: bool, at: datetime) -> list[Event]:
        """The scene is where the farm reads it, at ``scene_key``. A repeat, or a report after
        the job ended, changes nothing; one before the start starts the step first."""
        self._require_scene()
        if self.status in TERMINAL_STATUSES or self._staging() not in (
            StepStatus.pending,
            StepStatus.running,
        ):
            return []
        events = self.start_staging(at)
        return events + self.record(
            JobSceneStaged(job_id=self.job_id, scene_key=scene_key, reused=reused, at=at),
            JobStepSucceeded(job_id=self.job_id, step=StepName.stage_scene, at=at),
        )

    def record_needed_staged(
        self, scene_key: str, files: int, bytes_staged: int, at: datetime
    ) -> list[Event]:
        """The files the test frames need are at ``scene_key``, the rest still being staged.
        Only while the staging runs, once; a report after the job ended changes nothing."""
        self._require_scene()
        if self.status in TERMINAL_STATUSES or self.needed_staged:
            return []
        if self._staging() not in (StepStatus.pending, StepStatus.running):
            return []
        events = self.start_staging(at)
        return events + self.record(
            JobSceneNeededFilesStaged(
                job_id=self.job_id,
                scene_key=scene_key,
                files=files,
                bytes_staged=bytes_staged,
                at=at,
            )
        )

    # -- decide: commands from the scene workers -----------------------------------------
    #
    # Workers deliver at least once, and a step taken over from a killed worker is reported
    # again from its start: a repeat, a report after the step ended or after the job ended
    # changes nothing; a report before the step's start starts it first.

    def start_step(self, step: StepName, at: datetime) -> list[Event]:
        """A scene step started (once the scene is staged)."""
        self._require_staged(step)
        if self.status in TERMINAL_STATUSES or self.status is S.cancelling:
            return []
        if self.step(step).status is not StepStatus.pending:
            return []
        return self.record(JobStepStarted(job_id=self.job_id, step=step, at=at))

    def record_step_progress(self, step: StepName, percent: float, at: datetime) -> list[Event]:
        """How far a scene step is; only ahead of the last report, while it may still run."""
        self._require_staged(step)
        if not self._step_open(step) or percent <= self.step_percent.get(step, 0.0):
            return []
        events = self.start_step(step, at)
        return events + self.record(
            JobStepProgressed(job_id=self.job_id, step=step, progress_percent=percent, at=at)
        )

    def record_scene_checked(
        self, findings: Sequence[SceneFinding], assets_total: int, assets_missing: int, at: datetime
    ) -> list[Event]:
        """The check's findings: the step succeeds, or an error among them fails the step
        and the job (``scene_check_failed``) before anything is rendered."""
        step = StepName.scene_check
        self._require_staged(step)
        if not self._step_open(step):
            return []
        checked = JobSceneChecked(
            job_id=self.job_id,
            findings=list(findings),
            assets_total=assets_total,
            assets_missing=assets_missing,
            at=at,
        )
        events = self.start_step(step, at)
        if not checked.errors:
            ok = JobStepSucceeded(job_id=self.job_id, step=step, at=at)
            return events + self.record(checked, ok)
        first = checked.errors[0]
        more = len(checked.errors) - 1
        reason = f"the scene check found {first.code}: {first.message}" + (
            f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        )
        failed = JobStepFailed(
            job_id=self.job_id, step=step, error=reason, code=SCENE_CHECK_FAILED, at=at
        )
        ended = JobFailed(job_id=self.job_id, reason=reason, code=SCENE_CHECK_FAILED, at=at)
        return events + self.record(checked, failed, ended)

    def record_repathed(self, at: datetime) -> list[Event]:
        """The scene's asset paths point into the farm's layout."""
        step = StepName.repath
        self._require_staged(step)
        if not self._step_open(step):
            return []
        events = self.start_step(step, at)
        return events + self.record(JobStepSucceeded(job_id=self.job_id, step=step, at=at))

    def record_prepared(self, scene_key: str, skip_reason: str | None, at: datetime) -> list[Event]:
        """The job's settings are in the scene at ``scene_key``: the job is ready. With
        ``skip_reason`` the repath and settings steps still pending are skipped."""
        step = StepName.render_settings
        self._require_staged(step)
        if self.prepared or not self._step_open(step):
            return []
        prepared = JobScenePrepared(job_id=self.job_id, scene_key=scene_key, at=at)
        if skip_reason is not None:
            skipped = [
                JobStepSkipped(job_id=self.job_id, step=name, reason=skip_reason)
                for name in (StepName.repath, step)
                if self.step(name).status is StepStatus.pending
            ]
            return self.record(*skipped, prepared)
        events = self.start_step(step, at)
        done = JobStepSucceeded(job_id=self.job_id, step=step, at=at)
        return events + self.record(prepared, done)

    # -- decide: test renders --------------------------------------------------------

    def request_test_render(
        self,
        frames: Sequence[int] | None,
        deadline_seconds: int,
        budget_credits: Decimal | None,
        now: datetime,
        quality: TestRenderQuality = TestRenderQuality(),
    ) -> list[Event]:
        """Ask for a test render of ``frames`` (default: first, middle, last) at ``quality``,
        due in ``deadline_seconds``. Only before the full render is queued, one at a time."""
        self._require_open()
        if self.status is S.cancelling:
            raise JobCancelling(f"job {self.job_id} is being cancelled", job_id=self.job_id)
        current = self.test_render
        if current is not None and current.in_flight:
            raise TestRenderInProgress(
                f"job {self.job_id} has a test render in progress ({current.render_id})",
                job_id=self.job_id,
                render_id=current.render_id,
                status=current.status.value,
            )
        if self.status not in TEST_RENDERABLE:
            raise TestRenderNotAllowed(
                f"job {self.job_id} is {self.status}: a test render comes before the full"
                " render is queued",
                status=self.status,
            )
        assert self.frame_range is not None
        picked = sorted(set(frames)) if frames else default_test_frames(self.frame_range)
        in_range = range(self.frame_range.start, self.frame_range.end + 1, self.frame_range.step)
        outside = [f for f in picked if f not in in_range]
        if outside:
            problem = FieldProblem(
                loc=["frames"],
                message=f"frames {outside} are not frames of the job's range"
                f" {self.frame_range.start}-{self.frame_range.end}"
                + (f" step {self.frame_range.step}" if self.frame_range.step > 1 else ""),
                type="frame_outside_range",
            )
            raise ValidationFailed("test render frames outside the job's range", errors=[problem])
        render_id = render_id_for(self.job_id, RenderKind.test, self.test_renders + 1)
        return self.record(
            JobTestRenderRequested(
                job_id=self.job_id,
                render_id=render_id,
                frames=picked,
                deadline_at=now + timedelta(seconds=deadline_seconds),
                budget_credits=budget_credits,
                at=now,
                quality=quality,
            )
        )

    def _current_test_render(self, render_id: str) -> TestRender | None:
        """The test render ``render_id`` if it is the job's latest and the job lives."""
        current = self.test_render
        if current is None or current.render_id != render_id:
            return None
        if self.status in TERMINAL_STATUSES or self.status is S.cancelling:
            return None
        return current

    def start_test_render(self, render_id: str, at: datetime) -> list[Event]:
        """The test render was placed on the farm: the job is test rendering."""
        current = self._current_test_render(render_id)
        if current is None or current.status is not TestRenderStatus.requested:
            return []
        if self.status not in (S.ready, S.test_render_ready):
            raise InvalidStateTransition(
                f"job {self.job_id} cannot test render while {self.status}",
                JobTransition(from_=self.status, to=S.test_rendering),
            )
        step = JobStepStarted(job_id=self.job_id, step=StepName.test_render, at=at)
        return self.record(
            step, JobTestRenderStarted(job_id=self.job_id, render_id=render_id, at=at)
        )

    def record_test_frames(
        self, render_id: str, frames: Sequence[TestRenderFrame], at: datetime
    ) -> list[Event]:
        current = self._current_test_render(render_id)
        if current is None or current.status is not TestRenderStatus.rendering:
            return []
        new = [f for f in frames if f.output.frame not in current.rendered]
        if not new:
            return []
        return self.record(
            JobTestRenderFramesRendered(job_id=self.job_id, render_id=render_id, frames=new, at=at)
        )

    def complete_test_render(self, render_id: str, at: datetime) -> list[Event]:
        current = self._current_test_render(render_id)
        if current is None or current.status is not TestRenderStatus.rendering:
            return []
        return self.record(
            JobTestRenderCompleted(job_id=self.job_id, render_id=render_id, at=at),
            JobStepSucceeded(job_id=self.job_id, step=StepName.test_render, at=at),
        )

    def fail_test_render(self, render_id: str, reason: str, at: datetime) -> list[Event]:
        """The test render failed: the job is ready again (a test render may be asked for
        again, or the full render started)."""
        current = self._current_test_render(render_id)
        if current is None or not current.in_flight:
            return []
        events: list[Event] = []
        if current.status is TestRenderStatus.rendering:
            events.append(
                JobStepFailed(
                    job_id=self.job_id, step=StepName.test_render, error=reason, code=None, at=at
                )
            )
        failed = JobTestRenderFailed(job_id=self.job_id, render_id=render_id, reason=reason, at=at)
        return self.record(*events, failed)

    def miss_test_render_deadline(self, render_id: str, at: datetime) -> list[Event]:
        current = self._current_test_render(render_id)
        if current is None or not current.in_flight or current.deadline_missed:
            return []
        if at < current.deadline_at:
            return []
        return self.record(
            JobTestRenderDeadlineMissed(
                job_id=self.job_id, render_id=render_id, deadline_at=current.deadline_at, at=at
            )
        )

    def release_full_render(self, by: FullRenderStartedBy, at: datetime) -> list[Event]:
        """Let the full render start (a job submitted with ``start_full_render=false``)."""
        self._require_open()
        if self.status is S.cancelling:
            raise JobCancelling(f"job {self.job_id} is being cancelled", job_id=self.job_id)
        if self.start_full_render or self.full_render_released:
            return []
        return self.record(JobFullRenderReleased(job_id=self.job_id, by=by, at=at))

    def _test_render_is(self, render_id: str, status: TestRenderStatus) -> None:
        if self.test_render is not None and self.test_render.render_id == render_id:
            self.test_render.status = status

    def _step_open(self, step: StepName) -> bool:
        """Whether ``step`` may still start or end: pending or running, in a live job."""
        if self.status in TERMINAL_STATUSES or self.status is S.cancelling:
            return False
        return self.step(step).status in (StepStatus.pending, StepStatus.running)

    def _require_staged(self, step: StepName) -> None:
        self._require_scene()
        if self.scene_key is None:
            raise InvalidStateTransition(
                f"job {self.job_id} cannot run {step} before its scene is staged",
                JobTransition(from_=self.status),
            )

    def _staging(self) -> StepStatus:
        return self.step(StepName.stage_scene).status

    def _require_scene(self) -> None:
        if self.scene is None:
            raise InvalidStateTransition(
                f"job {self.job_id} has no scene upload to stage", JobTransition(from_=self.status)
            )

    def start_render(self, at: datetime) -> list[Event]:
        """The farm started the render. Only a queued job moves (to rendering); a repeat, or
        a start that arrives after a task's result or after the end, changes nothing."""
        if self.status is S.queued and self.step(StepName.render).status is StepStatus.pending:
            return self.record(JobStepStarted(job_id=self.job_id, step=StepName.render, at=at))
        return []

    def record_frames(
        self,
        render_id: str,
        task_id: int,
        frames: Sequence[FrameOutput],
        worker: str,
        render_seconds: float,
        peak_memory_bytes: int | None,
        at: datetime,
    ) -> list[Event]:
        """A farm task finished. Recording the same task of the same render again, a task of
        a render that was replaced, or a result that comes after a cancel or a failure,
        changes nothing. A result before the render's start starts the render step first.

        A completed job still records the frames of its own render that arrive late: the
        files exist, and its frame list should show them."""
        if self.status in (S.cancelled, S.failed):
            return []
        if self.status not in (S.queued, S.rendering, S.paused, S.cancelling, S.completed):
            raise InvalidStateTransition(
                f"job {self.job_id} is {self.status}: it has no render to record frames of",
                JobTransition(from_=self.status),
            )
        if render_id in self.past_render_ids:
            return []
        if render_id == self.render_id and _has_task(self.task_ranges, task_id):
            return []
        if self.status is S.completed and self.render_id not in (None, render_id):
            return []  # another render's result for a job that has completed
        events: list[Event] = []
        if self.status is S.queued:
            events += self.start_render(at)
        return events + self.record(
            JobFramesRendered(
                job_id=self.job_id,
                render_id=render_id,
                task_id=task_id,
                frames=list(frames),
                worker=worker,
                render_seconds=render_seconds,
                at=at,
                peak_memory_bytes=peak_memory_bytes,
            )
        )

    def log_step(self, step: StepName, level: LogLevel, message: str, at: datetime) -> list[Event]:
        return self.record(
            JobStepLogged(job_id=self.job_id, step=step, level=level, message=message, at=at)
        )

    def complete(self, at: datetime) -> list[Event]:
        """The render finished. A job that has ended already changes nothing (a completion
        after a failure or a cancel is a late report). A job being cancelled completes: the
        farm finished before the cancel reached it."""
        if self.status in TERMINAL_STATUSES:
            return []
        render = self.step(StepName.render)
        events: list[Event] = []
        if self.status is S.paused and render.status is StepStatus.running:
            events.append(JobResumed(job_id=self.job_id, at=at))
        elif self.status in (S.queued, S.paused):
            events.append(JobStepStarted(job_id=self.job_id, step=StepName.render, at=at))
        elif self.status not in (S.rendering, S.cancelling):
            raise InvalidStateTransition(
                f"job {self.job_id} is {self.status}: it has no render to complete",
                JobTransition(from_=self.status, to=S.completed),
            )
        events.append(JobStepSucceeded(job_id=self.job_id, step=StepName.render, at=at))
        events.append(JobCompleted(job_id=self.job_id, at=at))
        return self.record(*events)

    def fail(self, reason: str, at: datetime, code: str | None = None) -> list[Event]:
        """Fail the running step and the job. With no step running that is the staging of a
        scene not staged yet, else the render. A job that has ended already changes nothing."""
        if self.status in TERMINAL_STATUSES:
            return []
        running = self.running_steps()
        if running:
            step = running[0]
        elif self.scene is not None and self.scene_key is None:
            step = StepName.stage_scene
        else:
            step = StepName.render
        return self.record(
            JobStepFailed(job_id=self.job_id, step=step, error=reason, code=code, at=at),
            JobFailed(job_id=self.job_id, reason=reason, code=code, at=at),
        )

    def confirm_cancelled(self, at: datetime) -> list[Event]:
        """The farm stopped the render. A job being cancelled is now cancelled (failed with
        the code when the system stopped it); one that has ended changes nothing; any other
        job lost its render without anyone asking (an operator deleted it on the farm), so
        it fails."""
        if self.status in TERMINAL_STATUSES:
            return []
        if self.status is S.cancelling and self.stop_code is not None:
            return self.record(*self._stop_events(self.stop_code, self.stop_reason or "", at))
        if self.status is S.cancelling:
            return self.record(JobCancelled(job_id=self.job_id, at=at))
        return self.fail(CANCELLED_ON_FARM, at)

    def pause(self, reason: str, at: datetime) -> list[Event]:
        """The job may not render until resumed (``reason``: a code such as
        ``insufficient_credits``). Pausing a paused job changes nothing, except that the
        owner's suspension (``account_suspended``) takes over a pause for credits: then only
        the reactivation resumes it."""
        if self.status is S.paused:
            if reason != ACCOUNT_SUSPENDED or self.paused_reason == ACCOUNT_SUSPENDED:
                return []
        else:
            self._require_open()
            if self.status is S.cancelling:
                raise JobCancelling(f"job {self.job_id} is being cancelled", job_id=self.job_id)
            if self.status not in PAUSABLE:
                raise InvalidStateTransition(
                    f"job {self.job_id} cannot be paused while {self.status}",
                    JobTransition(from_=self.status, to=S.paused),
                )
        return self.record(JobPaused(job_id=self.job_id, reason=reason, at=at))

    def pause_for_suspension(self, at: datetime) -> list[Event]:
        """The owner was suspended: pause the job if it can be paused. A job ready for its
        owner's start, test rendering or being cancelled is left as it is."""
        if self.status in PAUSABLE or self.status is S.paused:
            return self.pause(ACCOUNT_SUSPENDED, at)
        return []

    def resume(self, at: datetime, *, reactivated: bool = False) -> list[Event]:
        """Back to where the job was paused from (:func:`resumed_status`). A job that is not
        paused changes nothing; nor does a resume for credits of a job paused for its owner's
        suspension, or the owner's reactivation of a job paused for credits."""
        if self.status is not S.paused:
            return []
        if (self.paused_reason == ACCOUNT_SUSPENDED) is not reactivated:
            return []
        return self.record(JobResumed(job_id=self.job_id, at=at))

    def stop(self, code: str, reason: str, at: datetime) -> list[Event]:
        """Stop the job for ``code`` (``cost_cap_reached``): it ends failed with that code,
        at once when the farm has nothing of it, else once the farm stopped its render (the
        job waits in ``cancelling``). A job that has ended, or is being stopped or cancelled
        already, changes nothing."""
        if self.status in TERMINAL_STATUSES or self.status is S.cancelling:
            return []
        requested = JobCancellationRequested(job_id=self.job_id, reason=reason, code=code, at=at)
        if self.farm_busy:
            return self.record(requested)
        return self.record(requested, *self._stop_events(code, reason, at))

    def _stop_events(self, code: str, reason: str, at: datetime) -> list[Event]:
        """The running steps fail with the code, and the job."""
        failed: list[Event] = [
            JobStepFailed(job_id=self.job_id, step=step, error=reason, code=code, at=at)
            for step in self.running_steps()
        ]
        return [*failed, JobFailed(job_id=self.job_id, reason=reason, code=code, at=at)]

    def record_cost(self, cost: JobCostRecorded) -> list[Event]:
        """The job's money after a billing event, in any status (settlement comes after the
        job ended). One not newer than the last recorded changes nothing."""
        if cost.cost_version <= self.cost_version:
            return []
        return self.record(cost)

    def _require_open(self) -> None:
        if self.status in TERMINAL_STATUSES:
            raise JobFinished(
                f"job {self.job_id} is already {self.status}",
                status=self.status,
            )


class OwnerJobs(Aggregate):
    """An owner's active jobs, for the per-user job limit (stream ``owner-<user id>``)."""

    stream_prefix = "owner"

    active: list[str] = []

    def apply(self, event: Event) -> None:
        match event:
            case JobSlotTaken():
                self.active.append(event.job_id)
            case JobSlotFreed():
                if event.job_id in self.active:
                    self.active.remove(event.job_id)
            case _:
                raise TypeError(f"owner jobs cannot apply {type(event).__name__}")

    def take(self, owner_id: str, job_id: str, limit: int) -> list[Event]:
        if len(self.active) >= limit:
            raise JobLimitReached(
                f"you have {len(self.active)} active jobs; the limit is {limit}."
                " Wait for one to finish or cancel one.",
                active_jobs=len(self.active),
                limit=limit,
            )
        return self.record(JobSlotTaken(owner_id=owner_id, job_id=job_id))

    def free(self, owner_id: str, job_id: str) -> list[Event]:
        return (
            self.record(JobSlotFreed(owner_id=owner_id, job_id=job_id))
            if job_id in self.active
            else []
        )
