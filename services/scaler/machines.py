"""One render machine's life as the scaler records it (stream ``vm-<vm id>``). Pure.

Every method is idempotent: it records only when the machine's phase changes, so a
reconciliation that sees the same state twice, or a restarted scaler replaying what it saw,
records nothing new. Each change ends the current phase's span (``PhaseSpan``) at the
machine's price: the sum of a machine's spans is its cost.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TypedDict, Unpack

from contracts.base import Event
from contracts.fleet import (
    ENDED_PHASES,
    PhaseSpan,
    ScalingAction,
    ScalingDecided,
    ScalingHold,
    VmAdopted,
    VmBooted,
    VmDrainCancelled,
    VmDrainStarted,
    VmEngaged,
    VmIdled,
    VmLaunchAccepted,
    VmLaunchFailed,
    VmLost,
    VmPhase,
    VmPreempted,
    VmRequested,
    VmSpanEvent,
    VmStopped,
    span,
)
from libs.eventstore.aggregate import Aggregate

#: Phases a machine's worker is up in.
UP_PHASES = frozenset({VmPhase.idle, VmPhase.busy, VmPhase.draining})
#: The phase each span-ending event moves a machine into (the fleet read model's too).
PHASE_AFTER: dict[type[VmSpanEvent], VmPhase] = {
    VmLaunchFailed: VmPhase.failed,
    VmBooted: VmPhase.idle,
    VmEngaged: VmPhase.busy,
    VmIdled: VmPhase.idle,
    VmDrainStarted: VmPhase.draining,
    VmDrainCancelled: VmPhase.idle,
    VmStopped: VmPhase.stopped,
    VmPreempted: VmPhase.preempted,
    VmLost: VmPhase.lost,
}


class Machine(TypedDict):
    """What a machine is, as requested or adopted."""

    pool: str
    provider: str
    instance_type: str
    spot: bool
    region: str | None
    hourly_price_usd: Decimal


class Vm(Aggregate):
    """A render machine: its pool, type, price, phase and what it has cost so far."""

    stream_prefix = "vm"

    pool: str = ""
    provider: str = ""
    instance_type: str = ""
    spot: bool = False
    region: str | None = None
    hourly_price_usd: Decimal = Decimal(0)
    phase: VmPhase | None = None
    since: datetime | None = None
    worker_name: str | None = None
    request_id: str | None = None
    #: Why it failed or was preempted (the provider's words).
    reason: str | None = None
    cost_usd: Decimal = Decimal(0)

    @property
    def ended(self) -> bool:
        return self.phase in ENDED_PHASES

    def _span(self, at: datetime) -> PhaseSpan:
        assert self.phase is not None and self.since is not None
        return span(self.phase, self.since, max(at, self.since), self.hourly_price_usd)

    # -- decisions ------------------------------------------------------------------------

    def request(
        self, *, reason: str, decision_id: str | None, at: datetime, **machine: Unpack[Machine]
    ) -> bool:
        """Ask for the machine; a second request of the same vm id records nothing."""
        if self.phase is not None:
            return False
        self.record(
            VmRequested(vm_id=self.key, at=at, reason=reason, decision_id=decision_id, **machine)
        )
        return True

    def adopt(
        self,
        *,
        worker_name: str | None,
        launched_at: datetime,
        at: datetime,
        **machine: Unpack[Machine],
    ) -> bool:
        """Take on a machine the provider runs and we did not know (counted from its launch)."""
        if self.phase is not None:
            return False
        self.record(
            VmAdopted(
                vm_id=self.key, at=at, worker_name=worker_name, launched_at=launched_at, **machine
            )
        )
        return True

    def launch_accepted(self, request_id: str | None, at: datetime) -> bool:
        if self.phase is not VmPhase.requested or self.request_id is not None:
            return False
        self.record(VmLaunchAccepted(vm_id=self.key, at=at, request_id=request_id))
        return True

    def launch_failed(self, reason: str, at: datetime) -> bool:
        if self.phase is not VmPhase.requested:
            return False
        self.record(VmLaunchFailed(vm_id=self.key, at=at, reason=reason, ended=self._span(at)))
        return True

    def booted(self, worker_name: str, at: datetime) -> bool:
        if self.phase is not VmPhase.requested:
            return False
        self.record(VmBooted(vm_id=self.key, at=at, worker_name=worker_name, ended=self._span(at)))
        return True

    def worker_seen(self, busy: bool, at: datetime) -> bool:
        """The farm shows the machine's worker ``busy`` (with a task) or idle."""
        if self.phase is VmPhase.busy and not busy:
            self.record(VmIdled(vm_id=self.key, at=at, ended=self._span(at)))
            return True
        if self.phase is VmPhase.idle and busy:
            self.record(VmEngaged(vm_id=self.key, at=at, ended=self._span(at)))
            return True
        return False

    def drain(self, reason: str, decision_id: str | None, at: datetime) -> bool:
        """No new tasks from now on; the machine stops once its worker is idle."""
        if self.phase not in (VmPhase.idle, VmPhase.busy):
            return False
        self.record(
            VmDrainStarted(
                vm_id=self.key,
                at=at,
                reason=reason,
                decision_id=decision_id,
                ended=self._span(at),
            )
        )
        return True

    def resume(self, reason: str, decision_id: str | None, at: datetime) -> bool:
        """A draining machine is needed again: its worker takes tasks again."""
        if self.phase is not VmPhase.draining:
            return False
        self.record(
            VmDrainCancelled(
                vm_id=self.key,
                at=at,
                reason=reason,
                decision_id=decision_id,
                ended=self._span(at),
            )
        )
        return True

    def stopped(self, reason: str, at: datetime) -> bool:
        if self.phase is None or self.ended:
            return False
        self.record(VmStopped(vm_id=self.key, at=at, reason=reason, ended=self._span(at)))
        return True

    def preempted(self, reason: str, at: datetime) -> bool:
        if self.phase is None or self.ended:
            return False
        self.record(VmPreempted(vm_id=self.key, at=at, reason=reason, ended=self._span(at)))
        return True

    def lost(self, at: datetime) -> bool:
        if self.phase is None or self.ended:
            return False
        self.record(VmLost(vm_id=self.key, at=at, ended=self._span(at)))
        return True

    # -- state ----------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        match event:
            case VmRequested():
                self._describe(event)
                self.phase, self.since = VmPhase.requested, event.at
            case VmAdopted():
                self._describe(event)
                self.worker_name = event.worker_name
                up = VmPhase.idle if event.worker_name else VmPhase.requested
                self.phase, self.since = up, event.launched_at
            case VmLaunchAccepted():
                self.request_id = event.request_id
            case VmSpanEvent():
                self._end(event.ended, PHASE_AFTER[type(event)], event.at)
                if isinstance(event, VmBooted):
                    self.worker_name = event.worker_name
                if isinstance(event, VmLaunchFailed | VmPreempted):
                    self.reason = event.reason

    def _describe(self, event: VmRequested | VmAdopted) -> None:
        self.pool, self.provider = event.pool, event.provider
        self.instance_type, self.spot = event.instance_type, event.spot
        self.region, self.hourly_price_usd = event.region, event.hourly_price_usd

    def _end(self, ended: PhaseSpan, phase: VmPhase, at: datetime) -> None:
        self.cost_usd += ended.cost_usd
        self.phase, self.since = phase, at


class PoolScaling(Aggregate):
    """One pool's decisions (stream ``scaling-<pool>``): what held it back last, so that a
    ceiling that keeps binding round after round is recorded once."""

    stream_prefix = "scaling"

    decisions: int = 0
    held: list[ScalingHold] = []

    def decided(
        self,
        decision_id: str,
        at: datetime,
        inputs: dict[str, str | int | float],
        actions: list[ScalingAction],
        held: list[ScalingHold],
    ) -> bool:
        if not actions and held == self.held:
            return False
        self.record(
            ScalingDecided(
                pool=self.key,
                decision_id=decision_id,
                at=at,
                inputs=inputs,
                actions=actions,
                held=held,
            )
        )
        return True

    def apply(self, event: Event) -> None:
        if isinstance(event, ScalingDecided):
            self.decisions += 1
            self.held = list(event.held)
