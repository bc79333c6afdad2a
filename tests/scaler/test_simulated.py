"""The simulated provider: the FleetProvider port on a clock the caller moves."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.scaler.domain import InstanceOption
from services.scaler.provider import FleetProvider, LaunchRefused, LaunchSpec, VmStatus
from services.scaler.simulated import SimulatedProvider, fixed_boot

TYPES = (InstanceOption("c6i.16xlarge", Decimal("2.72"), Decimal("1.09")),)


def spec(vm_id: str = "rw-full-00001", spot: bool = False) -> LaunchSpec:
    return LaunchSpec(vm_id, "full", "c6i.16xlarge", spot)


def test_it_is_a_fleet_provider() -> None:
    provider: FleetProvider = SimulatedProvider(TYPES)
    assert provider.name == "simulated"


async def test_launch_is_idempotent_by_vm_id() -> None:
    provider = SimulatedProvider(TYPES)
    first = await provider.launch(spec())
    again = await provider.launch(spec())
    assert again == first
    assert [m.vm_id for m in await provider.machines()] == ["rw-full-00001"]


async def test_a_machine_boots_after_the_drawn_time() -> None:
    provider = SimulatedProvider(TYPES, boot_seconds=fixed_boot(90.0))
    info = await provider.launch(spec())
    assert info.status is VmStatus.launching
    assert provider.next_change() == 90.0
    assert provider.advance(89.0) == []
    [booted] = provider.advance(90.0)
    assert (booted.status, booted.worker_name) == (VmStatus.running, "rw-full-00001")


async def test_spot_machines_are_preempted_and_billing_ends_there() -> None:
    provider = SimulatedProvider(TYPES, boot_seconds=fixed_boot(60.0), spot_preemptions_per_hour=1)
    await provider.launch(spec(spot=True))
    await provider.launch(spec("rw-full-00002", spot=False))
    changed = provider.advance(1_000_000.0)
    assert [(m.vm_id, m.status) for m in changed if m.status is VmStatus.preempted] == [
        ("rw-full-00001", VmStatus.preempted)
    ]
    [spot] = [m for m in await provider.machines() if m.spot]
    assert spot.hourly_price_usd == Decimal("1.09")
    on_demand = Decimal("2.72") * 1_000_000 / 3600
    assert on_demand < provider.spent_usd() < on_demand + Decimal("1.09") * 1_000_000 / 3600


async def test_refusals_are_reported_and_a_stop_releases() -> None:
    provider = SimulatedProvider(TYPES)
    provider.unavailable.add("c6i.16xlarge")
    with pytest.raises(LaunchRefused) as refused:
        await provider.launch(spec())
    assert refused.value.spec == spec()
    assert "InsufficientInstanceCapacity" in refused.value.reason
    always = SimulatedProvider(TYPES, refusal_probability=1.0)
    with pytest.raises(LaunchRefused):
        await always.launch(spec())
    provider.unavailable.clear()
    await provider.launch(spec())
    provider.advance(3600.0)
    await provider.stop("rw-full-00001")
    await provider.stop("rw-full-00001")
    await provider.stop("unknown")
    assert await provider.machines() == []
    assert provider.spent_usd() == Decimal("2.72")


async def test_the_same_seed_draws_the_same_cloud() -> None:
    def boots(seed: int) -> list[float]:
        p = SimulatedProvider(TYPES, seed=seed, boot_seconds=lambda rng: rng.uniform(60, 200))
        return [p.boot_seconds(p.rng) for _ in range(3)]

    assert boots(1) == boots(1) != boots(2)


async def test_a_placement_failing_late_accepts_the_launch_then_fails_it() -> None:
    provider = SimulatedProvider(TYPES, boot_seconds=fixed_boot(90.0))
    provider.failing["c6i.16xlarge@us-east-1"] = 30.0
    east = LaunchSpec("rw-full-00001", "full", "c6i.16xlarge", False, "us-east-1")
    assert (await provider.launch(east)).status is VmStatus.launching
    await provider.launch(spec("rw-full-00002"))  # no region: another placement, it boots
    assert provider.next_change() == 30.0
    [failed] = provider.advance(30.0)
    assert (failed.vm_id, failed.status) == ("rw-full-00001", VmStatus.failed)
    assert failed.reason and "InsufficientInstanceCapacity" in failed.reason
    [booted] = provider.advance(90.0)
    assert (booted.vm_id, booted.status) == ("rw-full-00002", VmStatus.running)
    await provider.stop("rw-full-00001")
    assert [m.vm_id for m in await provider.machines()] == ["rw-full-00002"]
    assert provider.spent_usd() == Decimal("2.72") * 90 / 3600  # the failed one: no machine ran
