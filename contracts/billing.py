"""Prices, estimates and each job's cost: events (``billing.*``), commands and answers.

**Prices** are a catalogue published by an admin as versions, each effective from a time
(stream ``prices``). **Estimates** answer a range (low / expected / high) with the
assumptions stated as fields. **A job's cost** (stream ``jobcost-<job id>``) opens when the
job is submitted: the estimate's high end plus a margin is held in the owner's wallet before
anything renders; every farm task the job ran becomes a cost line (task, frames, worker,
instance type, seconds, price version, amount); the hold grows as the cost nears it; a job
whose hold cannot grow waits for credits; a job at its cap stops; at the end the actual cost
(at most the cap and the hold) is captured and the rest released. Each event carries the
job's totals after it, so whoever follows the events needs no other state.

**Spend caps per API key** (stream ``keybudget-<key id>``): a key's commitments (holds and
their increases) count against its daily cap on the UTC day they are made and against its
total cap until released.

Amounts are credits with two decimal places (``contracts.wallet.Credits``).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.envelope import AwaitingReason, CostStatus, Currency
from contracts.jobs import (
    FrameRange,
    JobPriority,
    Renderer,
    RenderSettings,
    Resolution,
    TestRenderQuality,
)
from contracts.text import IdText
from contracts.wallet import Credits

#: A price: credits per unit, exact to 0.0001 (prices are finer than the ledger's 0.01).
Price = Annotated[
    Decimal,
    Field(ge=0, le=Decimal("100000"), max_digits=12, decimal_places=4, description="Credits."),
]
InstanceType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- prices -----------------------------------------------------------------------------


class PriceUnit(StrEnum):
    instance_hour = "instance_hour"  # credits per hour of one machine
    ghz_hour = "ghz_hour"  # credits per GHz-hour: cores x GHz x hours


class InstancePrice(_Model):
    instance_type: InstanceType = Field(description="Machine type, e.g. c6i.8xlarge or local-cpu.")
    cores: StrictInt = Field(ge=1, le=1024, description="Physical cores of one machine.")
    ghz: Decimal = Field(
        gt=0, le=10, max_digits=5, decimal_places=2, description="Clock of one core in GHz."
    )
    unit: PriceUnit = Field(description="What the rates are per.")
    rates: dict[JobPriority, Price] = Field(
        description="Credits per unit, by the job's priority tier; every tier must be priced."
    )

    @model_validator(mode="after")
    def _every_tier(self) -> Self:
        missing = [p.value for p in JobPriority if p not in self.rates]
        if missing:
            raise ValueError(f"no rate for priority {', '.join(missing)}")
        return self

    def per_hour(self, priority: JobPriority) -> Decimal:
        """Credits per hour of one machine at ``priority`` (exact)."""
        rate = self.rates[priority]
        if self.unit is PriceUnit.ghz_hour:
            return rate * self.cores * self.ghz
        return rate


class PriceList(_Model):
    """Everything a price version sets."""

    instances: list[InstancePrice] = Field(
        min_length=1, max_length=100, description="Render machines and their rates."
    )
    default_instance_type: InstanceType = Field(
        description="The machine tasks are charged at when the farm does not say which ran them."
    )
    storage_per_gb_month: Price = Field(description="Credits per GB-month of stored outputs.")
    egress_per_gb: Price = Field(description="Credits per GB downloaded.")

    @model_validator(mode="after")
    def _default_is_listed(self) -> Self:
        names = [i.instance_type for i in self.instances]
        if len(set(names)) != len(names):
            raise ValueError("an instance type is listed twice")
        if self.default_instance_type not in names:
            raise ValueError(f"default_instance_type {self.default_instance_type} is not listed")
        return self

    def instance(self, instance_type: str) -> InstancePrice | None:
        return next((i for i in self.instances if i.instance_type == instance_type), None)


@EVENTS.register
class PricesPublished(Event):
    """A price version, in force from ``effective_from`` until the next version's."""

    event_type = "billing.PricesPublished"
    version: int
    effective_from: datetime
    prices: PriceList
    published_by: str
    at: datetime


@COMMANDS.register
class PublishPrices(Command):
    command_type = "billing.PublishPrices"
    prices: PriceList
    #: Null: at once.
    effective_from: datetime | None = None


