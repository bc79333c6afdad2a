"""The render fleet: the scaler's events (``fleet.*``). One stream per machine, ``vm-<vm id>``,
and one per pool for the scaler's decisions, ``pool-<pool>``.

A machine goes through phases: ``requested`` (asked of the provider, booting), ``idle`` and
``busy`` (its render worker is up, without or with a task), ``draining`` (no new tasks; its
current task finishes), then ``stopped``, ``preempted`` (a spot machine taken back),
``lost`` (the provider no longer has it) or ``failed`` (the launch was refused). Every event
that ends a phase carries the span it ends (:class:`PhaseSpan`: from, to, seconds and what
it cost), so VM hours per day, pool and phase are a sum of spans, and a VM's cost is exact.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import EVENTS, Event

#: Cost of a span is kept to a millionth of a dollar.
USD_SCALE = Decimal("0.000001")


class VmPhase(StrEnum):
    requested = "requested"  # asked of the provider; booting
    idle = "idle"
    busy = "busy"
    draining = "draining"  # no new tasks; its current task finishes
    stopped = "stopped"
    preempted = "preempted"
    lost = "lost"
    failed = "failed"


#: Phases a machine never leaves.
ENDED_PHASES = frozenset({VmPhase.stopped, VmPhase.preempted, VmPhase.lost, VmPhase.failed})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PhaseSpan(_Model):
    """A stretch of one phase of one machine, and what it cost at the machine's price."""

    phase: VmPhase
    started_at: datetime
    ended_at: datetime
    seconds: Decimal = Field(ge=0, description="ended_at - started_at, to the millisecond.")
    hourly_price_usd: Decimal = Field(ge=0, description="The machine's price per hour.")
    cost_usd: Decimal = Field(ge=0, description="seconds x hourly price / 3600, to 1e-6 USD.")


def span(
    phase: VmPhase, started_at: datetime, ended_at: datetime, hourly_price_usd: Decimal
) -> PhaseSpan:
    """The span of ``phase`` from ``started_at`` to ``ended_at`` (never negative)."""
    ms = max(0, round((ended_at - started_at).total_seconds() * 1000))
    seconds = Decimal(ms) / 1000
    cost = (seconds * hourly_price_usd / 3600).quantize(USD_SCALE)
    return PhaseSpan(
        phase=phase,
        started_at=started_at,
        ended_at=ended_at,
        seconds=seconds,
        hourly_price_usd=hourly_price_usd,
        cost_usd=cost,
    )


class _VmEvent(Event):
    vm_id: str
    at: datetime


class VmSpanEvent(_VmEvent):
    """An event that ends the machine's current phase: ``ended`` is that phase's span."""

    ended: PhaseSpan


@EVENTS.register
class VmRequested(_VmEvent):
    """The scaler asked ``provider`` for a machine for ``pool``, for ``reason``."""

    event_type = "fleet.VmRequested"
    pool: str
    provider: str
    instance_type: str
    spot: bool
    region: str | None
    hourly_price_usd: Decimal
    reason: str
    #: The decision that asked for it (stream ``pool-<pool>``), null when adopted.
    decision_id: str | None


@EVENTS.register
class VmLaunchAccepted(_VmEvent):
    """The provider took the launch; ``request_id`` lets a restarted scaler re-attach."""

    event_type = "fleet.VmLaunchAccepted"
    request_id: str | None


@EVENTS.register
class VmLaunchFailed(VmSpanEvent):
    """The provider refused or failed the launch; the machine never ran."""

    event_type = "fleet.VmLaunchFailed"
    reason: str


@EVENTS.register
class VmAdopted(_VmEvent):
    """Reconciliation found a machine the provider runs for us that we did not know, and kept
    it (``RF_SCALER_ADOPT_UNKNOWN``)."""

    event_type = "fleet.VmAdopted"
    pool: str
    provider: str
    instance_type: str
    spot: bool
    region: str | None
    hourly_price_usd: Decimal
    worker_name: str | None
    launched_at: datetime


@EVENTS.register
class VmBooted(VmSpanEvent):
    """The machine is up and its render worker on the farm as ``worker_name``."""

    event_type = "fleet.VmBooted"
    worker_name: str


@EVENTS.register
class VmEngaged(VmSpanEvent):
    """The machine's worker took a task."""

    event_type = "fleet.VmEngaged"


@EVENTS.register
class VmIdled(VmSpanEvent):
    """The machine's worker has no task."""

    event_type = "fleet.VmIdled"


