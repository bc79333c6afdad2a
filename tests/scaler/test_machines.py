"""A render machine's life as the scaler records it: each phase change once, however often
it is seen, and its time and cost exact to the millisecond and the millionth of a dollar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from contracts.fleet import (
    SPAN_EVENTS,
    ScalingAction,
    ScalingHold,
    VmBooted,
    VmEngaged,
    VmIdled,
    VmPhase,
    VmSpanEvent,
    VmStopped,
)
from services.scaler.machines import PHASE_AFTER, PoolScaling, Vm

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
PRICE = Decimal("0.6800")  # c6i.4xlarge on demand, USD per hour


def requested() -> Vm:
    vm = Vm.rehydrate("vm_01", [])
    assert vm.request(
        pool="full",
        provider="simulated",
        instance_type="c6i.4xlarge",
        spot=False,
        region="eu-west-1",
        hourly_price_usd=PRICE,
        reason="backlog",
        decision_id="dec_1",
        at=T0,
    )
    return vm


def test_a_machine_is_requested_once_whatever_asks_again() -> None:
    vm = requested()
    again = vm.request(
        pool="full",
        provider="simulated",
        instance_type="c6i.4xlarge",
        spot=False,
        region=None,
        hourly_price_usd=PRICE,
        reason="backlog",
        decision_id="dec_2",
        at=T0 + timedelta(seconds=5),
    )
    assert not again and len(vm.pending) == 1 and vm.phase is VmPhase.requested


def test_boot_busy_idle_and_stop_each_end_a_span_costed_at_the_machines_price() -> None:
    vm = requested()
    assert vm.booted("vm_01", T0 + timedelta(seconds=45))
    assert vm.worker_seen(busy=True, at=T0 + timedelta(seconds=50))
    assert not vm.worker_seen(busy=True, at=T0 + timedelta(seconds=55))  # still busy
    assert vm.worker_seen(busy=False, at=T0 + timedelta(minutes=30, seconds=50))
    assert vm.stopped("idle_timeout", T0 + timedelta(minutes=40, seconds=50))
    spent = [e for e in vm.pending if isinstance(e, VmSpanEvent)]
    boot, busy_at, idle_at, stop = spent
    assert isinstance(boot, VmBooted) and isinstance(busy_at, VmEngaged)
    assert isinstance(idle_at, VmIdled) and isinstance(stop, VmStopped)
    assert (boot.ended.phase, boot.ended.seconds) == (VmPhase.requested, Decimal(45))
    assert boot.ended.cost_usd == Decimal("0.008500")  # 45 s x 0.68 / 3600
    assert (idle_at.ended.phase, idle_at.ended.seconds) == (VmPhase.busy, Decimal(1800))
    assert idle_at.ended.cost_usd == Decimal("0.340000")
    # Every second from request to stop is paid for, and nothing twice.
    total = sum((e.ended.seconds for e in spent), Decimal(0))
    assert total == Decimal(40 * 60 + 50)
    spans = [e.ended.cost_usd for e in spent]
    assert vm.cost_usd == sum(spans, Decimal(0)) == Decimal("0.462777")
    assert abs(vm.cost_usd - total * PRICE / 3600) < Decimal("0.000001") * len(spans)
    assert vm.ended and not vm.stopped("again", T0 + timedelta(hours=1))


def test_a_draining_machine_takes_no_new_task_and_its_time_counts_until_it_stops() -> None:
    vm = requested()
    vm.booted("vm_01", T0 + timedelta(seconds=30))
    vm.worker_seen(busy=True, at=T0 + timedelta(seconds=31))
    assert vm.drain("scale_in", "dec_9", T0 + timedelta(minutes=5))
    assert vm.phase is VmPhase.draining
    assert not vm.drain("scale_in", "dec_10", T0 + timedelta(minutes=6))
    # Busy or idle, a draining machine stays draining until it is stopped.
    assert not vm.worker_seen(busy=False, at=T0 + timedelta(minutes=7))
    assert vm.stopped("drained", T0 + timedelta(minutes=7))
    assert vm.ended


def test_a_machine_that_never_booted_can_fail_be_preempted_or_be_lost_but_not_go_busy() -> None:
    vm = requested()
    assert not vm.worker_seen(busy=True, at=T0 + timedelta(seconds=10))
    assert not vm.drain("scale_in", None, T0 + timedelta(seconds=10))
    assert vm.launch_failed("InsufficientInstanceCapacity", T0 + timedelta(seconds=20))
    assert vm.phase is VmPhase.failed and vm.ended
    assert not vm.booted("vm_01", T0 + timedelta(seconds=30))

    spot = requested()
    spot.booted("vm_01", T0 + timedelta(seconds=40))
    assert spot.preempted("spot interruption notice", T0 + timedelta(minutes=3))
    assert spot.phase is VmPhase.preempted and not spot.lost(T0 + timedelta(minutes=4))


def test_a_replayed_machine_is_the_machine_that_recorded_it() -> None:
    vm = requested()
    vm.launch_accepted("req-7f3a", T0 + timedelta(seconds=1))
    vm.booted("vm_01", T0 + timedelta(seconds=40))
    vm.worker_seen(busy=True, at=T0 + timedelta(seconds=41))
    replayed = Vm.rehydrate("vm_01", vm.pending)
    assert replayed.model_dump() == vm.model_dump()
    assert (replayed.request_id, replayed.worker_name) == ("req-7f3a", "vm_01")
    assert not replayed.launch_accepted("req-other", T0 + timedelta(seconds=2))


def test_an_adopted_machine_with_a_worker_is_counted_idle_from_its_launch() -> None:
    vm = Vm.rehydrate("vm_x", [])
    launched = T0 - timedelta(minutes=20)
    assert vm.adopt(
        pool="full",
        provider="local",
        instance_type="local-cpu",
        spot=False,
        region=None,
        hourly_price_usd=Decimal("0.10"),
        worker_name="vm_x",
        launched_at=launched,
        at=T0,
    )
    assert (vm.phase, vm.since) == (VmPhase.idle, launched)
    vm.stopped("unknown_vm", T0)
    [_, stop] = vm.pending
    assert isinstance(stop, VmStopped)
    assert stop.ended.seconds == Decimal(1200) and stop.ended.cost_usd == Decimal("0.033333")


def test_a_pools_decision_is_recorded_when_it_acts_or_what_holds_it_back_changes() -> None:
    pool = PoolScaling.rehydrate("render", [])
    inputs: dict[str, str | int | float] = {"waiting_tasks": 40, "desired": 5}
    spend = [ScalingHold(count=3, reason="spend_ceiling")]
    launch = [ScalingAction(action="launch", vm_id="vm_1", reason="backlog")]
    assert pool.decided("dec_1", T0, inputs, launch, spend)
    # The ceiling keeps binding, round after round: recorded once.
    assert not pool.decided("dec_2", T0 + timedelta(seconds=2), inputs, [], spend)
    assert pool.decided("dec_3", T0 + timedelta(seconds=4), inputs, [], [])
    assert [e.decision_id for e in pool.pending] == ["dec_1", "dec_3"]  # type: ignore[attr-defined]


def test_every_span_ending_event_moves_the_machine_into_a_known_phase() -> None:
    # One table for the aggregate and the fleet read model: a new span event needs its phase.
    assert set(PHASE_AFTER) == set(SPAN_EVENTS)
