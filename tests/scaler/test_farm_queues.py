"""The farm's queue as the policy sees it: each job's waiting tasks at its measured task
time, test renders due ten minutes after their farm job was submitted, and no more waiting
tasks for a capped job than its budget still pays for."""

from __future__ import annotations

from decimal import Decimal

from services.scaler.domain import TEST_RENDER_SLA_SECONDS
from services.scaler.farm import FarmSnapshot, FarmWorker, JobQueue, PoolQueue, WorkerStatus
from services.scaler.fleet import queues_of
from services.scaler.settings import InstanceSetting, PoolSetting

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