class PriceVersion(_Model):
    version: int = Field(description="The price version's number (1, 2, ...).")
    effective_from: datetime = Field(description="UTC time it is in force from.")
    prices: PriceList = Field(description="What it sets.")
    published_by: str = Field(description="The admin who published it.")


# --- estimates --------------------------------------------------------------------------


class SecondsSource(StrEnum):
    """Where an estimate's seconds per frame came from."""

    model = "model"  # the renderer's reference time scaled by pixels and samples
    measured = "measured"  # the job's own farm tasks so far
    test_render = "test_render"  # the job's test render


class EstimateParameters(_Model):
    """What a job asks to render, as far as its cost is concerned."""

    frame_range: FrameRange = Field(description="Frames to render.")
    resolution: Resolution = Field(description="Output resolution.")
    render_settings: RenderSettings = Field(
        default_factory=RenderSettings, description="Samples (null: the scene's, assumed 128)."
    )
    renderer: Renderer = Field(default=Renderer.blender_cycles, description="Render engine.")
    priority: JobPriority = Field(default=JobPriority.normal, description="Priority tier.")
    chunk_size: StrictInt = Field(default=1, ge=1, le=1000, description="Frames per farm task.")
    scene_size_bytes: StrictInt = Field(
        default=0, ge=0, le=2**53, description="Bytes of the scene (loading time per task)."
    )


class EstimateAssumptions(_Model):
    seconds_per_frame_low: Decimal = Field(description="Fastest plausible seconds per frame.")
    seconds_per_frame: Decimal = Field(description="Expected seconds per frame.")
    seconds_per_frame_high: Decimal = Field(description="Slowest plausible seconds per frame.")
    seconds_source: SecondsSource = Field(description="Where the seconds per frame came from.")
    measured_tasks: int = Field(description="Farm tasks measured (0 for the model).")
    scene_load_seconds: Decimal = Field(description="Seconds each task spends loading the scene.")
    frames: int = Field(description="Frames to render.")
    tasks: int = Field(description="Farm tasks (frames ÷ chunk size, rounded up).")
    workers: int = Field(description="Machines assumed to render in parallel.")
    instance_type: str = Field(description="Machine type priced.")
    priority: JobPriority = Field(description="Priority tier priced.")
    price_per_hour_credits: Decimal = Field(description="Credits per machine-hour at that tier.")
    price_version: int = Field(description="Price version used.")


class CostEstimate(_Model):
    """A cost range with the assumptions behind it."""

    low_credits: Credits = Field(description="Cost if frames render at the fast end.")
    expected_credits: Credits = Field(description="Most likely cost.")
    high_credits: Credits = Field(description="Cost if frames render at the slow end.")
    currency: Currency = Field(description="Unit of every amount here.")
    duration_seconds: int = Field(description="Expected wall-clock seconds of rendering.")
    assumptions: EstimateAssumptions = Field(description="What the range rests on.")


@COMMANDS.register
class EstimateCost(Command):
    """Estimate from parameters, or from an existing job of ``owner_id`` (its parameters and
    its measured task times)."""

    command_type = "billing.EstimateCost"
    owner_id: IdText
    parameters: EstimateParameters | None = None
    job_id: IdText | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.parameters is None) == (self.job_id is None):
            raise ValueError("give either parameters or job_id")
        return self


# --- a job's cost -----------------------------------------------------------------------


class CostTotals(_Model):
    """A job's money after an event: what every ``billing.JobCost*`` event carries."""

    status: CostStatus
    estimate: CostEstimate | None
    cap_credits: Decimal | None
    held_credits: Decimal  # pending in the wallet now
    so_far_credits: Decimal  # Σ of the cost lines
    captured_credits: Decimal  # posted at settlement
    released_credits: Decimal  # given back at settlement
    awaiting_reason: AwaitingReason | None = None
    lines: int = 0


class LineCause(StrEnum):
    task = "task"  # a farm task's render time
    vm = "vm"  # machine time (the scaler)
    cap_adjustment = "cap_adjustment"  # the part above the cap, not charged (negative)
    hold_shortfall = "hold_shortfall"  # the part above the hold, not charged (negative)