@EVENTS.register
class VmDrainStarted(VmSpanEvent):
    """The machine's worker takes no new task (disabled on the farm); it stops when idle."""

    event_type = "fleet.VmDrainStarted"
    reason: str
    decision_id: str | None


@EVENTS.register
class VmDrainCancelled(VmSpanEvent):
    """The draining machine is needed again: its worker takes tasks again (idle)."""

    event_type = "fleet.VmDrainCancelled"
    reason: str
    decision_id: str | None


@EVENTS.register
class VmStopped(VmSpanEvent):
    """The machine was stopped (by us, or found stopped); its time ends here."""

    event_type = "fleet.VmStopped"
    reason: str


@EVENTS.register
class VmPreempted(VmSpanEvent):
    """The cloud took the spot machine back; its farm task is requeued."""

    event_type = "fleet.VmPreempted"
    reason: str


@EVENTS.register
class VmLost(VmSpanEvent):
    """We thought the machine ran; the provider no longer has it."""

    event_type = "fleet.VmLost"


#: The events that end a span, in one tuple for the read models.
SPAN_EVENTS: tuple[type[VmSpanEvent], ...] = (
    VmLaunchFailed,
    VmBooted,
    VmEngaged,
    VmIdled,
    VmDrainStarted,
    VmDrainCancelled,
    VmStopped,
    VmPreempted,
    VmLost,
)


# --- what the admin API answers ----------------------------------------------------------


class VmView(_Model):
    """One machine of the fleet, as ``GET /v1/admin/vms`` shows it."""

    vm_id: str
    pool: str
    provider: str
    instance_type: str
    spot: bool
    region: str | None
    phase: VmPhase
    phase_since: datetime
    worker_name: str | None
    hourly_price_usd: Decimal = Field(description="What one hour of it costs, US dollars.")
    requested_at: datetime
    ended_at: datetime | None
    reason: str = Field(description="Why it was asked for (or why it ended).")
    boot_seconds: Decimal = Field(description="Seconds booting, up to now.")
    idle_seconds: Decimal = Field(description="Seconds up without a task, up to now.")
    busy_seconds: Decimal = Field(description="Seconds rendering (or finishing while draining).")
    cost_usd: Decimal = Field(description="What it has cost so far, up to now.")


class PoolFleet(_Model):
    pool: str
    vms: int = Field(description="Machines not ended (booting, idle, busy or draining).")
    busy: int
    cost_per_hour_usd: Decimal = Field(description="The hourly prices of its live machines.")


class FleetView(_Model):
    """``GET /v1/admin/vms``: the live fleet, per pool, and its machines."""

    at: datetime
    pools: list[PoolFleet]
    cost_per_hour_usd: Decimal
    items: list[VmView]


class UsageDay(_Model):
    """VM time and cost of one pool on one UTC day, by usage phase."""

    day: date
    pool: str
    boot_hours: Decimal
    idle_hours: Decimal
    busy_hours: Decimal
    cost_usd: Decimal
    #: Boot and idle time: the farm's own cost, charged to no job.
    farm_overhead_usd: Decimal


class UserUsageDay(_Model):
    """Machine time the tasks of one user's jobs used on one UTC day, and what it was charged."""

    day: date
    user_id: str
    task_hours: Decimal
    charged_credits: Decimal


class UsageView(_Model):
    """``GET /v1/admin/usage``: VM hours and cost per day and pool, and per day and user."""

    from_day: date
    to_day: date
    pools: list[UsageDay]
    users: list[UserUsageDay]
    total_cost_usd: Decimal
    total_farm_overhead_usd: Decimal


# --- the scaler's decisions (stream ``scaling-<pool>``) ------------------------------------


class ScalingAction(_Model):
    """One action of a decision: a launch (with the vm id chosen), drain, resume or stop."""

    action: str = Field(description="launch, drain, resume or stop.")
    vm_id: str
    reason: str
    instance_type: str | None = None


class ScalingHold(_Model):
    """Machines the pool wanted and did not get, and the ceiling that held them."""

    count: int
    reason: str


@EVENTS.register
class ScalingDecided(Event):
    """What the scaler decided for one pool, and what it decided on: the pool's sizing
    (waiting and running tasks, backlog seconds, deadline and backlog need, standby, min,
    max, desired) and the fleet's spend. Recorded when the pool has an action, or when what
    holds it back changes (a ceiling starting or ceasing to bind)."""

    event_type = "fleet.ScalingDecided"
    pool: str
    decision_id: str
    at: datetime
    inputs: dict[str, str | int | float]
    actions: list[ScalingAction]
    held: list[ScalingHold]
