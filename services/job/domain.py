"""The job aggregate: lifecycle state machine, steps, progress, and the envelope clients see.

Pure: no I/O and no clock (times come in with the command or the event).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from contracts.base import Event
from contracts.envelope import CostView, Currency, EtaUnknownReason, EtaView, JobEnvelope, StepView
from contracts.errors import DomainError, ErrorCode
from contracts.jobs import (
    TERMINAL_STATUSES,
    FrameRange,
    JobAction,
    JobCancellationRequested,
    JobCancelled,
    JobChanges,
    JobCompleted,
    JobCostCapChanged,
    JobFailed,
    JobFramesChanged,
    JobPaused,
    JobPriority,
    JobPriorityChanged,
    JobQueued,
    JobRenamed,
    JobRenderSettingsChanged,
    JobResumed,
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
    Renderer,
    RenderSettings,
    Resolution,
    StepName,
    StepStatus,
)
from libs.eventstore.aggregate import Aggregate

S = JobStatus

#: Which status may follow which. Anything else is a bug in the caller, refused loudly.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.submitted: frozenset({S.preparing, S.ready, S.cancelled, S.failed}),
    S.preparing: frozenset({S.ready, S.failed, S.cancelled}),
    S.ready: frozenset({S.test_rendering, S.queued, S.cancelled, S.failed}),
    S.test_rendering: frozenset({S.test_render_ready, S.ready, S.failed, S.cancelling}),
    S.test_render_ready: frozenset({S.test_rendering, S.queued, S.ready, S.cancelled}),
    S.queued: frozenset({S.rendering, S.paused, S.failed, S.cancelling}),
    S.rendering: frozenset({S.completed, S.failed, S.paused, S.cancelling}),
    S.paused: frozenset({S.queued, S.rendering, S.cancelling, S.failed}),
    S.cancelling: frozenset({S.cancelled, S.failed}),
    S.completed: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}

#: Frames, resolution and render settings can change only before rendering starts.
SETTINGS_EDITABLE = frozenset({S.submitted, S.preparing, S.ready, S.test_render_ready})
#: Cancelling from these needs the farm to confirm it stopped; from others it is immediate.
FARM_BUSY = frozenset({S.test_rendering, S.queued, S.rendering, S.paused})

#: Share of overall progress each step stands for (sums to 100).
STEP_WEIGHTS: dict[StepName, int] = {
    StepName.scene_check: 5,
    StepName.repath: 5,
    StepName.render_settings: 5,
    StepName.test_render: 5,
    StepName.render: 80,
}

_STEP_STARTS_STATUS = {
    StepName.scene_check: S.preparing,
    StepName.repath: S.preparing,
    StepName.render_settings: S.preparing,
    StepName.test_render: S.test_rendering,
    StepName.render: S.rendering,
}


class Step(BaseModel):
    name: StepName
    status: StepStatus = StepStatus.pending
    progress_percent: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


def _allowed_actions(status: JobStatus) -> list[JobAction]:
    if status in TERMINAL_STATUSES or status is S.cancelling:
        return []
    actions = [JobAction.update]
    if status in SETTINGS_EDITABLE:
        actions.append(JobAction.update_render_settings)
    actions.append(JobAction.cancel)
    return actions


class Job(Aggregate):
    job_id: str = ""
    owner_id: str = ""
    status: JobStatus | None = None
    name: str = ""
    scene_key: str = ""
    renderer: Renderer = Renderer.blender_cycles
    frame_range: FrameRange | None = None
    chunk_size: int = 1
    resolution: Resolution | None = None
    render_settings: RenderSettings = RenderSettings()
    priority: JobPriority = JobPriority.normal
    cost_cap_credits: Decimal | None = None
    cost_so_far_credits: Decimal = Decimal(0)
    cost_estimate_credits: Decimal | None = None
    steps: list[Step] = []
    frames_done: int = 0
    failure_reason: str | None = None
    created_at: datetime | None = None

    # -- evolve -----------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        match event:
            case JobSubmitted():
                self.job_id, self.owner_id = event.job_id, event.owner_id
                self.status = S.submitted
                self.name, self.scene_key, self.renderer = (
                    event.name,
                    event.scene_key,
                    event.renderer,
                )
                self.frame_range, self.chunk_size = event.frame_range, event.chunk_size
                self.resolution, self.render_settings = event.resolution, event.render_settings
                self.priority, self.cost_cap_credits = event.priority, event.cost_cap_credits
                self.created_at = event.submitted_at
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
            case JobStepStarted():
                step = self.step(event.step)
                step.status, step.started_at = StepStatus.running, event.at
                step.progress_percent, step.finished_at, step.error = 0.0, None, None
                self._move(_STEP_STARTS_STATUS[event.step])
            case JobStepProgressed():
                self.step(event.step).progress_percent = event.progress_percent
            case JobStepSucceeded():
                step = self.step(event.step)
                step.status, step.progress_percent, step.finished_at = (
                    StepStatus.succeeded,
                    100.0,
                    event.at,
                )
                if event.step is StepName.render_settings:
                    self._move(S.ready)
                elif event.step is StepName.test_render:
                    self._move(S.test_render_ready)
            case JobStepFailed():
                step = self.step(event.step)
                step.status, step.finished_at, step.error = StepStatus.failed, event.at, event.error
            case JobStepSkipped():
                self.step(event.step).status = StepStatus.skipped
            case JobStepLogged():
                pass  # logs live in the stream and the step-log read model
            case JobQueued():
                self._move(S.queued)
            case JobPaused():
                self._move(S.paused)
            case JobResumed():
                running = self.step(StepName.render).status is StepStatus.running
                self._move(S.rendering if running else S.queued)
            case JobCompleted():
                self._move(S.completed)
            case JobFailed():
                self.failure_reason = event.reason
                self._move(S.failed)
            case JobCancellationRequested():
                if self.status in FARM_BUSY:
                    self._move(S.cancelling)
            case JobCancelled():
                for step in self.steps:
                    if step.status in (StepStatus.pending, StepStatus.running):
                        step.status = StepStatus.cancelled
                self._move(S.cancelled)
            case _:
                raise TypeError(f"job cannot apply {type(event).__name__}")

    def _move(self, to: JobStatus) -> None:
        if to is self.status:
            return
        if self.status is None or to not in TRANSITIONS[self.status]:
            raise DomainError(
                ErrorCode.invalid_state_transition,
                f"job {self.job_id} cannot go from {self.status} to {to}",
                {"from": self.status, "to": to},
            )
        self.status = to

    def step(self, name: StepName) -> Step:
        return next(s for s in self.steps if s.name is name)

    # -- decide -----------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.status is not None

    def submit(self, job_id: str, owner_id: str, spec: JobSpec, now: datetime) -> list[Event]:
        return [
            JobSubmitted(
                job_id=job_id,
                owner_id=owner_id,
                name=spec.name,
                scene_key=spec.scene_key,
                renderer=spec.renderer,
                frame_range=spec.frame_range,
                chunk_size=spec.chunk_size,
                resolution=spec.resolution,
                render_settings=spec.render_settings,
                priority=spec.priority,
                cost_cap_credits=spec.cost_cap_credits,
                submitted_at=now,
            )
        ]

    def update(self, changes: JobChanges) -> list[Event]:
        self._require_open()
        if self.status is S.cancelling:
            raise DomainError(ErrorCode.job_not_editable, f"job {self.job_id} is being cancelled")
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
            raise DomainError(
                ErrorCode.job_not_editable,
                f"frames and render settings cannot change once rendering has started"
                f" (job is {self.status})",
                {"status": self.status},
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
        return events

    def cancel(self, reason: str | None, now: datetime) -> list[Event]:
        """Cancel at once if the farm has nothing running, else ask and wait for the farm.

        Cancelling a job that is cancelled or being cancelled changes nothing."""
        if self.status in (S.cancelling, S.cancelled):
            return []
        self._require_open()
        requested = JobCancellationRequested(job_id=self.job_id, reason=reason, at=now)
        if self.status in FARM_BUSY:
            return [requested]
        return [requested, JobCancelled(job_id=self.job_id, at=now)]

    def _require_open(self) -> None:
        if self.status in TERMINAL_STATUSES:
            raise DomainError(
                ErrorCode.job_finished,
                f"job {self.job_id} is already {self.status}",
                {"status": self.status},
            )

    # -- view -------------------------------------------------------------------------

    @property
    def progress_percent(self) -> float:
        if self.status is S.completed:
            return 100.0
        done = 0.0
        for step in self.steps:
            weight = STEP_WEIGHTS[step.name]
            if step.status in (StepStatus.succeeded, StepStatus.skipped):
                done += weight
            elif step.status is StepStatus.running:
                done += weight * step.progress_percent / 100
        return round(done, 1)

    def envelope(self, version: int, updated_at: datetime) -> JobEnvelope:
        assert self.status is not None and self.frame_range is not None
        assert self.resolution is not None and self.created_at is not None
        running = [s.name for s in self.steps if s.status is StepStatus.running]
        if self.status in TERMINAL_STATUSES:
            eta = EtaView(eta_seconds=None, eta_at=None, reason=EtaUnknownReason.finished)
        elif self.status is S.paused:
            eta = EtaView(eta_seconds=None, eta_at=None, reason=EtaUnknownReason.paused)
        elif self.status is S.rendering:
            eta = EtaView(eta_seconds=None, eta_at=None, reason=EtaUnknownReason.no_measurements)
        else:
            eta = EtaView(eta_seconds=None, eta_at=None, reason=EtaUnknownReason.not_started)
        return JobEnvelope(
            job_id=self.job_id,
            name=self.name,
            owner_id=self.owner_id,
            status=self.status,
            current_step=running[0] if running else None,
            progress_percent=self.progress_percent,
            steps=[StepView(**s.model_dump()) for s in self.steps],
            eta=eta,
            cost=CostView(
                estimate_credits=self.cost_estimate_credits,
                so_far_credits=self.cost_so_far_credits,
                cap_credits=self.cost_cap_credits,
                currency=Currency.credits,
            ),
            allowed_actions=_allowed_actions(self.status),
            scene_key=self.scene_key,
            renderer=self.renderer,
            frame_range=self.frame_range,
            chunk_size=self.chunk_size,
            frames_total=self.frame_range.frame_count,
            frames_done=self.frames_done,
            resolution=self.resolution,
            render_settings=self.render_settings,
            priority=self.priority,
            failure_reason=self.failure_reason,
            created_at=self.created_at,
            updated_at=updated_at,
            version=version,
        )


class OwnerJobs(Aggregate):
    """An owner's active jobs, for the per-user job limit (stream ``owner-<user id>``)."""

    active: list[str] = []

    def apply(self, event: Event) -> None:
        match event:
            case JobSlotTaken():
                self.active.append(event.job_id)
            case JobSlotFreed():
                self.active.remove(event.job_id)
            case _:
                raise TypeError(f"owner jobs cannot apply {type(event).__name__}")

    def take(self, owner_id: str, job_id: str, limit: int) -> list[Event]:
        if len(self.active) >= limit:
            raise DomainError(
                ErrorCode.job_limit_reached,
                f"you have {len(self.active)} active jobs; the limit is {limit}."
                " Wait for one to finish or cancel one.",
                {"active_jobs": len(self.active), "limit": limit},
            )
        return [JobSlotTaken(owner_id=owner_id, job_id=job_id)]

    def free(self, owner_id: str, job_id: str) -> list[Event]:
        return [JobSlotFreed(owner_id=owner_id, job_id=job_id)] if job_id in self.active else []
