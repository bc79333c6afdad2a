"""A simulated cloud behind the FleetProvider port, on a clock the caller moves.

Time never passes by itself: :meth:`SimulatedProvider.advance` moves the clock and returns
the machines whose status changed on the way (booted, preempted). Boot times, spot
preemptions and launch refusals are drawn from one seeded generator, so a run is repeatable.
The distributions are the caller's (the benchmark passes the boot-time draw of
``bench.testrender_sim``, anchors §4.1); the defaults here are plain assumptions, listed in
``docs/scaling.md``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.scaler.domain import InstanceOption, placement
from services.scaler.provider import LaunchRefused, LaunchSpec, VmInfo, VmStatus

#: The simulated clock's zero.
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)


def fixed_boot(seconds: float) -> Callable[[random.Random], float]:
    """A boot time that is always ``seconds``."""
    return lambda _rng: seconds


@dataclass
class _Vm:
    info: VmInfo
    launched: float
    boot_at: float
    preempt_at: float
    ended: float | None = None
    fail_at: float = math.inf


class SimulatedProvider:
    """Machines that boot after a drawn time, spot ones preempted at a drawn rate."""

    name = "simulated"

    def __init__(
        self,
        catalogue: Sequence[InstanceOption],
        *,
        seed: int = 0,
        boot_seconds: Callable[[random.Random], float] = fixed_boot(120.0),
        spot_preemptions_per_hour: float = 0.0,
        refusal_probability: float = 0.0,
        start: float = 0.0,
    ) -> None:
        self.catalogue = {o.name: o for o in catalogue}
        self.rng = random.Random(seed)
        self.boot_seconds = boot_seconds
        self.spot_preemptions_per_hour = spot_preemptions_per_hour
        self.refusal_probability = refusal_probability
        #: Instance types whose every launch is refused (an outage, a quota), by the caller.
        self.unavailable: set[str] = set()
        #: Placements (``domain.placement``) whose launches are accepted, then fail this many
        #: seconds later, before the machine is up: a capacity failure reported late, as
        #: SkyPilot reports one (a failed launch request).
        self.failing: dict[str, float] = {}
        self.now = start
        self._vms: dict[str, _Vm] = {}
        self._live: dict[str, _Vm] = {}
        #: (when, vm_id) of the boots and preemptions to come; stale entries are skipped.
        self._changes: list[tuple[float, str]] = []
        self._requests = 0

    async def launch(self, spec: LaunchSpec) -> VmInfo:
        known = self._vms.get(spec.vm_id)
        if known is not None:
            return known.info
        option = self.catalogue.get(spec.instance_type)
        if option is None:
            raise LaunchRefused(spec, f"unknown instance type {spec.instance_type}")
        if spec.instance_type in self.unavailable:
            raise LaunchRefused(spec, "InsufficientInstanceCapacity (type unavailable)")
        if self.refusal_probability > 0.0 and self.rng.random() < self.refusal_probability:
            raise LaunchRefused(spec, "InsufficientInstanceCapacity")
        self._requests += 1
        boot_at = self.now + self.boot_seconds(self.rng)
        fail_in = self.failing.get(placement(spec.instance_type, spec.region))
        fail_at = math.inf if fail_in is None else self.now + fail_in
        if fail_in is not None:
            boot_at = math.inf
        preempt_at = math.inf
        if spec.spot and self.spot_preemptions_per_hour > 0.0:
            preempt_at = boot_at + self.rng.expovariate(self.spot_preemptions_per_hour / 3600.0)
        info = VmInfo(
            vm_id=spec.vm_id,
            pool=spec.pool,
            instance_type=spec.instance_type,
            spot=spec.spot,
            status=VmStatus.launching,
            worker_name=None,
            hourly_price_usd=option.price(spec.spot),
            request_id=f"sim-{self._requests}",
            launched_at=EPOCH + timedelta(seconds=self.now),
            region=spec.region,
        )
        vm = _Vm(info, self.now, boot_at, preempt_at, fail_at=fail_at)
        self._vms[spec.vm_id] = self._live[spec.vm_id] = vm
        heapq.heappush(self._changes, (min(boot_at, fail_at), spec.vm_id))
        return info

    async def stop(self, vm_id: str) -> None:
        vm = self._vms.get(vm_id)
        if vm is None or vm.info.status is VmStatus.stopped:
            return
        if vm.ended is None:
            vm.ended = self.now
        vm.info = replace(vm.info, status=VmStatus.stopped)
        del self._live[vm_id]

    async def machines(self) -> Sequence[VmInfo]:
        return [vm.info for vm in self._live.values()]

    def next_change(self) -> float:
        """When the next machine boots, fails or is preempted (``inf``: none will)."""
        while self._changes and not self._due(*self._changes[0]):
            heapq.heappop(self._changes)
        return self._changes[0][0] if self._changes else math.inf

    def _due(self, at: float, vm_id: str) -> bool:
        vm = self._live.get(vm_id)
        if vm is None:
            return False
        status = vm.info.status
        return (status is VmStatus.launching and at in (vm.boot_at, vm.fail_at)) or (
            status is VmStatus.running and at == vm.preempt_at
        )

    def advance(self, to: float) -> list[VmInfo]:
        """Move the clock to ``to``; the machines that booted, failed or were preempted, in
        order."""
        changed: list[VmInfo] = []
        while self.next_change() <= to:
            at, vm_id = heapq.heappop(self._changes)
            vm = self._live[vm_id]
            if vm.info.status is VmStatus.launching and at == vm.fail_at:
                vm.ended = vm.launched  # no machine ran: nothing billed
                reason = "InsufficientInstanceCapacity (reported after the launch)"
                vm.info = replace(vm.info, status=VmStatus.failed, reason=reason)
            elif vm.info.status is VmStatus.launching:
                vm.info = replace(vm.info, status=VmStatus.running, worker_name=vm_id)
                if vm.preempt_at < math.inf:
                    heapq.heappush(self._changes, (vm.preempt_at, vm_id))
            else:
                vm.ended = at
                vm.info = replace(vm.info, status=VmStatus.preempted, reason="spot reclaimed")
            changed.append(vm.info)
        self.now = max(self.now, to)
        return changed

    def spent_usd(self) -> Decimal:
        """What every machine has cost until now, billed per millisecond from its launch."""
        total = Decimal(0)
        for vm in self._vms.values():
            end = self.now if vm.ended is None else vm.ended
            ms = max(0, round((end - vm.launched) * 1000))
            total += vm.info.hourly_price_usd * ms / 3_600_000
        return total
