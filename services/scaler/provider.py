"""The port between the scaler and whatever runs machines: SkyPilot, the local farm, a simulation.

A provider knows machines, not tasks: it launches a VM for a pool, stops one, and lists what it
has. Draining (no new tasks, finish the current one) goes through the farm, never the provider,
so a provider never decides whether work is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class VmStatus(StrEnum):
    """What the provider says about one machine."""

    launching = "launching"  # asked for, not yet up (cloud provisioning, OS boot)
    running = "running"  # up; its render worker may still be starting
    stopping = "stopping"
    stopped = "stopped"
    preempted = "preempted"  # a spot machine taken back by the cloud
    failed = "failed"  # the launch failed


@dataclass(frozen=True)
class LaunchSpec:
    """One machine to launch. ``vm_id`` is ours, chosen before the launch, so a retried or
    re-attached launch is the same machine (the provider's idempotency key)."""

    vm_id: str
    pool: str
    instance_type: str
    spot: bool
    region: str | None = None


@dataclass(frozen=True)
class VmInfo:
    """One machine as the provider reports it."""

    vm_id: str
    pool: str
    instance_type: str
    spot: bool
    status: VmStatus
    #: The render worker's name on the farm (Deadline's worker name) once known.
    worker_name: str | None
    #: What the provider charges for one hour of this machine, in US dollars (exact).
    hourly_price_usd: Decimal
    #: The provider's own id for the launch (SkyPilot's request id), stored so that a
    #: restarted scaler re-attaches to a launch in flight instead of starting a second one.
    request_id: str | None
    launched_at: datetime
    region: str | None = None
    #: Why the machine failed or was preempted, in the provider's words.
    reason: str | None = None


class LaunchRefused(Exception):
    """The provider could not launch (no capacity, quota, price): back off or try another type."""

    def __init__(self, spec: LaunchSpec, reason: str) -> None:
        super().__init__(f"launch of {spec.vm_id} ({spec.instance_type}) refused: {reason}")
        self.spec = spec
        self.reason = reason


class FleetProvider(Protocol):
    """What the scaler needs from a provider. Every call is idempotent by ``vm_id``."""

    #: ``"skypilot"``, ``"local"`` or ``"simulated"``: recorded with every VM event.
    name: str

    async def launch(self, spec: LaunchSpec) -> VmInfo:
        """Start launching ``spec`` and return at once (status ``launching`` or later).

        Launching a ``vm_id`` the provider already has returns that machine, not a second one.
        Raises :class:`LaunchRefused` when the provider says no.
        """
        ...

    async def stop(self, vm_id: str) -> None:
        """Stop and release the machine (already stopped or unknown: nothing to do)."""
        ...

    async def machines(self) -> Sequence[VmInfo]:
        """Every machine the provider has for us now, in any status but ``stopped``."""
        ...
