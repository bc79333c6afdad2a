"""The farm's queue as the policy sees it: each job's waiting tasks at its measured task
time, test renders due ten minutes after their farm job was submitted, and no more waiting
tasks for a capped job than its budget still pays for. The measured times come from a real
local farm, every job due in one request."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.scaler.domain import TEST_RENDER_SLA_SECONDS
from services.scaler.farm import (
    FarmQueue,
    FarmSnapshot,
    FarmWorker,
    JobQueue,
    PoolQueue,
    WorkerStatus,
)
from services.scaler.fleet import queues_of
from services.scaler.settings import InstanceSetting, PoolSetting
from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, get_job, submit
from tests.waiting import until

LOCAL = (InstanceSetting(name="local-cpu", hourly_price_usd=Decimal("0.10")),)
POOLS = (
    PoolSetting(name="none", instance_types=LOCAL, task_seconds=120),
    PoolSetting(name="test", instance_types=LOCAL, test_renders=True),
)


def snapshot(*jobs: JobQueue, workers: tuple[FarmWorker, ...] = ()) -> FarmSnapshot:
    return FarmSnapshot(
        pools={"none": PoolQueue("none", 0, 0)},
        workers={w.name: w for w in workers},
        jobs=jobs,
    )


def test_each_job_waits_at_its_measured_task_time_or_the_pools_estimate() -> None:
    measured = JobQueue("f1", "none", 10, 0, 1000.0, task_seconds=42.0, batch="job_a")
    fresh = JobQueue("f2", "none", 5, 0, 1001.0, batch="job_b")
    [a, b] = queues_of(snapshot(measured, fresh), POOLS, {})["none"].waiting
    assert (a.job_id, a.tasks, a.task_seconds, a.deadline) == ("f1", 10, 42.0, None)
    assert (b.tasks, b.task_seconds) == (5, 120)


def test_a_test_render_is_due_ten_minutes_after_its_farm_job_was_submitted() -> None:
    test = JobQueue("f3", "test", 1, 0, 5000.0, batch="job_c")
    [work] = queues_of(snapshot(test), POOLS, {})["test"].waiting
    assert work.test_render and work.deadline == 5000.0 + TEST_RENDER_SLA_SECONDS


def test_a_capped_job_counts_only_the_tasks_its_budget_pays_for() -> None:
    rendering = FarmWorker("local-vm1", WorkerStatus.rendering, ("none",), "f1", 3)
    capped = JobQueue("f1", "none", 40, 2, 1000.0, batch="job_a")
    free = JobQueue("f2", "none", 40, 0, 1001.0, batch="job_b")
    queues = queues_of(
        snapshot(capped, free, workers=(rendering,)),
        POOLS,
        {"local-vm1": "vm1"},
        affordable={"job_a": 6},
    )
    [a, b] = queues["none"].waiting
    assert (a.tasks, b.tasks) == (4, 40)  # 6 paid for, 2 of them rendering; job_b uncapped
    at_cap = queues_of(snapshot(capped), POOLS, {}, affordable={"job_a": 1})
    assert at_cap["none"].waiting == ()  # nothing waiting is paid for: no machine for it


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    # Render times are whole seconds (the task's UsedClock): frames of 1.5 s measure as 1.
    instance = Farm(tmp_path / "farm", "--frame-seconds", "1.5", workers=0).start()
    yield instance
    instance.stop()
    instance.client.close()


async def test_every_jobs_task_time_is_measured_in_one_request_per_round(
    farm: Farm, tmp_path: Path
) -> None:
    jobs = []
    for pool in ("a", "b"):  # a worker of its own for each job: both render at once
        started = farm.client.put(f"/_farm/workers/w-{pool}", json={"pools": [pool]})
        assert started.status_code == 200, started.text
        jobs.append(submit(farm, blender_job(pool, "1-30", tmp_path / pool, Pool=pool)))

    async def both_measurable() -> bool:
        return all(get_job(farm, j)["CompletedChunks"] >= 1 for j in jobs)

    await until(both_measurable, "a task of each job completed", timeout=60)
    asked: list[httpx.Request] = []

    async def seen(request: httpx.Request) -> None:
        asked.append(request)

    hooks = {"request": [seen]}
    async with httpx.AsyncClient(base_url=farm.url, timeout=15, event_hooks=hooks) as client:
        queue = FarmQueue(client)
        snapshot = await queue.snapshot()
        measured = {j.job_id: j.task_seconds for j in snapshot.jobs}
        assert set(measured) == set(jobs)
        assert all(t is not None and t > 0 for t in measured.values()), measured
        [details] = [r for r in asked if r.url.params.get("Details") == "true"]
        assert sorted(details.url.params["JobID"].split(",")) == sorted(jobs)
        assert len(asked) == 3  # the active jobs, their details, the workers
        again = await queue.snapshot()  # measured within statistics_seconds: not asked again
        assert {j.job_id: j.task_seconds for j in again.jobs} == measured
        assert len(asked) == 5
