"""The scaler on the real servers and a real local farm (no counted workers): the fleet grows
when tasks queue, renders them, and shrinks after idle time through a drain; a scaler that
died between recording a launch and asking for it re-attaches to that machine; a machine
nobody asked for is adopted or stopped; the spend ceiling holds whatever the queue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from libs.eventstore.uow import UnitOfWork
from libs.runtime import ServiceRuntime, build
from services.scaler.farm import FarmQueue
from services.scaler.fleet import FleetRound
from services.scaler.local import LocalFarmProvider
from services.scaler.machines import Vm
from services.scaler.provider import VmInfo, VmStatus
from services.scaler.service import SERVICE
from services.scaler.settings import InstanceSetting, PoolSetting, ScalerSettings, UnknownVms
from tests.conftest import Env
from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, get_job, submit
from tests.waiting import until

PRICE = Decimal("0.10")
LOCAL = InstanceSetting(name="local-cpu", hourly_price_usd=PRICE)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    instance = Farm(tmp_path / "farm", "--frame-seconds", "0.3", workers=0).start()
    yield instance
    instance.stop()
    instance.client.close()


def pool(**changes: Any) -> PoolSetting:
    values: dict[str, Any] = {
        "name": "render",
        "instance_types": (LOCAL,),
        "max_workers": 2,
        "idle_seconds": 1.0,
        "boot_seconds": 3.0,
        "drain_target_seconds": 1.0,
        "task_seconds": 1.0,
    }
    return PoolSetting(**(values | changes))


@pytest.fixture
def scaler_settings(env: Env, farm: Farm) -> ScalerSettings:
    return env.settings(
        ScalerSettings, farm_url=farm.url, tick_seconds=0.2, pools=(pool(),), max_vms=4
    )


async def start(settings: ScalerSettings) -> ServiceRuntime[Any]:
    rt = await build(SERVICE, settings)
    await rt.launch()
    return rt


@pytest.fixture
async def scaler(scaler_settings: ScalerSettings) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await start(scaler_settings)
    yield rt
    await rt.stop()


async def vms(rt: ServiceRuntime[Any]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await rt.pool.fetch(
        "SELECT * FROM scaler.fleet_vms ORDER BY requested_at, vm_id"
    )
    return rows


async def events(rt: ServiceRuntime[Any], vm_id: str) -> list[tuple[str, dict[str, Any]]]:
    stream = await rt.store.read_stream(Vm.stream_id_for(vm_id))
    return [(e.event_type, e.data) for e in stream]


def named(farm: Farm) -> list[str]:
    return sorted(w["name"] for w in farm.client.get("/_farm/workers").json()["named"])


async def test_the_fleet_grows_for_queued_tasks_renders_them_and_drains_then_stops_when_idle(
    scaler: ServiceRuntime[Any], farm: Farm, tmp_path: Path
) -> None:
    assert await vms(scaler) == [] and named(farm) == []
    job = submit(farm, blender_job("grow", "1-8", tmp_path / "out", Pool="render"))

    async def two_busy() -> bool:
        return [r["phase"] for r in await vms(scaler)].count("busy") == 2

    await until(two_busy, "two machines rendering", timeout=60)
    await until(lambda: _completed(farm, job), "the job rendered", timeout=60)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"frame_{f:04d}.png" for f in range(1, 9)
    ]

    async def all_stopped() -> list[asyncpg.Record] | None:
        rows = await vms(scaler)
        return rows if rows and all(r["phase"] == "stopped" for r in rows) else None

    rows = await until(all_stopped, "the idle fleet stopped", timeout=60)
    assert len(rows) == 2 and named(farm) == []
    first = await events(scaler, rows[0]["vm_id"])
    kinds = [t for t, _ in first]
    assert kinds[:3] == ["fleet.VmRequested", "fleet.VmLaunchAccepted", "fleet.VmBooted"]
    assert kinds[-2:] == ["fleet.VmDrainStarted", "fleet.VmStopped"]
    assert first[0][1]["reason"] == "backlog" and first[-2][1]["reason"] == "idle"
    assert first[-1][1]["reason"] == "drained"
    # The decisions, with what they were decided on.
    decisions = [e.data for e in await scaler.store.read_stream("scaling-render")]
    [grow] = [d for d in decisions if any(a["action"] == "launch" for a in d["actions"])][:1]
    assert grow["inputs"]["waiting_tasks"] >= 1 and grow["inputs"]["desired"] >= 1
    assert first[0][1]["decision_id"] == grow["decision_id"]
    assert {"drain", "stop"} <= {a["action"] for d in decisions for a in d["actions"]}
    # Every second from request to stop is boot, idle or busy time, costed at the price.
    for r in rows:
        total = r["boot_seconds"] + r["idle_seconds"] + r["busy_seconds"]
        lived = Decimal((r["ended_at"] - r["requested_at"]).total_seconds())
        assert abs(total - lived) < Decimal("0.01") and r["busy_seconds"] > 0
        assert abs(r["cost_usd"] - total * PRICE / 3600) < Decimal("0.00001")
    usage = await scaler.pool.fetch(
        "SELECT phase, sum(seconds) AS seconds FROM scaler.vm_usage GROUP BY phase"
    )
    by_phase = {u["phase"]: u["seconds"] for u in usage}
    assert by_phase["busy"] == sum(r["busy_seconds"] for r in rows)


async def _completed(farm: Farm, job: str) -> bool:
    return bool(get_job(farm, job)["Stat"] == 3)


async def test_a_scaler_killed_after_recording_a_launch_re_attaches_to_that_machine(
    scaler_settings: ScalerSettings, farm: Farm, tmp_path: Path, env: Env
) -> None:
    # What a scaler killed between recording the launch and asking the farm leaves behind.
    settings = scaler_settings.model_copy(update={"pools": (pool(max_workers=1),)})
    rt = await build(SERVICE, settings)
    uow = UnitOfWork(rt.store, metadata={})
    vm = await uow.get(Vm, "vm_earlier")
    vm.request(
        pool="render",
        provider="local",
        instance_type="local-cpu",
        spot=False,
        region=None,
        hourly_price_usd=PRICE,
        reason="backlog",
        decision_id=None,
        at=datetime.now(UTC),
    )
    await uow.commit()
    job = submit(farm, blender_job("resumed", "1-3", tmp_path / "out", Pool="render"))
    await rt.launch()
    try:
        await until(lambda: _completed(farm, job), "the job rendered", timeout=60)
        rows = await vms(rt)
        assert [r["vm_id"] for r in rows] == ["vm_earlier"]  # no second machine
        kinds = [t for t, _ in await events(rt, "vm_earlier")]
        assert kinds[:3] == ["fleet.VmRequested", "fleet.VmLaunchAccepted", "fleet.VmBooted"]
    finally:
        await rt.stop()


@pytest.mark.parametrize("setting", [UnknownVms.adopt, UnknownVms.stop])
async def test_a_machine_nobody_asked_for_is_adopted_or_stopped_per_setting(
    scaler_settings: ScalerSettings, farm: Farm, setting: UnknownVms
) -> None:
    started = farm.client.put("/_farm/workers/local-vm_stray", json={"pools": ["render"]})
    assert started.status_code == 200, started.text
    settings = scaler_settings.model_copy(
        update={"unknown_vms": setting, "pools": (pool(idle_seconds=30.0),)}
    )
    rt = await start(settings)
    try:

        async def seen() -> list[asyncpg.Record] | None:
            rows = await vms(rt)
            wanted = "idle" if setting is UnknownVms.adopt else "stopped"
            return rows if rows and rows[0]["phase"] == wanted else None

        [row] = await until(seen, f"the stray machine {setting.value}", timeout=30)
        assert row["vm_id"] == "vm_stray" and row["reason"] in ("adopted", "unknown_vm")
        kinds = [t for t, _ in await events(rt, "vm_stray")]
        assert kinds[0] == "fleet.VmAdopted"
        if setting is UnknownVms.stop:
            assert kinds[-1] == "fleet.VmStopped"
            await until(lambda: _none_named(farm), "the stray worker stopped", timeout=30)
        else:
            assert named(farm) == ["local-vm_stray"]
    finally:
        await rt.stop()


async def _none_named(farm: Farm) -> bool:
    return named(farm) == []


async def test_the_spend_ceiling_holds_however_long_the_queue(
    scaler_settings: ScalerSettings, farm: Farm, tmp_path: Path
) -> None:
    settings = scaler_settings.model_copy(
        update={
            "pools": (pool(max_workers=5, idle_seconds=30.0),),
            "max_spend_per_hour_usd": Decimal("0.25"),  # two machines at 0.10 an hour
        }
    )
    submit(farm, blender_job("wide", "1-40", tmp_path / "out", Pool="render"))
    rt = await start(settings)
    try:

        async def two_up() -> bool:
            return [r["phase"] for r in await vms(rt)].count("busy") == 2

        await until(two_up, "two machines rendering", timeout=60)
        for _ in range(10):  # rounds go on; the queue is still long
            await until(partial(_after, rt, rt.wired.rounds + 1), "another round", timeout=10)
            assert len(await vms(rt)) == 2
    finally:
        await rt.stop()


async def _after(rt: ServiceRuntime[Any], rounds: int) -> bool:
    return bool(rt.wired.rounds >= rounds)


def render_and_test_pools() -> tuple[PoolSetting, PoolSetting]:
    return (
        pool(max_workers=1, idle_seconds=30.0),
        pool(name="test", max_workers=2, test_renders=True, priority=0, idle_seconds=1.0),
    )


async def test_a_test_render_on_a_busy_farm_gets_a_machine_of_its_own_at_once(
    scaler_settings: ScalerSettings, farm: Farm, tmp_path: Path
) -> None:
    settings = scaler_settings.model_copy(update={"pools": render_and_test_pools()})
    rt = await start(settings)
    try:
        full = submit(farm, blender_job("full", "1-60", tmp_path / "full", Pool="render"))

        async def rendering() -> bool:
            return [r["phase"] for r in await vms(rt)] == ["busy"]

        await until(rendering, "the full render's machine busy", timeout=60)
        test = submit(farm, blender_job("test", "5", tmp_path / "test", Pool="test", Priority=100))
        await until(lambda: _completed(farm, test), "the test frame rendered", timeout=60)
        assert get_job(farm, full)["Stat"] != 3  # long before the full render ends
        rows = await vms(rt)
        [for_test] = [r for r in rows if r["pool"] == "test"]
        kinds = await events(rt, for_test["vm_id"])
        assert kinds[0][1]["reason"] == "deadline"
        frames = sorted(p.name for p in (tmp_path / "test").iterdir())
        assert frames == ["frame_0005.png"]
    finally:
        await rt.stop()


async def test_a_standby_machine_waits_for_test_renders_and_never_takes_a_full_render(
    scaler_settings: ScalerSettings, farm: Farm, tmp_path: Path
) -> None:
    render, test = render_and_test_pools()
    pools = (render.model_copy(update={"max_workers": 0}), test.model_copy(update={"standby": 1}))
    rt = await start(scaler_settings.model_copy(update={"pools": pools}))
    try:

        async def standby_up() -> asyncpg.Record | None:
            rows = await vms(rt)
            return rows[0] if [r["phase"] for r in rows] == ["idle"] else None

        row = await until(standby_up, "the standby machine up", timeout=60)
        assert row["pool"] == "test"
        assert (await events(rt, row["vm_id"]))[0][1]["reason"] == "standby"
        full = submit(farm, blender_job("full", "1-2", tmp_path / "full", Pool="none"))
        for _ in range(10):  # rounds pass, idle seconds pass: it stays, idle
            await until(partial(_after, rt, rt.wired.rounds + 1), "another round", timeout=10)
        assert [r["phase"] for r in await vms(rt)] == ["idle"]
        assert get_job(farm, full)["CompletedChunks"] == 0
        test_job = submit(farm, blender_job("test", "1", tmp_path / "t", Pool="test"))
        await until(lambda: _completed(farm, test_job), "the test frame rendered", timeout=30)
    finally:
        await rt.stop()


class SpotCloud(LocalFarmProvider):
    """The cloud's side of spot machines, on the local farm: a machine taken back stops (its
    worker goes, the farm requeues its task) and is reported ``preempted`` from then on."""

    def __init__(self, client: httpx.AsyncClient, hourly_price_usd: Decimal) -> None:
        super().__init__(client, hourly_price_usd)
        self.taken: set[str] = set()

    async def take_back(self, vm_id: str) -> None:
        await self.stop(vm_id)
        self.taken.add(vm_id)

    async def machines(self) -> Sequence[VmInfo]:
        up = list(await super().machines())
        gone = [
            VmInfo(
                vm_id=vm_id,
                pool="render",
                instance_type=self.instance_type,
                spot=True,
                status=VmStatus.preempted,
                worker_name=None,
                hourly_price_usd=self.hourly_price_usd,
                request_id=None,
                launched_at=datetime.now(UTC),
                reason="spot interruption",
            )
            for vm_id in sorted(self.taken)
        ]
        return up + gone


async def test_a_preempted_machines_task_is_requeued_and_the_job_finishes_on_another(
    scaler_settings: ScalerSettings, farm: Farm, tmp_path: Path
) -> None:
    settings = scaler_settings.model_copy(update={"pools": (pool(max_workers=1),)})
    # The service's own rounds find no farm (and record nothing); they are driven here,
    # with the spot cloud. The service keeps the read models.
    away = settings.model_copy(update={"farm_url": "http://127.0.0.1:9", "tick_seconds": 3600.0})
    rt = await build(SERVICE, away)
    await rt.launch()
    async with httpx.AsyncClient(base_url=farm.url, timeout=30) as client:
        cloud = SpotCloud(client, PRICE)

        async def recorded_live() -> set[str]:
            return set()

        fleet = FleetRound(rt.store, cloud, FarmQueue(client), settings, recorded_live)
        try:
            job = submit(farm, blender_job("spot", "1-6", tmp_path / "out", Pool="render"))

            async def rendering() -> str | None:
                await fleet.run_once()
                busy = [
                    w["Name"]
                    for w in farm.client.get("/api/slaves", params={"Data": "info"}).json()
                    if w["Stat"] == 1
                ]
                return busy[0].removeprefix("local-") if busy else None

            first = await until(rendering, "a machine rendering", timeout=60)
            await cloud.take_back(first)

            async def finished() -> bool:
                await fleet.run_once()
                return await _completed(farm, job)

            await until(finished, "the job finished on another machine", timeout=90)
            kinds = [t for t, _ in await events(rt, first)]
            assert kinds[-1] == "fleet.VmPreempted"
            history = farm.client.get("/api/jobreports", params={"JobID": job, "Data": "requeue"})
            assert history.status_code == 200 and history.json(), history.text
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
                f"frame_{f:04d}.png" for f in range(1, 7)
            ]
            machines = {r["vm_id"]: r["phase"] for r in await vms(rt)}
            assert machines[first] == "preempted" and len(machines) == 2
        finally:
            await rt.stop()


async def test_a_job_finishes_across_a_scale_in(
    scaler: ServiceRuntime[Any], farm: Farm, tmp_path: Path
) -> None:
    long = submit(farm, blender_job("long", "1-40", tmp_path / "long", Pool="render", ChunkSize=40))
    short = submit(
        farm, blender_job("short", "1-2", tmp_path / "short", Pool="render", ChunkSize=2)
    )

    async def two_busy() -> bool:
        return [r["phase"] for r in await vms(scaler)].count("busy") == 2

    await until(two_busy, "a machine for each job", timeout=60)
    await until(lambda: _completed(farm, short), "the short job rendered", timeout=60)

    async def scaled_in() -> bool:
        return [r["phase"] for r in await vms(scaler)].count("stopped") == 1

    await until(scaled_in, "the idle machine drained and stopped", timeout=30)
    assert get_job(farm, long)["Stat"] != 3  # still rendering on the machine kept
    await until(lambda: _completed(farm, long), "the long job rendered", timeout=90)
    frames = sorted(p.name for p in (tmp_path / "long").iterdir())
    assert frames == [f"frame_{f:04d}.png" for f in range(1, 41)]

    async def kept_idle() -> asyncpg.Record | None:
        kept = [r for r in await vms(scaler) if r["phase"] != "stopped"]
        return kept[0] if [r["phase"] for r in kept] == ["idle"] else None

    kept = await until(kept_idle, "the kept machine idle", timeout=30)
    assert kept["busy_seconds"] > 10  # it rendered the long job: 40 frames of 0.3 s
