"""``JobView``: the jobs read model's own state, and the envelope it renders.

Evolved from the job's events by :meth:`JobView.apply`, which is total: a known event never
makes it raise (it does not check transitions; the aggregate did when the event was
decided). It holds what the envelope shows and the counters the measured ETA needs, nothing
of the aggregate's bookkeeping (task ranges, replaced renders), and is stored as the
``view`` jsonb column of ``job.jobs``. Changing its shape means a new ``view_version`` and
a rebuild (``renderctl rebuild --projection jobs``): a row of another version is refused.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from contracts.base import Event
from contracts.envelope import (
    AwaitingReason,
    CostStatus,
    CostView,
    Currency,
    EstimateUnknownReason,
    EtaUnknownReason,
    EtaView,
    JobEnvelope,
    StepView,
    TestRenderView,
)
from contracts.jobs import (
    TERMINAL_STATUSES,
    FrameRange,
    FullRenderStartedBy,
    JobAction,
    JobCancelled,
    JobCostCapChanged,
    JobCostRecorded,
    JobFailed,
    JobFramesChanged,
    JobFramesRendered,
    JobFullRenderReleased,
    JobPaused,
    JobPriority,
    JobPriorityChanged,
    JobRenamed,
    JobRenderSettingsChanged,
    JobResumed,
    JobSceneChecked,
    JobStatus,
    JobStepFailed,
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
    Renderer,
    RenderSettings,
    Resolution,
    StepName,
    StepStatus,
    TestRenderStatus,
)
from contracts.scenes import SceneFinding
from services.job.domain import (
    SETTINGS_EDITABLE,
    TEST_RENDERABLE,
    resumed_status,
    status_after,
)

TestRenderEvent = (
    JobTestRenderStarted
    | JobTestRenderFramesRendered
    | JobTestRenderCompleted
    | JobTestRenderFailed
    | JobTestRenderDeadlineMissed
)

S = JobStatus

#: Share of overall progress each step stands for (sums to 100). Only work done counts: a
#: succeeded step its whole share, a running one its share times its own progress (the
#: render's: frames done over frames), a pending, skipped, failed or cancelled one nothing.
#: Waiting (submitted, queued, paused) adds nothing; only a completed job reads 100.
STEP_WEIGHTS: dict[StepName, int] = {
    StepName.stage_scene: 5,
    StepName.scene_check: 5,
    StepName.repath: 5,
    StepName.render_settings: 5,
    StepName.test_render: 5,
    StepName.render: 75,
}


def allowed_actions(status: JobStatus) -> list[JobAction]:
    """What a client may do next with a job in ``status`` (the envelope's list)."""
    if status in TERMINAL_STATUSES or status is S.cancelling:
        return []
    actions = [JobAction.update]
    if status in SETTINGS_EDITABLE:
        actions.append(JobAction.update_render_settings)
    if status in TEST_RENDERABLE:
        actions.append(JobAction.test_render)
    actions.append(JobAction.cancel)
    return actions


class StepState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StepName
    status: StepStatus = StepStatus.pending
    progress_percent: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    error_code: str | None = None


class JobView(BaseModel):
    """A job as the read model keeps it."""

    model_config = ConfigDict(extra="forbid")

    #: The stored shape; a row of another shape is refused (then rebuild).
    view_version: Literal[3] = 3
    job_id: str
    owner_id: str
    status: JobStatus
    name: str
    scene_id: str | None
    scene_file: str
    renderer: Renderer
    frame_range: FrameRange
    chunk_size: int
    resolution: Resolution
    render_settings: RenderSettings
    priority: JobPriority
    cost_cap_credits: Decimal | None
    # The job's money as billing last recorded it (JobCostRecorded); pending before.
    cost_recorded: bool = False
    cost_status: CostStatus = CostStatus.pending
    cost_estimate_credits: Decimal | None = None
    cost_estimate_low_credits: Decimal | None = None
    cost_estimate_high_credits: Decimal | None = None
    cost_held_credits: Decimal = Decimal(0)
    cost_so_far_credits: Decimal = Decimal(0)
    cost_captured_credits: Decimal = Decimal(0)
    cost_awaiting_reason: AwaitingReason | None = None
    #: The status the job was paused from (None unless paused).
    paused_from: JobStatus | None = None
    steps: list[StepState]
    frames_done: int = 0
    failure_reason: str | None = None
    failure_code: str | None = None
    #: What the scene check found (empty before it ran, and in rows from before it existed).
    scene_findings: list[SceneFinding] = []
    #: The latest test render (None in rows from before test renders, and when none).
    test_render: TestRenderView | None = None
    start_full_render: bool = True
    full_render_released_by: FullRenderStartedBy | None = None
    created_at: datetime
    # The ETA's measurements, for the current render only.
    render_id: str | None = None
    tasks_recorded: int = 0
    render_seconds_total: float = 0.0
    workers: list[str] = []
    last_frames_at: datetime | None = None

    @classmethod
    def submitted(cls, e: JobSubmitted) -> JobView:
        return cls(
            job_id=e.job_id,
            owner_id=e.owner_id,
            status=S.submitted,
            name=e.name,
            scene_id=e.scene.scene_id if e.scene else None,
            scene_file=e.scene.main_file if e.scene else e.scene_key or "",
            renderer=e.renderer,
            frame_range=e.frame_range,
            chunk_size=e.chunk_size,
            resolution=e.resolution,
            render_settings=e.render_settings,
            priority=e.priority,
            cost_cap_credits=e.cost_cap_credits,
            steps=list(_PENDING_STEPS),
            start_full_render=e.start_full_render,
            created_at=e.submitted_at,
        )

    def fork(self) -> JobView:
        """A copy :meth:`apply` can change without changing this one, much cheaper than
        ``model_copy(deep=True)`` (the rebuild forks once per event): :meth:`apply` only
        ever replaces field values, never mutates one in place, except for the list of
        steps, which the fork copies, and a step, which it copies before changing it
        (:meth:`_changing`). ``tests/job/test_views.py`` checks a fork leaves its original
        unchanged."""
        copied = _clone(self)
        copied.__dict__["steps"] = list(self.steps)
        return copied

    # -- evolve -----------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Total: every job event is taken as it is; events it does not show change nothing."""
        match event:
            case JobSubmitted():  # a stream starts once; taken as a fresh start if not
                fresh = JobView.submitted(event)
                for field in type(self).model_fields:
                    setattr(self, field, getattr(fresh, field))
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
            case JobStepStarted():
                step = self._changing(event.step)
                step.status, step.started_at = StepStatus.running, event.at
                step.progress_percent, step.finished_at = 0.0, None
                step.error, step.error_code = None, None
            case JobStepProgressed():
                self._changing(event.step).progress_percent = event.progress_percent
            case JobStepSucceeded():
                step = self._changing(event.step)
                step.status, step.progress_percent, step.finished_at = (
                    StepStatus.succeeded,
                    100.0,
                    event.at,
                )
            case JobStepFailed():
                step = self._changing(event.step)
                step.status, step.finished_at = StepStatus.failed, event.at
                step.error, step.error_code = event.error, event.code
            case JobStepSkipped():
                self._changing(event.step).status = StepStatus.skipped
            case JobFramesRendered():
                self._record(event)
            case JobSceneChecked():
                self.scene_findings = event.findings
            case JobTestRenderRequested():
                self.test_render = TestRenderView(
                    render_id=event.render_id,
                    status=TestRenderStatus.requested,
                    frames=event.frames,
                    quality=event.quality,
                    resolution=event.quality.resolution_of(self.resolution),
                    requested_at=event.at,
                    deadline_at=event.deadline_at,
                    seconds_left=None,
                    deadline_missed=False,
                    ready_at=None,
                    ready_in_seconds=None,
                    start_full_render_if_within=event.budget_credits,
                    results=[],
                    failure_reason=None,
                )
            case (
                JobTestRenderStarted()
                | JobTestRenderFramesRendered()
                | JobTestRenderCompleted()
                | JobTestRenderFailed()
                | JobTestRenderDeadlineMissed()
            ):
                self._test_render(event)
            case JobFullRenderReleased():
                self.full_render_released_by = event.by
            case JobFailed():
                self.failure_reason, self.failure_code = event.reason, event.code
            case JobPaused() if self.status is not JobStatus.paused:
                self.paused_from = self.status  # not again when a suspension takes over
            case JobCostRecorded():
                self._record_cost(event)
            case JobCancelled():
                for step in list(self.steps):
                    if step.status in (StepStatus.pending, StepStatus.running):
                        self._changing(step.name).status = StepStatus.cancelled
            case _:
                pass  # a status change only (below), logs, events this view does not show
        resumes_to = None
        if isinstance(event, JobResumed):
            running = [s.name for s in self.steps if s.status is StepStatus.running]
            resumes_to, self.paused_from = resumed_status(self.paused_from, running), None
        to = status_after(self.status, event, resumes_to)
        if to is not None:
            self.status = to

    def _record_cost(self, event: JobCostRecorded) -> None:
        """Billing's totals; a status this view does not know keeps the last one, a reason
        it does not know shows none (the view never raises for a known event)."""
        self.cost_recorded = True
        self.cost_status = _known(CostStatus, event.status) or self.cost_status
        self.cost_estimate_credits = event.estimate_credits
        self.cost_estimate_low_credits = event.estimate_low_credits
        self.cost_estimate_high_credits = event.estimate_high_credits
        self.cost_held_credits = event.held_credits
        self.cost_so_far_credits = event.so_far_credits
        self.cost_captured_credits = event.captured_credits
        self.cost_awaiting_reason = _known(AwaitingReason, event.awaiting_reason)

    def _record(self, event: JobFramesRendered) -> None:
        if event.render_id != self.render_id:  # a new render: count from zero again
            self.render_id = event.render_id
            self.tasks_recorded, self.frames_done = 0, 0
            self.render_seconds_total, self.workers, self.last_frames_at = 0.0, [], None
        self.tasks_recorded += 1
        self.frames_done += len(event.frames)
        self.render_seconds_total += event.render_seconds
        if event.worker not in self.workers:
            self.workers = sorted([*self.workers, event.worker])
        if self.last_frames_at is None or event.at > self.last_frames_at:
            self.last_frames_at = event.at
        if self.step(StepName.render).status in (StepStatus.pending, StepStatus.running):
            self._changing(StepName.render).progress_percent = round(
                min(self.frames_done / self.frames_total, 1) * 100, 1
            )

    def _changing(self, name: StepName) -> StepState:
        """The step ``name``, to change: a copy replaces it in this view's list first (a fork
        shares its steps with its original until it changes one, and new views share the
        pending steps of :data:`_PENDING_STEPS`)."""
        steps = self.steps
        for i, step in enumerate(steps):
            if step.name is name:
                own = steps[i] = _clone(step)
                return own
        self.step(name)  # a step added after this view was stored: added now
        return self._changing(name)

    def step(self, name: StepName) -> StepState:
        found = next((s for s in self.steps if s.name is name), None)
        if found is None:  # a step added after this view was stored
            found = StepState(name=name)
            self.steps = sorted([*self.steps, found], key=lambda s: list(StepName).index(s.name))
        return found

    # -- render -----------------------------------------------------------------------

    @property
    def frames_total(self) -> int:
        return self.frame_range.frame_count

    @property
    def tasks_total(self) -> int:
        return math.ceil(self.frames_total / self.chunk_size)

    @property
    def progress_percent(self) -> float:
        if self.status is S.completed:
            return 100.0
        done = 0.0
        for step in self.steps:
            weight = STEP_WEIGHTS[step.name]
            if step.status is StepStatus.succeeded:
                done += weight
            elif step.status is StepStatus.running:
                done += weight * step.progress_percent / 100
        return round(done, 1)

    @property
    def eta(self) -> EtaView:
        """From measured task times: the tasks left, at the mean render time of the tasks
        recorded so far, spread over as many workers as have finished tasks of the render
        (at least one, at most one per task left), counted from the latest task's end."""
        if self.status in TERMINAL_STATUSES:
            return _no_eta(EtaUnknownReason.finished)
        if self.status is S.paused:
            return _no_eta(EtaUnknownReason.paused)
        if self.status is not S.rendering:
            return _no_eta(EtaUnknownReason.not_started)
        if not self.tasks_recorded or self.last_frames_at is None:
            return _no_eta(EtaUnknownReason.no_measurements)
        remaining = max(self.tasks_total - self.tasks_recorded, 0)
        parallelism = max(1, min(len(self.workers), remaining))
        work = remaining * self.render_seconds_total / (self.tasks_recorded * parallelism)
        seconds = math.ceil(round(work, 6))  # 6 decimals: float noise never adds a second
        return EtaView(
            eta_seconds=seconds,
            eta_at=self.last_frames_at + timedelta(seconds=seconds),
            reason=None,
        )

    @property
    def cost(self) -> CostView:
        """The envelope's money block: billing's latest totals, or pending before any."""
        unknown = None
        if self.cost_estimate_credits is None:
            unknown = (
                EstimateUnknownReason.no_prices
                if self.cost_recorded
                else EstimateUnknownReason.not_estimated_yet
            )
        return CostView(
            status=self.cost_status,
            estimate_credits=self.cost_estimate_credits,
            estimate_low_credits=self.cost_estimate_low_credits,
            estimate_high_credits=self.cost_estimate_high_credits,
            estimate_unknown_reason=unknown,
            held_credits=self.cost_held_credits,
            so_far_credits=self.cost_so_far_credits,
            captured_credits=self.cost_captured_credits,
            cap_credits=self.cost_cap_credits,
            awaiting_reason=self.cost_awaiting_reason,
            currency=Currency.credits,
        )

    def _test_render(self, event: TestRenderEvent) -> None:
        """Apply a test render event to the latest test render (a copy: see :meth:`fork`)."""
        current = self.test_render
        if current is None or current.render_id != event.render_id:
            return
        update: dict[str, Any] = {}
        match event:
            case JobTestRenderStarted():
                update = {"status": TestRenderStatus.rendering}
            case JobTestRenderFramesRendered():
                done = {f.output.frame for f in current.results}
                new = [f for f in event.frames if f.output.frame not in done]
                results = sorted([*current.results, *new], key=lambda f: f.output.frame)
                update = {"results": results}
            case JobTestRenderCompleted():
                seconds = (event.at - current.requested_at).total_seconds()
                update = {
                    "status": TestRenderStatus.completed,
                    "ready_at": event.at,
                    "ready_in_seconds": round(seconds, 3),
                }
            case JobTestRenderFailed():
                update = {"status": TestRenderStatus.failed, "failure_reason": event.reason}
            case JobTestRenderDeadlineMissed():
                update = {"deadline_missed": True}
        self.test_render = current.model_copy(update=update)

    def _actions(self) -> list[JobAction]:
        """The status's actions, less a test render while one is in flight, plus the start
        of a full render that waits for it."""
        actions = allowed_actions(self.status)
        test = self.test_render
        in_flight = test is not None and test.status in (
            TestRenderStatus.requested,
            TestRenderStatus.rendering,
        )
        if in_flight and JobAction.test_render in actions:
            actions.remove(JobAction.test_render)
        waiting = not self.start_full_render and self.full_render_released_by is None
        if waiting and (self.status in TEST_RENDERABLE or self.status is S.test_rendering):
            actions.insert(len(actions) - 1, JobAction.start_full_render)
        return actions

    def _test_render_answer(self, updated_at: datetime) -> TestRenderView | None:
        current = self.test_render
        if current is None:
            return None
        left = None
        if current.status in (TestRenderStatus.requested, TestRenderStatus.rendering):
            left = max(0, math.ceil((current.deadline_at - updated_at).total_seconds()))
        return current.model_copy(update={"seconds_left": left})

    def envelope(self, version: int, updated_at: datetime) -> JobEnvelope:
        running = [s.name for s in self.steps if s.status is StepStatus.running]
        return JobEnvelope(
            job_id=self.job_id,
            name=self.name,
            owner_id=self.owner_id,
            status=self.status,
            current_step=running[0] if running else None,
            progress_percent=self.progress_percent,
            steps=[
                _PENDING_VIEWS.get(id(s)) or StepView.model_validate(s.__dict__) for s in self.steps
            ],
            eta=self.eta,
            cost=self.cost,
            allowed_actions=self._actions(),
            scene_id=self.scene_id,
            scene_file=self.scene_file,
            renderer=self.renderer,
            frame_range=self.frame_range,
            chunk_size=self.chunk_size,
            frames_total=self.frames_total,
            frames_done=self.frames_done,
            resolution=self.resolution,
            render_settings=self.render_settings,
            priority=self.priority,
            failure_reason=self.failure_reason,
            failure_code=self.failure_code,
            scene_findings=self.scene_findings,
            test_render=self._test_render_answer(updated_at),
            start_full_render=self.start_full_render,
            full_render_released_by=self.full_render_released_by,
            created_at=self.created_at,
            updated_at=updated_at,
            version=version,
        )


M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=StrEnum)


