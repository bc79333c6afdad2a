"""Billing's process managers: a job's money from submission to settlement, and retrying the
holds of jobs waiting for credits. Pure policies on the kit (:mod:`libs.process`).

- ``billing`` (per job): a submitted job's cost is opened and its hold placed in the wallet;
  each finished farm task is charged and the hold grown when the billing service asks; the
  job's end captures the cost (or voids an unused hold) and records it. Every billing event
  of the job goes to the job service (``job.RecordJobCost``) so its envelope shows the money.
- ``billing-credits`` (per owner): the owner's jobs waiting for credits; a deposit or new
  key spend caps retry each of their holds.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from contracts.base import Event
from contracts.billing import (
    JOB_COST_EVENTS,
    ChargeTask,
    EstimateParameters,
    JobCostEvent,
    JobCostHeld,
    JobCostReply,
    JobCostSettled,
    JobHoldRefused,
    KeySpend,
    KeySpendCapsSet,
    OpenJobCost,
    RecordHoldRefused,
    RecordJobHold,
    RecordJobSettled,
    RetryJobHold,
    SetKeySpendCaps,
    SettleJobCost,
)
from contracts.envelope import AwaitingReason
from contracts.errors import DomainError, HoldNotPending, InsufficientCredits
from contracts.identity import ApiKeyCreated
from contracts.jobs import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    JobTestRenderRequested,
    RecordJobCost,
    TestRenderQuality,
)
from contracts.render import RenderTaskCompleted
from contracts.wallet import (
    CaptureHold,
    CreditsDeposited,
    HoldCredits,
    IncreaseHold,
    VoidHold,
    WalletBalance,
)
from libs.process import Cause, ProcessManager, Send

ZERO = Decimal("0.00")
JOB_ENDS = (JobCompleted, JobFailed, JobCancelled)


def _subjects(*types: type[Event]) -> tuple[str, ...]:
    return tuple(f"events.{t.event_type}" for t in types)


def hold_chain(reply: JobCostReply, at: datetime) -> list[Send]:
    """Ask the wallet for the hold billing asked for, then record what it answered: the
    hold, or (with too few credits) that the job waits for credits."""
    hold = reply.hold
    if hold is None:
        return []
    record = RecordJobHold(
        job_id=hold.job_id,
        transfer_id=hold.transfer_id,
        held_total=reply.totals.held_credits + hold.amount,
        at=at,
    )

    def refused(e: DomainError[Any]) -> list[Send]:
        if not isinstance(e, InsufficientCredits):
            return []
        waiting = RecordHoldRefused(
            job_id=hold.job_id,
            transfer_id=hold.transfer_id,
            reason=AwaitingReason.insufficient_credits,
            needed_credits=hold.amount,
            available_credits=e.details.available_credits,
            at=at,
        )
        return [Send(waiting, JobCostReply)]

    ask: HoldCredits | IncreaseHold
    if hold.kind == "open":
        ask = HoldCredits(
            user_id=hold.user_id,
            transfer_id=hold.transfer_id,
            hold_id=hold.hold_id,
            job_id=hold.job_id,
            amount=hold.amount,
            expires_at=hold.expires_at,
        )
    else:
        ask = IncreaseHold(
            user_id=hold.user_id,
            transfer_id=hold.transfer_id,
            hold_id=hold.hold_id,
            amount=hold.amount,
            expires_at=hold.expires_at,
        )
    return [
        Send(
            ask,
            WalletBalance,
            then=lambda _: [Send(record, JobCostReply)],
            if_refused=refused,
            tolerate=(InsufficientCredits,),
        )
    ]


def capture_chain(reply: JobCostReply, at: datetime) -> list[Send]:
    """Capture the job's cost from its hold (or void it), then record the settlement. A hold
    that is no longer pending (expired) released everything: settled with nothing charged."""
    capture = reply.capture
    if capture is None:
        return []
    held = reply.totals.held_credits
    cmd: CaptureHold | VoidHold
    if capture.kind == "capture":
        cmd = CaptureHold(
            user_id=capture.user_id,
            transfer_id=capture.transfer_id,
            hold_id=capture.hold_id,
            amount=capture.amount,
        )
        captured = capture.amount
    else:
        cmd = VoidHold(
            user_id=capture.user_id,
            transfer_id=capture.transfer_id,
            hold_id=capture.hold_id,
            reason="the job ended with nothing to charge",
        )
        captured = ZERO
    settled = RecordJobSettled(
        job_id=reply.job_id,
        transfer_id=capture.transfer_id,
        captured=captured,
        released=held - captured,
        at=at,
    )
    nothing = settled.model_copy(update={"captured": ZERO, "released": held})
    return [
        Send(
            cmd,
            WalletBalance,
            then=lambda _: [Send(settled, JobCostReply)],
            if_refused=lambda e: (
                [Send(nothing, JobCostReply)] if isinstance(e, HoldNotPending) else []
            ),
            tolerate=(HoldNotPending,),
        )
    ]


def record_job_cost(event: JobCostEvent, stream_version: int) -> RecordJobCost:
    """The job's money after a billing event, for its envelope."""
    t = event.totals
    est = t.estimate
    return RecordJobCost(
        job_id=event.job_id,
        cost_version=stream_version,
        status=t.status.value,
        estimate_credits=est.expected_credits if est else None,
        estimate_low_credits=est.low_credits if est else None,
        estimate_high_credits=est.high_credits if est else None,
        held_credits=t.held_credits,
        so_far_credits=t.so_far_credits,
        captured_credits=t.captured_credits,
        awaiting_reason=t.awaiting_reason.value if t.awaiting_reason else None,
        at=event.at,
    )


