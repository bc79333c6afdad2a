"""A launch the provider accepts and whose machine then fails before it is ever up (how
SkyPilot reports no capacity or no quota) backs off that (pool, instance type, region) as a
refused launch does: the scaler's rounds, on a simulated cloud whose launches fail after a
delay and a real local farm with a queued job, launch the next placement, hold while every
placement is backed off, and try the first again once its back-off is waited out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.fleet import VmPhase
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.uow import UnitOfWork
from services.scaler.domain import InstanceOption
from services.scaler.farm import FarmQueue
from services.scaler.fleet import FleetRound
from services.scaler.machines import PoolScaling, Vm
from services.scaler.settings import InstanceSetting, PoolSetting, ScalerSettings
from services.scaler.simulated import EPOCH, SimulatedProvider, fixed_boot
from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, submit

PRICE = Decimal("2.72")
EAST = "c6i.16xlarge@us-east-1"
WEST = "c6i.16xlarge@us-west-2"


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    instance = Farm(tmp_path / "farm", workers=0).start()
    yield instance
    instance.stop()
    instance.client.close()


@pytest.fixture
async def client(farm: Farm) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=farm.url, timeout=15) as c:
        yield c


async def nothing_recorded() -> set[str]:
    return set()


class Rounds:
    """The scaler's rounds at chosen times on the simulated cloud's clock."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        regions = ("us-east-1", "us-west-2")
        options = [
            InstanceSetting(name="c6i.16xlarge", hourly_price_usd=PRICE, region=r) for r in regions
        ]
        pool = PoolSetting(
            name="render",
            instance_types=tuple(options),
            max_workers=1,
            boot_seconds=120.0,
            drain_target_seconds=1.0,
            task_seconds=1.0,
        )
        self.settings = ScalerSettings(pools=(pool,), max_vms=4)
        self.cloud = SimulatedProvider(
            [InstanceOption("c6i.16xlarge", PRICE)], boot_seconds=fixed_boot(120.0)
        )
        self.store = InMemoryEventStore()
        self.fleet = FleetRound(
            self.store,
            self.cloud,
            FarmQueue(client),
            self.settings,
            nothing_recorded,
            clock=lambda: EPOCH + timedelta(seconds=self.cloud.now),
        )

    async def at(self, t: float) -> None:
        self.cloud.advance(t)
        await self.fleet.run_once()

    async def vms(self) -> list[Vm]:
        """Every machine recorded, in the order they were asked for."""
        recorded = await self.store.read_by_position(0, 10_000)
        ids = [e.data["vm_id"] for e in recorded if e.event_type == "fleet.VmRequested"]
        uow = UnitOfWork(self.store, metadata={})
        return [await uow.get(Vm, vm_id) for vm_id in ids]

    async def decisions(self) -> list[dict[str, Any]]:
        return [e.data for e in await self.store.read_stream(PoolScaling.stream_id_for("render"))]


def where(vm: Vm) -> str:
    return f"{vm.instance_type}@{vm.region}"


async def test_a_machine_failing_before_it_is_up_backs_off_its_placement_and_falls_back(
    client: httpx.AsyncClient, farm: Farm, tmp_path: Path
) -> None:
    submit(farm, blender_job("queued", "1", tmp_path / "out", Pool="render"))
    rounds = Rounds(client)
    rounds.cloud.failing = {EAST: 30.0, WEST: 10.0}  # accepted, then no capacity

    await rounds.at(0.0)
    [first] = await rounds.vms()
    assert (where(first), first.phase) == (EAST, VmPhase.requested)
    assert first.request_id  # the cloud accepted the launch

    await rounds.at(30.0)  # east failed: backed off 60 s; the round launches in the west
    first_failed, second = await rounds.vms()
    assert first_failed.phase is VmPhase.failed
    assert first_failed.reason is not None and "InsufficientInstanceCapacity" in first_failed.reason
    assert where(second) == WEST and second.phase is VmPhase.requested

    await rounds.at(40.0)  # west failed too: every placement backed off, nothing launched
    await rounds.at(60.0)
    assert [(where(v), v.phase) for v in await rounds.vms()] == [
        (EAST, VmPhase.failed),
        (WEST, VmPhase.failed),
    ]
    held = (await rounds.decisions())[-1]
    assert held["held"] == [{"count": 1, "reason": "backed_off"}]
    assert held["actions"] == []

    rounds.cloud.failing.clear()
    await rounds.at(90.0)  # east's back-off waited out: asked there again
    *_, third = await rounds.vms()
    assert (where(third), third.phase) == (EAST, VmPhase.requested)
    launch = (await rounds.decisions())[-1]
    assert [(a["action"], a["vm_id"], a["reason"]) for a in launch["actions"]] == [
        ("launch", third.key, "backlog")
    ]
    assert launch["inputs"]["backed_off"] == WEST  # the west still backed off
