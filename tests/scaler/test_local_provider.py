"""The local provider and the farm reader against a real local farm (``python -m deploy.farm
serve``, no counted workers): machines are named workers that really render."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.scaler.farm import FarmQueue, PoolQueue, WorkerStatus
from services.scaler.local import LocalFarmProvider
from services.scaler.provider import FleetProvider, LaunchRefused, LaunchSpec, VmStatus
from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, get_job, get_tasks, reports, submit
from tests.waiting import until

PRICE = Decimal("0.0125")


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    instance = Farm(tmp_path / "farm", "--frame-seconds", "0.2", workers=0).start()
    yield instance
    instance.stop()
    instance.client.close()


@pytest.fixture
async def client(farm: Farm) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=farm.url, timeout=30) as http:
        yield http


def spec(vm_id: str, pool: str = "render", **changes: str | bool) -> LaunchSpec:
    return LaunchSpec(
        vm_id=vm_id,
        pool=pool,
        instance_type=str(changes.get("instance_type", "local-cpu")),
        spot=bool(changes.get("spot", False)),
    )


async def test_a_launched_machine_renders_the_queued_job(
    farm: Farm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider: FleetProvider = LocalFarmProvider(client, PRICE)
    assert provider.name == "local"
    queue = FarmQueue(client)
    job_id = submit(farm, blender_job("grow", "1-4", tmp_path / "out", Pool="render"))
    assert (await queue.snapshot()).pools == {"render": PoolQueue("render", 4, 0)}
    assert await provider.machines() == []

    launched = await provider.launch(spec("vm1"))
    assert launched.status in (VmStatus.launching, VmStatus.running)

    async def running() -> bool:
        return [m.status for m in await provider.machines()] == [VmStatus.running]

    await until(running, "the machine running")
    await until(lambda: _completed(farm, job_id), "the job rendered", timeout=30)
    assert {t["Slave"] for t in get_tasks(farm, job_id)} == {"local-vm1"}
    [vm] = await provider.machines()
    assert (vm.vm_id, vm.pool, vm.instance_type, vm.spot) == ("vm1", "render", "local-cpu", False)
    assert (vm.worker_name, vm.hourly_price_usd, vm.request_id) == ("local-vm1", PRICE, None)
    assert vm.launched_at == launched.launched_at
    snapshot = await queue.snapshot()
    assert snapshot.pools == {}
    worker = snapshot.workers["local-vm1"]
    assert (worker.status, worker.pools, worker.job_id) == (WorkerStatus.idle, ("render",), None)


async def _completed(farm: Farm, job_id: str) -> bool:
    return bool(get_job(farm, job_id)["Stat"] == 3)


async def test_launch_is_idempotent_by_vm_id_and_refuses_what_the_farm_lacks(
    farm: Farm, client: httpx.AsyncClient
) -> None:
    provider = LocalFarmProvider(client, PRICE)
    first = await provider.launch(spec("vm1"))
    again = await provider.launch(spec("vm1"))
    assert again.vm_id == first.vm_id and again.launched_at == first.launched_at
    named = farm.client.get("/_farm/workers").json()["named"]
    assert [w["name"] for w in named] == ["local-vm1"]
    assert [m.vm_id for m in await provider.machines()] == ["vm1"]
    for refused in (spec("vm2", instance_type="gpu-xl"), spec("vm2", spot=True), spec("a b")):
        with pytest.raises(LaunchRefused):
            await provider.launch(refused)
    assert [m.vm_id for m in await provider.machines()] == ["vm1"]
    await provider.stop("never-launched")
    await provider.stop("a b")


async def test_drain_then_stop_mid_job_loses_no_task(
    farm: Farm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = LocalFarmProvider(client, PRICE)
    queue = FarmQueue(client)
    await provider.launch(spec("vm1"))
    await provider.launch(spec("vm2"))
    out = tmp_path / "out"
    job_id = submit(farm, blender_job("shrink", "1-12", out, Pool="render", ChunkSize=3))

    async def vm1_renders() -> bool:
        snapshot = await queue.snapshot()
        return snapshot.workers.get("local-vm1") is not None and (
            snapshot.workers["local-vm1"].status == WorkerStatus.rendering
        )

    await until(vm1_renders, "vm1 rendering")
    await queue.drain("local-vm1")
    status = (await queue.snapshot()).workers["local-vm1"].status
    assert status in (WorkerStatus.draining, WorkerStatus.disabled)
    await until(lambda: queue.is_idle("local-vm1"), "vm1 drained")
    await provider.stop("vm1")
    assert [m.vm_id for m in await provider.machines()] == ["vm2"]

    await until(lambda: _completed(farm, job_id), "the job rendered", timeout=30)
    slaves = [t["Slave"] for t in get_tasks(farm, job_id)]
    assert slaves.count("local-vm1") >= 1 and slaves.count("local-vm2") >= 1
    assert reports(farm, job_id, "requeue") == []
    assert len(list(out.glob("frame_*.png"))) == 12
    assert (await queue.snapshot()).workers["local-vm1"].status == WorkerStatus.offline
    await provider.stop("vm1")


async def test_undrain_lets_a_drained_worker_take_work_again(
    farm: Farm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = LocalFarmProvider(client, PRICE)
    queue = FarmQueue(client)
    await provider.launch(spec("vm1"))

    async def up() -> bool:
        return [m.status for m in await provider.machines()] == [VmStatus.running]

    await until(up, "vm1 running")
    await queue.drain("local-vm1")
    assert (await queue.snapshot()).workers["local-vm1"].status == WorkerStatus.disabled
    job_id = submit(farm, blender_job("later", "1-2", tmp_path / "out", Pool="render"))
    assert (await queue.snapshot()).pools["render"].waiting == 2
    await queue.undrain("local-vm1")
    await until(lambda: _completed(farm, job_id), "the job rendered", timeout=30)
    with pytest.raises(LookupError):
        await queue.drain("nobody")


async def test_the_farm_view_has_each_jobs_waiting_tasks_and_measured_task_time(
    farm: Farm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    queue = FarmQueue(client, statistics_seconds=0.0)
    before = time.time()
    # Tasks of 8 frames of 0.2 s: Deadline counts render time in whole seconds.
    job = blender_job("measured", "1-24", tmp_path / "out", Pool="render", ChunkSize=8)
    job_id = submit(farm, job)
    [waiting] = (await queue.snapshot()).jobs
    assert (waiting.job_id, waiting.pool, waiting.waiting, waiting.task_seconds) == (
        job_id,
        "render",
        3,
        None,  # nothing rendered yet: the pool's estimate stands
    )
    assert before - 1 <= waiting.submitted_at <= time.time() + 1
    await LocalFarmProvider(client, PRICE).launch(spec("vm-m"))

    async def measured() -> float | None:
        jobs = (await queue.snapshot()).jobs
        return jobs[0].task_seconds if jobs else None

    seconds = await until(measured, "a measured task time")
    assert 1 <= seconds < 30  # 8 x 0.2 s, plus the worker's own overhead