class CostLine(_Model):
    """One cause of cost; the lines of a job add up exactly to its total."""

    line_id: str = Field(description="Stable id of the line, e.g. task:<render id>:<task id>.")
    cause: LineCause = Field(description="What the line charges for.")
    render_id: str | None = Field(description="The render the task belongs to.")
    task_id: int | None = Field(description="The farm task.")
    frames: list[int] = Field(description="Frames the task rendered.")
    worker: str | None = Field(description="The farm worker that ran it.")
    instance_type: str | None = Field(description="The machine type charged.")
    seconds: Decimal = Field(description="Seconds charged.")
    price_per_hour_credits: Decimal | None = Field(description="Credits per machine-hour.")
    price_version: int | None = Field(description="Price version used.")
    amount_credits: Credits = Field(description="Credits of this line (negative for a credit).")
    at: datetime = Field(description="UTC time the cost was incurred.")
    work_factor: Decimal = Field(
        default=Decimal(1),
        description="A frame's work at the job's settings over this task's, by pixels times"
        " samples (a decimal string): above 1 for a test render at reduced quality, whose"
        " seconds the re-estimate scales by it; 1 otherwise.",
    )


class HoldRequest(_Model):
    """A wallet hold the billing service asks for (the caller sends it to the wallet)."""

    user_id: str
    transfer_id: str
    hold_id: str
    job_id: str
    #: open: HoldCredits; increase: IncreaseHold (``amount`` may be 0: expiry only).
    kind: str
    amount: Decimal
    expires_at: datetime


class CaptureRequest(_Model):
    user_id: str
    transfer_id: str
    hold_id: str
    #: capture: CaptureHold of ``amount``; void: VoidHold (nothing to charge).
    kind: str
    amount: Decimal


class _JobCostEvent(Event):
    job_id: str
    owner_id: str
    totals: CostTotals
    at: datetime


@EVENTS.register
class JobCostOpened(_JobCostEvent):
    """Billing took the job: its estimate, cap and the hold it needs before rendering."""

    event_type = "billing.JobCostOpened"
    api_key_id: str | None
    parameters: EstimateParameters
    hold_target_credits: Decimal


@EVENTS.register
class JobCostHeld(_JobCostEvent):
    """The wallet holds ``increase_credits`` more for the job (``totals.held_credits`` in
    all): it may render (again, after ``awaiting_credits``)."""

    event_type = "billing.JobCostHeld"
    transfer_id: str
    increase_credits: Decimal
    resumed: bool


@EVENTS.register
class JobHoldRequested(Event):
    """Billing asked the wallet for ``request`` (a first hold or an increase). Until the
    wallet's answer is recorded every retry asks for this same request, so the wallet sees
    one transfer with one set of fields however often it is asked."""

    event_type = "billing.JobHoldRequested"
    job_id: str
    owner_id: str
    request: HoldRequest
    at: datetime


@EVENTS.register
class JobHoldRefused(_JobCostEvent):
    """A hold of ``needed_credits`` could not be placed: the job must not render until one is."""

    event_type = "billing.JobHoldRefused"
    reason: AwaitingReason
    needed_credits: Decimal
    available_credits: Decimal | None


@EVENTS.register
class TaskCharged(_JobCostEvent):
    """A farm task's cost (once per render and task)."""

    event_type = "billing.TaskCharged"
    line: CostLine


@EVENTS.register
class JobCostCapReached(_JobCostEvent):
    """The cost reached the job's cap: the job is stopped and charged at most the cap."""

    event_type = "billing.JobCostCapReached"


@EVENTS.register
class JobCostSettled(_JobCostEvent):
    """The job ended: ``captured`` posted, ``released`` given back; adjustment lines (cap,
    hold shortfall) make the lines add up to what was captured."""

    event_type = "billing.JobCostSettled"
    adjustments: list[CostLine]
    #: The wallet transfer asked to settle the hold (``capture:<job>`` or ``void:<job>``);
    #: null when no hold was ever placed.
    transfer_id: str | None = None