def parameters_of(event: JobSubmitted) -> EstimateParameters:
    return EstimateParameters(
        frame_range=event.frame_range,
        resolution=event.resolution,
        render_settings=event.render_settings,
        renderer=event.renderer,
        priority=event.priority,
        chunk_size=event.chunk_size,
        scene_size_bytes=event.scene.size_bytes if event.scene is not None else 0,
    )


class JobMoney(BaseModel):
    """What the billing manager remembers of a job: whose it is, whether it ended, and the
    quality of its test renders not at the job's own settings (their tasks are charged
    with it)."""

    owner_id: str | None = None
    ended: bool = False
    reduced_tests: dict[str, TestRenderQuality] = {}


class JobBillingProcess(ProcessManager[JobMoney]):
    """A job's money: open and hold, charge tasks, settle at the end, show it on the job."""

    name = "billing"
    subjects = _subjects(
        JobSubmitted, JobTestRenderRequested, RenderTaskCompleted, *JOB_ENDS, *JOB_COST_EVENTS
    )
    state_type = JobMoney

    def key(self, event: Event) -> str | None:
        keyed = (JobSubmitted, JobTestRenderRequested, RenderTaskCompleted)
        if isinstance(event, (*keyed, *JOB_ENDS, *JOB_COST_EVENTS)):
            return event.job_id
        return None

    def evolve(self, state: JobMoney, event: Event) -> JobMoney:
        if isinstance(event, JobSubmitted):
            return state.model_copy(update={"owner_id": event.owner_id})
        if isinstance(event, JobTestRenderRequested) and event.quality != TestRenderQuality():
            reduced = {**state.reduced_tests, event.render_id: event.quality}
            return state.model_copy(update={"reduced_tests": reduced})
        if isinstance(event, JOB_ENDS):
            return state.model_copy(update={"ended": True})
        return state

    def policy(self, cause: Cause, state: JobMoney) -> list[Send]:
        event = cause.event
        at = cause.recorded_at
        match event:
            case JobSubmitted():
                open_ = OpenJobCost(
                    job_id=event.job_id,
                    owner_id=event.owner_id,
                    api_key_id=event.api_key_id,
                    parameters=parameters_of(event),
                    cap_credits=event.cost_cap_credits,
                    at=event.submitted_at,
                )
                return [Send(open_, JobCostReply, then=lambda r: hold_chain(r, at))]
            case RenderTaskCompleted():
                charge = ChargeTask(
                    job_id=event.job_id,
                    render_id=event.render_id,
                    task_id=event.task_id,
                    frames=event.frames,
                    worker=event.worker,
                    render_seconds=event.render_seconds,
                    finished_at=event.finished_at,
                    quality=state.reduced_tests.get(event.render_id),
                )
                return [Send(charge, JobCostReply, then=lambda r: hold_chain(r, at))]
            case JobCompleted() | JobFailed() | JobCancelled():
                settle = SettleJobCost(job_id=event.job_id, at=event.at)
                return [Send(settle, JobCostReply, then=lambda r: capture_chain(r, at))]
        if isinstance(event, JOB_COST_EVENTS):
            return [Send(record_job_cost(event, cause.stream_version), JobAccepted)]
        return []


class AwaitingJobs(BaseModel):
    """An owner's jobs waiting for credits (a hold refused), oldest first."""

    jobs: list[str] = []


class CreditsRetryProcess(ProcessManager[AwaitingJobs]):
    """Retries the holds of an owner's waiting jobs when credits come in or caps change."""

    name = "billing-credits"
    subjects = _subjects(
        JobHoldRefused,
        JobCostHeld,
        JobCostSettled,
        CreditsDeposited,
        KeySpendCapsSet,
        ApiKeyCreated,
    )
    state_type = AwaitingJobs

    def key(self, event: Event) -> str | None:
        if isinstance(event, JobHoldRefused | JobCostHeld | JobCostSettled | KeySpendCapsSet):
            return event.owner_id
        if isinstance(event, CreditsDeposited | ApiKeyCreated):
            return event.user_id
        return None

    def evolve(self, state: AwaitingJobs, event: Event) -> AwaitingJobs:
        if isinstance(event, JobHoldRefused) and event.job_id not in state.jobs:
            return AwaitingJobs(jobs=[*state.jobs, event.job_id])
        if isinstance(event, JobCostHeld | JobCostSettled):
            return AwaitingJobs(jobs=[j for j in state.jobs if j != event.job_id])
        return state

    def policy(self, cause: Cause, state: AwaitingJobs) -> list[Send]:
        event = cause.event
        if isinstance(event, ApiKeyCreated):
            # The spend cap given when the key was made is its total cap from the start.
            if event.spend_cap_credits is None:
                return []
            caps = SetKeySpendCaps(
                api_key_id=event.key_id,
                owner_id=event.user_id,
                total_cap_credits=event.spend_cap_credits,
            )
            return [Send(caps, KeySpend)]
        if not isinstance(event, CreditsDeposited | KeySpendCapsSet):
            return []
        at = cause.recorded_at
        return [
            Send(
                RetryJobHold(job_id=job_id, at=at),
                JobCostReply,
                then=lambda r: hold_chain(r, at),
            )
            for job_id in state.jobs
        ]
