"""The scaler's policy (``services.scaler.domain.decide``), as specifications."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from services.scaler.domain import (
    TEST_RENDER_SLA_SECONDS,
    FleetLimits,
    InstanceOption,
    PoolPolicy,
    PoolQueue,
    QueuedWork,
    Reason,
    RunningTask,
    Worker,
    WorkerStatus,
    affordable_tasks,
    decide,
    launch_failed,
    launch_succeeded,
)

NOW = 10_000.0
SMALL = InstanceOption("c6i.8xlarge", Decimal("1.36"))
BIG = InstanceOption("c6i.16xlarge", Decimal("2.72"), Decimal("1.09"))
BIG_OLD = InstanceOption("c5.18xlarge", Decimal("3.06"), Decimal("1.22"))
TEST_POOL = PoolPolicy("test", (SMALL,), max_workers=5, standby=1, priority=0)
FULL_POOL = PoolPolicy("full", (BIG, BIG_OLD), max_workers=20, spot=True)
LIMITS = FleetLimits(max_vms=100, max_spend_per_hour_usd=Decimal("1000"))


def worker(
    vm_id: str,
    status: WorkerStatus,
    pool: str = "full",
    idle_since: float | None = None,
    price: str = "1.09",
) -> Worker:
    return Worker(vm_id, pool, status, "c6i.16xlarge", True, Decimal(price), 0.0, idle_since)


def queued_test_render(
    tasks: int = 3, task_seconds: float = 60.0, requested: float = NOW
) -> QueuedWork:
    return QueuedWork(
        "job-t", tasks, task_seconds, requested + TEST_RENDER_SLA_SECONDS, test_render=True
    )


def test_a_queued_test_render_launches_enough_workers_to_meet_its_sla() -> None:
    # 3 frames of 200 s: a new worker is free after 180 s, so 420 s hold 2 frames: 2 workers.
    queues = {"test": PoolQueue(waiting=(queued_test_render(3, 200.0),))}
    d = decide(NOW, [replace(TEST_POOL, standby=0)], LIMITS, queues, [])
    assert [x.reason for x in d.launches] == [Reason.deadline, Reason.deadline]
    assert d.sizing("test").deadline_need == 2


def test_an_idle_worker_counts_before_a_new_one() -> None:
    queues = {"test": PoolQueue(waiting=(queued_test_render(3, 60.0),))}
    idle = worker("vm-1", WorkerStatus.idle, "test", idle_since=NOW)
    d = decide(NOW, [replace(TEST_POOL, standby=0)], LIMITS, queues, [idle])
    assert d.launches == ()
    assert d.sizing("test").deadline_need == 1


def test_a_deadline_no_worker_can_make_gets_a_new_worker_per_task() -> None:
    late = queued_test_render(2, 60.0, requested=NOW - 590.0)  # 10 s left, a boot takes 180 s
    d = decide(NOW, [replace(TEST_POOL, standby=0)], LIMITS, {"test": PoolQueue((late,))}, [])
    assert len(d.launches) == 2


def test_a_full_render_backlog_scales_out_to_drain_in_the_target_time() -> None:
    backlog = QueuedWork("job-f", 100, 1800.0)  # 50 worker-hours, drained in 2 h: 25 workers
    policy = replace(FULL_POOL, drain_target_seconds=7200.0, max_workers=40)
    d = decide(NOW, [policy], LIMITS, {"full": PoolQueue((backlog,))}, [])
    assert len(d.launches) == 25
    assert {x.reason for x in d.launches} == {Reason.backlog}


def test_never_more_workers_than_tasks() -> None:
    d = decide(NOW, [FULL_POOL], LIMITS, {"full": PoolQueue((QueuedWork("j", 2, 90_000.0),))}, [])
    assert len(d.launches) == 2


def test_the_pool_maximum_holds_and_says_so() -> None:
    backlog = QueuedWork("job-f", 100, 3600.0)
    d = decide(NOW, [FULL_POOL], LIMITS, {"full": PoolQueue((backlog,))}, [])
    assert len(d.launches) == FULL_POOL.max_workers
    assert [(h.reason, h.count) for h in d.held] == [(Reason.pool_max, 100 - 20)]


def test_the_fleet_ceiling_holds_across_pools_and_test_renders_go_first() -> None:
    limits = FleetLimits(max_vms=3, max_spend_per_hour_usd=Decimal("1000"))
    queues = {
        "full": PoolQueue((QueuedWork("job-f", 10, 3600.0),)),
        "test": PoolQueue((queued_test_render(3, 200.0),)),
    }
    running = [worker("vm-1", WorkerStatus.busy)]
    d = decide(NOW, [FULL_POOL, replace(TEST_POOL, standby=0)], limits, queues, running)
    assert [x.pool for x in d.launches] == ["test", "test"]
    assert d.live_vms == 3
    assert {h.reason for h in d.held} == {Reason.fleet_max}


def test_the_spend_ceiling_counts_every_live_vm() -> None:
    limits = FleetLimits(max_vms=100, max_spend_per_hour_usd=Decimal("5.00"))
    live = [worker("vm-1", WorkerStatus.busy), worker("vm-2", WorkerStatus.draining)]
    d = decide(NOW, [FULL_POOL], limits, {"full": PoolQueue((QueuedWork("j", 10, 3600.0),))}, live)
    # 2 x 1.09 live, 2 more at 1.09 = 4.36 <= 5.00; a third would be 5.45.
    assert len(d.launches) == 2
    assert d.spend_per_hour_usd == Decimal("4.36")
    assert any(h.reason is Reason.spend_ceiling for h in d.held)


def test_the_standby_floor_is_kept_with_nothing_queued() -> None:
    d = decide(NOW, [TEST_POOL], LIMITS, {}, [])
    assert [x.reason for x in d.launches] == [Reason.standby]
    idle = worker("vm-1", WorkerStatus.idle, "test", idle_since=0.0)
    assert decide(NOW, [TEST_POOL], LIMITS, {}, [idle]).drains == ()


def test_the_minimum_is_kept() -> None:
    d = decide(NOW, [replace(FULL_POOL, min_workers=2)], LIMITS, {}, [])
    assert [x.reason for x in d.launches] == [Reason.min_workers] * 2


def test_scale_in_only_after_the_idle_time_and_only_idle_workers() -> None:
    fleet = [
        worker("vm-new", WorkerStatus.idle, idle_since=NOW - 100.0),
        worker("vm-old", WorkerStatus.idle, idle_since=NOW - 400.0),
        worker("vm-busy", WorkerStatus.busy),
        worker("vm-boot", WorkerStatus.booting),
    ]
    d = decide(NOW, [FULL_POOL], LIMITS, {}, fleet)
    assert [(x.vm_id, x.reason) for x in d.drains] == [("vm-old", Reason.idle)]
    assert d.stops == ()


def test_a_worker_is_drained_before_it_is_stopped() -> None:
    idle = worker("vm-1", WorkerStatus.idle, idle_since=0.0)
    first = decide(NOW, [FULL_POOL], LIMITS, {}, [idle])
    assert [x.vm_id for x in first.drains] == ["vm-1"] and first.stops == ()
    drained = replace(idle, status=WorkerStatus.drained)
    second = decide(NOW, [FULL_POOL], LIMITS, {}, [drained])
    assert [(x.vm_id, x.reason) for x in second.stops] == [("vm-1", Reason.drained)]


def test_a_busy_or_draining_worker_is_never_stopped_a_preempted_one_is() -> None:
    fleet = [
        worker("vm-busy", WorkerStatus.busy),
        worker("vm-draining", WorkerStatus.draining),
        worker("vm-spot", WorkerStatus.preempted),
    ]
    running = (RunningTask("task-1", "vm-busy", 600.0), RunningTask("task-2", "vm-draining", 60.0))
    d = decide(NOW, [FULL_POOL], LIMITS, {"full": PoolQueue(running=running)}, fleet)
    assert [(x.vm_id, x.reason) for x in d.stops] == [("vm-spot", Reason.preempted)]
    assert d.drains == ()


def test_a_draining_worker_is_taken_back_before_a_new_one_is_launched() -> None:
    fleet = [worker("vm-1", WorkerStatus.draining)]
    queues = {"full": PoolQueue((QueuedWork("j", 2, 3600.0),), (RunningTask("t", "vm-1", 60.0),))}
    d = decide(NOW, [FULL_POOL], LIMITS, queues, fleet)
    assert [(x.vm_id, x.reason) for x in d.resumes] == [("vm-1", Reason.demand_returned)]
    assert len(d.launches) == 2  # 3 tasks: the resumed worker and two new ones


def test_a_refusing_type_is_backed_off_exponentially_and_the_next_type_tried() -> None:
    queues = {"full": PoolQueue((QueuedWork("j", 1, 3600.0),))}
    backoffs = launch_failed({}, "full", BIG.name, NOW, "InsufficientInstanceCapacity")
    assert backoffs[("full", BIG.name)].until == NOW + 60.0
    d = decide(NOW, [FULL_POOL], LIMITS, queues, [], backoffs)
    assert [x.instance_type for x in d.launches] == [BIG_OLD.name]
    again = launch_failed(backoffs, "full", BIG.name, NOW + 60.0, "again")
    assert again[("full", BIG.name)].until == NOW + 60.0 + 120.0
    later = decide(NOW + 60.0, [FULL_POOL], LIMITS, queues, [], backoffs)
    assert [x.instance_type for x in later.launches] == [BIG.name]
    assert launch_succeeded(again, "full", BIG.name) == {}


def test_a_type_refused_in_one_region_is_tried_in_the_next_configured_region() -> None:
    east = InstanceOption("c6i.16xlarge", Decimal("2.72"), region="us-east-1")
    west = InstanceOption("c6i.16xlarge", Decimal("2.90"), region="us-west-2")
    pool = PoolPolicy("full", (east, west), max_workers=5)
    queues = {"full": PoolQueue((QueuedWork("j", 1, 3600.0),))}
    [first] = decide(NOW, [pool], LIMITS, queues, []).launches
    assert (first.region, first.spec("vm_1").region) == ("us-east-1", "us-east-1")
    backoffs = launch_failed({}, "full", first.placement, NOW, "InsufficientInstanceCapacity")
    [second] = decide(NOW, [pool], LIMITS, queues, [], backoffs).launches
    assert (second.instance_type, second.region) == ("c6i.16xlarge", "us-west-2")
    assert second.hourly_price_usd == Decimal("2.90")


def test_a_machine_failing_after_its_launch_backs_off_like_a_refusal_once_per_failure() -> None:
    # SkyPilot accepts a launch and reports the capacity failure later: the machine asked at
    # NOW fails at NOW + 40 and backs its placement off from there.
    queues = {"full": PoolQueue((QueuedWork("j", 1, 3600.0),))}
    failed = launch_failed({}, "full", BIG.name, NOW + 40.0, "InsufficientInstanceCapacity", NOW)
    assert failed[("full", BIG.name)].until == NOW + 40.0 + 60.0
    [fallback] = decide(NOW + 40.0, [FULL_POOL], LIMITS, queues, [], failed).launches
    assert fallback.instance_type == BIG_OLD.name
    # Others asked with it (before the back-off began) fail too: the same failure, once.
    same = launch_failed(failed, "full", BIG.name, NOW + 45.0, "again", NOW + 10.0)
    assert same == failed
    # Waited out, asked again, failed again: the delay doubles.
    [retried] = decide(NOW + 100.0, [FULL_POOL], LIMITS, queues, [], failed).launches
    assert retried.instance_type == BIG.name
    twice = launch_failed(failed, "full", BIG.name, NOW + 130.0, "again", NOW + 100.0)
    assert (twice[("full", BIG.name)].failures, twice[("full", BIG.name)].until) == (
        2,
        NOW + 130.0 + 120.0,
    )
    # A machine of that placement up: trusted again.
    assert launch_succeeded(twice, "full", BIG.name) == {}


def test_every_type_backed_off_holds_the_launch() -> None:
    backoffs = launch_failed({}, "full", BIG.name, NOW, "quota")
    backoffs = launch_failed(backoffs, "full", BIG_OLD.name, NOW, "quota")
    queues = {"full": PoolQueue((QueuedWork("j", 1, 3600.0),))}
    d = decide(NOW, [FULL_POOL], LIMITS, queues, [], backoffs)
    assert d.launches == ()
    assert [(h.reason, h.count) for h in d.held] == [(Reason.backed_off, 1)]


def test_spot_only_where_the_pool_allows_it_and_at_the_spot_price() -> None:
    queues = {
        "full": PoolQueue((QueuedWork("f", 1, 3600.0),)),
        "test": PoolQueue((queued_test_render(1),)),
    }
    on_demand_big = replace(TEST_POOL, instance_types=(BIG,), standby=0)
    d = decide(NOW, [FULL_POOL, on_demand_big], LIMITS, queues, [])
    got = {x.pool: (x.spot, x.hourly_price_usd) for x in d.launches}
    assert got == {"full": (True, Decimal("1.09")), "test": (False, Decimal("2.72"))}


def test_a_decision_states_its_reason_and_inputs() -> None:
    queues = {"test": PoolQueue((queued_test_render(3, 200.0),))}
    d = decide(NOW, [TEST_POOL], LIMITS, queues, [])
    launch = d.launches[0]
    assert launch.reason is Reason.deadline
    assert launch.inputs["waiting_tasks"] == 3
    assert launch.inputs["deadline_need"] == 2
    assert launch.inputs["desired"] == 3  # two for the SLA, one standby
    assert launch.inputs["max_spend_per_hour_usd"] == "1000"
    spec = launch.spec("rw-test-00001")
    assert (spec.vm_id, spec.pool, spec.instance_type, spec.spot) == (
        "rw-test-00001",
        "test",
        SMALL.name,
        False,
    )


def test_a_jobs_budget_pays_for_so_many_more_tasks_at_its_cost_per_task_so_far() -> None:
    # 4 tasks cost 2.00: 0.50 each; a cap of 5.00 leaves 3.00, six tasks more.
    assert affordable_tasks(Decimal("5.00"), Decimal("2.00"), 4, None, None) == 6
    # Before any task: the estimate's expected cost per task (12.00 over 24 tasks).
    assert affordable_tasks(Decimal("3.00"), Decimal("0"), 0, Decimal("12.00"), 24) == 6
    # At its cap: nothing more; no cap, or nothing to price a task by: the budget does not bind.
    assert affordable_tasks(Decimal("2.00"), Decimal("2.00"), 4, None, None) == 0
    assert affordable_tasks(None, Decimal("2.00"), 4, None, None) is None
    assert affordable_tasks(Decimal("9.00"), Decimal("0"), 0, None, None) is None