def _known(enum: type[E], value: str | None) -> E | None:
    """``value`` as a member of ``enum``, or None if it names none."""
    try:
        return None if value is None else enum(value)
    except ValueError:
        return None


def _clone(model: M) -> M:
    """A shallow copy of a pydantic model, as ``model_copy()`` makes it, without its
    per-attribute overhead (this runs once per event a rebuild folds)."""
    copied = _new(type(model))
    _set(copied, "__dict__", model.__dict__.copy())
    _set(copied, "__pydantic_fields_set__", set(model.__pydantic_fields_set__))
    extra, private = model.__pydantic_extra__, model.__pydantic_private__  # None unless declared
    _set(copied, "__pydantic_extra__", None if extra is None else dict(extra))
    _set(copied, "__pydantic_private__", None if private is None else dict(private))
    return copied


_new, _set = object.__new__, object.__setattr__

#: The steps of a job just submitted, shared by every new view: steps are copied before
#: they change (:meth:`JobView._changing`), never changed in place.
_PENDING_STEPS = tuple(StepState(name=n) for n in StepName)
#: Their envelope's views, by the steps' ids (they live as long as the module).
_PENDING_VIEWS = {id(s): StepView.model_validate(s.__dict__) for s in _PENDING_STEPS}


def _no_eta(reason: EtaUnknownReason) -> EtaView:
    return EtaView(eta_seconds=None, eta_at=None, reason=reason)