JobCostEvent = (
    JobCostOpened | JobCostHeld | JobHoldRefused | TaskCharged | JobCostCapReached | JobCostSettled
)
#: The same, for ``isinstance`` and subscriptions: every event carrying a job's totals.
JOB_COST_EVENTS = (
    JobCostOpened,
    JobCostHeld,
    JobHoldRefused,
    TaskCharged,
    JobCostCapReached,
    JobCostSettled,
)


@EVENTS.register
class KeySpendCapsSet(Event):
    event_type = "billing.KeySpendCapsSet"
    api_key_id: str
    owner_id: str
    daily_cap_credits: Decimal | None
    total_cap_credits: Decimal | None
    at: datetime


@EVENTS.register
class KeySpendCommitted(Event):
    """A hold (or its increase) made through the key."""

    event_type = "billing.KeySpendCommitted"
    api_key_id: str
    job_id: str
    amount: Decimal
    day: date
    at: datetime


@EVENTS.register
class KeySpendReleased(Event):
    """What a settled job gave back: no longer counts against the key's total cap."""

    event_type = "billing.KeySpendReleased"
    api_key_id: str
    job_id: str
    amount: Decimal
    at: datetime


# --- commands for a job's cost (from billing's own process manager) ---------------------


class JobCostReply(_Model):
    """The job's totals, and what the sender must ask the wallet next (if anything)."""

    job_id: str
    totals: CostTotals
    hold: HoldRequest | None = None
    capture: CaptureRequest | None = None
    version: int


@COMMANDS.register
class OpenJobCost(Command):
    command_type = "billing.OpenJobCost"
    job_id: IdText
    owner_id: IdText
    api_key_id: IdText | None
    parameters: EstimateParameters
    cap_credits: Decimal | None
    at: datetime


@COMMANDS.register
class RecordJobHold(Command):
    """The wallet placed (or grew) the hold of ``transfer_id`` to ``held_total``."""

    command_type = "billing.RecordJobHold"
    job_id: IdText
    transfer_id: str
    held_total: Decimal
    at: datetime


@COMMANDS.register
class RecordHoldRefused(Command):
    command_type = "billing.RecordHoldRefused"
    job_id: IdText
    transfer_id: str
    reason: AwaitingReason
    needed_credits: Decimal
    available_credits: Decimal | None
    at: datetime


@COMMANDS.register
class RetryJobHold(Command):
    """After a top-up or a raised cap: the hold a job awaiting credits needs now."""

    command_type = "billing.RetryJobHold"
    job_id: IdText
    at: datetime


@COMMANDS.register
class ChargeTask(Command):
    command_type = "billing.ChargeTask"
    job_id: IdText
    #: ``<job id>.<kind>.<attempt>`` (contracts.render.render_id_for): dots, so not IdText.
    render_id: str = Field(min_length=1, max_length=100)
    task_id: StrictInt
    frames: list[int]
    worker: str
    instance_type: str | None = None
    render_seconds: float
    finished_at: datetime
    #: A test render's quality, when it is not the job's own settings.
    quality: TestRenderQuality | None = None


@COMMANDS.register
class SettleJobCost(Command):
    """The job ended (completed, failed or cancelled): what to capture."""

    command_type = "billing.SettleJobCost"
    job_id: IdText
    at: datetime


@COMMANDS.register
class RecordJobSettled(Command):
    command_type = "billing.RecordJobSettled"
    job_id: IdText
    transfer_id: str
    captured: Decimal
    released: Decimal
    at: datetime


@COMMANDS.register
class SetKeySpendCaps(Command):
    command_type = "billing.SetKeySpendCaps"
    api_key_id: IdText
    owner_id: IdText
    daily_cap_credits: Credits | None = Field(default=None, ge=0)
    total_cap_credits: Credits | None = Field(default=None, ge=0)


class KeySpend(_Model):
    """An API key's spend caps and what it has committed."""

    api_key_id: str = Field(description="The API key.")
    daily_cap_credits: Credits | None = Field(description="Most credits per UTC day; null: none.")
    total_cap_credits: Credits | None = Field(description="Most credits in all; null: none.")
    today_credits: Credits = Field(description="Committed today (UTC) through this key.")
    total_credits: Credits = Field(description="Committed in all and not released.")
    currency: Currency = Field(description="Unit of every amount here.")
