"""The scaler's policy: the farm's queue and the fleet in, launches, drains and stops out.

Pure: no I/O, no clock. ``now`` and every time in a snapshot are seconds on one clock chosen
by the caller. Each pool's desired size is

    desired = min(max_workers, max(min_workers, max(deadline_need, backlog_need) + standby))

* ``deadline_need``: the fewest workers with which every waiting task that has a deadline
  (a test render: ``TEST_RENDER_SLA_SECONDS`` from its request) still finishes in time, given
  when each worker is free (a booting one after its boot estimate, a busy one after its
  task's measured remaining time, a new one after ``boot_seconds``) and each job's measured
  task time. A task that cannot make its deadline on any worker gets a new worker of its own.
* ``backlog_need``: work-conserving capacity for everything queued and running,
  ``ceil(backlog seconds / drain_target_seconds)``, never more workers than tasks.
* ``standby``: idle warm workers kept on top (the test pool's, for the next test render).

Launches go through the ceilings in order (deadline, then min and standby, then backlog;
pools by ``priority``): the pool's max, the fleet-wide ``max_vms`` and the spend ceiling (the
hourly prices of every live VM). A pool above its desired size drains idle workers that have
been idle ``idle_seconds``; a worker is stopped only once drained (no task, no new ones),
preempted or failed, so a worker holding a running task is never stopped. Every action
carries a reason code and the inputs it was decided on (they become ``fleet.*`` events).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum, StrEnum

from services.scaler.provider import LaunchSpec

#: DESIGN.md: a test render is ready within 10 minutes of its request.
TEST_RENDER_SLA_SECONDS = 600.0

Inputs = Mapping[str, str | int | float]


class WorkerStatus(StrEnum):
    """One VM as the scaler sees it: the provider's status joined with the farm's worker."""

    booting = "booting"  # launched, its render worker not yet taking tasks
    idle = "idle"
    busy = "busy"  # rendering a task
    draining = "draining"  # takes no new task, finishes the one it holds
    drained = "drained"  # draining and holds no task: may be stopped
    preempted = "preempted"  # a spot VM taken back; its task goes back to the queue
    failed = "failed"  # the launch failed after it was accepted


#: Counted in a pool's size.
ACTIVE = frozenset({WorkerStatus.booting, WorkerStatus.idle, WorkerStatus.busy})
#: Running and paid for (the spend ceiling and the fleet ceiling count these).
LIVE = ACTIVE | {WorkerStatus.draining}


class Reason(StrEnum):
    """Why an action was decided (machine-readable)."""

    deadline = "deadline"  # launch: a task's deadline (a test render's SLA) needs it
    min_workers = "min_workers"  # launch: the pool's minimum
    standby = "standby"  # launch: the warm standby for test renders
    backlog = "backlog"  # launch: the queued work drains within the target time
    demand_returned = "demand_returned"  # resume: a draining worker is needed again
    idle = "idle"  # drain: above the desired size and idle for idle_seconds
    drained = "drained"  # stop: drained, holds no task
    preempted = "preempted"  # stop: release a preempted spot VM (its task is requeued)
    launch_failed = "launch_failed"  # stop: release a VM whose launch failed
    pool_max = "pool_max"  # held: the pool's maximum
    fleet_max = "fleet_max"  # held: the fleet-wide ceiling on VMs
    spend_ceiling = "spend_ceiling"  # held: the fleet-wide ceiling on spend per hour
    backed_off = "backed_off"  # held: every instance type of the pool is backed off


class _Tier(IntEnum):
    """The order in which wanted workers get the fleet's ceilings."""

    deadline = 0
    floor = 1  # min_workers and standby
    backlog = 2


_TIER = {
    Reason.deadline: _Tier.deadline,
    Reason.min_workers: _Tier.floor,
    Reason.standby: _Tier.floor,
    Reason.backlog: _Tier.backlog,
}


# -- settings -------------------------------------------------------------------------------


def placement(instance_type: str, region: str | None) -> str:
    """What a back-off is kept for: the instance type, in its region when one is given."""
    return instance_type if region is None else f"{instance_type}@{region}"


@dataclass(frozen=True)
class InstanceOption:
    """An instance type a pool may launch, with its prices in US dollars per hour."""

    name: str
    hourly_price_usd: Decimal
    #: None: no spot market for this type.
    spot_hourly_price_usd: Decimal | None = None
    #: Where to launch it (the provider's region); None: the provider's default. The same
    #: type listed in two regions is two options: one refusing is backed off, the next tried.
    region: str | None = None

    @property
    def placement(self) -> str:
        """What a back-off is kept for (see :func:`placement`)."""
        return placement(self.name, self.region)

    def price(self, spot: bool) -> Decimal:
        if spot and self.spot_hourly_price_usd is not None:
            return self.spot_hourly_price_usd
        return self.hourly_price_usd


@dataclass(frozen=True)
class PoolPolicy:
    """One pool's settings (defaults in ``docs/scaling.md``)."""

    name: str
    #: In order of preference; a refused type is backed off and the next one tried.
    instance_types: tuple[InstanceOption, ...]
    min_workers: int = 0
    max_workers: int = 10
    #: Idle workers kept on top of the demand (the test pool's warm standby).
    standby: int = 0
    #: Launch spot VMs where the instance type has a spot price.
    spot: bool = False
    #: An idle worker above the desired size is drained after this long idle.
    idle_seconds: float = 300.0
    #: From launch to the first task (anchors §4.1: plan 1-3 min).
    boot_seconds: float = 180.0
    #: The backlog (queued and running work) should drain within this time.
    drain_target_seconds: float = 3600.0
    #: Measured task times are multiplied by this when checking deadlines.
    task_time_margin: float = 1.0
    #: Lower first when the fleet's ceilings bind.
    priority: int = 1


@dataclass(frozen=True)
class FleetLimits:
    """Fleet-wide ceilings, over every pool."""

    max_vms: int
    max_spend_per_hour_usd: Decimal


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential back-off of a (pool, placement) whose launches fail."""

    initial_seconds: float = 60.0
    factor: float = 2.0
    max_seconds: float = 1800.0


@dataclass(frozen=True)
class LaunchBackoff:
    """A (pool, placement) whose launches failed ``failures`` times in a row, the last
    back-off set at ``since``."""

    failures: int
    until: float
    reason: str
    since: float = 0.0


Backoffs = Mapping[tuple[str, str], LaunchBackoff]


def launch_failed(
    backoffs: Backoffs,
    pool: str,
    placement: str,
    now: float,
    reason: str,
    launched_at: float | None = None,
    policy: BackoffPolicy = BackoffPolicy(),
) -> dict[tuple[str, str], LaunchBackoff]:
    """The back-offs after a failed launch of ``placement`` asked at ``launched_at`` (default
    ``now``): refused at once (``LaunchRefused``), or a machine that failed before it was ever
    ready (a capacity or quota failure that SkyPilot reports after accepting the launch).
    The delay doubles with each failure in a row. A launch asked no later than the current
    back-off was set (launches in flight together, failing together) is that same failure,
    not counted again."""
    key = (pool, placement)
    asked = now if launched_at is None else launched_at
    known = backoffs.get(key)
    if known is not None and asked <= known.since:
        return dict(backoffs)
    failures = known.failures + 1 if known is not None else 1
    delay = min(policy.max_seconds, policy.initial_seconds * policy.factor ** (failures - 1))
    return {**backoffs, key: LaunchBackoff(failures, now + delay, reason, now)}


def launch_succeeded(
    backoffs: Backoffs, pool: str, placement: str
) -> dict[tuple[str, str], LaunchBackoff]:
    """The back-offs after a machine of ``placement`` came up: it is trusted again."""
    return {k: v for k, v in backoffs.items() if k != (pool, placement)}


# -- the snapshot ---------------------------------------------------------------------------


def affordable_tasks(
    cap_credits: Decimal | None,
    so_far_credits: Decimal,
    lines: int,
    expected_credits: Decimal | None,
    tasks: int | None,
) -> int | None:
    """How many more tasks a job's budget pays for: what is left of its cost cap over the
    mean cost of its tasks so far (before any, the estimate's expected cost per task).
    None: no cap, or nothing to price a task by (the budget does not bind)."""
    if cap_credits is None:
        return None
    if lines:
        per_task = so_far_credits / lines
    elif expected_credits is not None and tasks:
        per_task = expected_credits / tasks
    else:
        return None
    if per_task <= 0:
        return None
    return max(0, int((cap_credits - so_far_credits) / per_task))


@dataclass(frozen=True)
class QueuedWork:
    """The waiting tasks of one job in one pool."""

    job_id: str
    tasks: int
    #: The job's measured mean task time (its estimate until a task has finished).
    task_seconds: float
    #: When the tasks must be done (a test render: request + TEST_RENDER_SLA_SECONDS).
    deadline: float | None = None
    test_render: bool = False


@dataclass(frozen=True)
class RunningTask:
    task_id: str
    vm_id: str
    #: Measured task time minus the time it has run, at least 0.
    remaining_seconds: float


@dataclass(frozen=True)
class PoolQueue:
    """What the farm has for one pool."""

    waiting: tuple[QueuedWork, ...] = ()
    running: tuple[RunningTask, ...] = ()


@dataclass(frozen=True)
class Worker:
    """One VM of the fleet."""

    vm_id: str
    pool: str
    status: WorkerStatus
    instance_type: str
    spot: bool
    hourly_price_usd: Decimal
    launched_at: float
    #: When it last became idle (``idle`` only).
    idle_since: float | None = None
    worker_name: str | None = None


# -- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSizing:
    """A pool's desired size and what it was computed from."""

    pool: str
    active: int
    booting: int
    idle: int
    busy: int
    draining: int
    waiting_tasks: int
    running_tasks: int
    backlog_seconds: float
    deadline_need: int
    backlog_need: int
    standby: int
    min_workers: int
    max_workers: int
    #: Before the pool's max.
    wanted: int
    desired: int

    def inputs(self) -> dict[str, str | int | float]:
        return {
            "pool": self.pool,
            "active": self.active,
            "booting": self.booting,
            "idle": self.idle,
            "busy": self.busy,
            "draining": self.draining,
            "waiting_tasks": self.waiting_tasks,
            "running_tasks": self.running_tasks,
            "backlog_seconds": round(self.backlog_seconds, 1),
            "deadline_need": self.deadline_need,
            "backlog_need": self.backlog_need,
            "standby": self.standby,
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
            "wanted": self.wanted,
            "desired": self.desired,
        }


@dataclass(frozen=True)
class Launch:
    pool: str
    instance_type: str
    spot: bool
    hourly_price_usd: Decimal
    reason: Reason
    inputs: Inputs
    region: str | None = None

    @property
    def placement(self) -> str:
        """The back-off key of what it launches (see :func:`placement`)."""
        return placement(self.instance_type, self.region)

    def spec(self, vm_id: str) -> LaunchSpec:
        return LaunchSpec(vm_id, self.pool, self.instance_type, self.spot, self.region)


@dataclass(frozen=True)
class VmAction:
    """A drain, resume or stop of one VM."""

    vm_id: str
    pool: str
    reason: Reason
    inputs: Inputs


@dataclass(frozen=True)
class Held:
    """Workers a pool wanted and did not get, and which ceiling held them."""

    pool: str
    count: int
    reason: Reason
    inputs: Inputs


@dataclass(frozen=True)
class Decision:
    now: float
    pools: tuple[PoolSizing, ...]
    launches: tuple[Launch, ...] = ()
    resumes: tuple[VmAction, ...] = ()
    drains: tuple[VmAction, ...] = ()
    stops: tuple[VmAction, ...] = ()
    held: tuple[Held, ...] = ()
    #: The hourly prices of every live VM once the launches are made.
    spend_per_hour_usd: Decimal = Decimal(0)
    live_vms: int = 0

    def sizing(self, pool: str) -> PoolSizing:
        return next(s for s in self.pools if s.pool == pool)


# -- sizing ---------------------------------------------------------------------------------


def _free_at(now: float, policy: PoolPolicy, w: Worker, remaining: Mapping[str, float]) -> float:
    if w.status is WorkerStatus.booting:
        return max(now, w.launched_at + policy.boot_seconds)
    if w.status is WorkerStatus.busy:
        return now + remaining.get(w.vm_id, 0.0) * policy.task_time_margin
    return now


def deadline_need(
    now: float, policy: PoolPolicy, free_at: Sequence[float], waiting: Sequence[QueuedWork]
) -> int:
    """The fewest workers with which every deadline-bearing waiting task finishes in time.

    For each deadline ``d`` (earliest first), the tasks due by ``d`` must fit the slots of
    the workers free earliest, a worker free at ``a`` having ``floor((d - a) / s)`` slots,
    ``s`` the longest task time due by ``d``; new workers are free after ``boot_seconds``. A
    deadline no new worker can make asks for one new worker per task it still lacks.
    """
    due = sorted((q for q in waiting if q.deadline is not None), key=lambda q: q.deadline or 0.0)
    if not due:
        return 0
    free = sorted(free_at)
    need, tasks, longest = 0, 0, 0.0
    for q in due:
        assert q.deadline is not None
        tasks += q.tasks
        longest = max(longest, q.task_seconds * policy.task_time_margin)
        if longest <= 0.0:
            continue
        slots, used = 0, 0
        for a in free:
            if slots >= tasks:
                break
            slots += max(0, math.floor((q.deadline - a) / longest))
            used += 1
        if slots >= tasks:
            need = max(need, used)
            continue
        fresh = math.floor((q.deadline - now - policy.boot_seconds) / longest)
        lacking = tasks - slots
        need = max(need, len(free) + (math.ceil(lacking / fresh) if fresh >= 1 else lacking))
    return need


def size_pool(
    now: float, policy: PoolPolicy, queue: PoolQueue, workers: Sequence[Worker]
) -> PoolSizing:
    """One pool's desired size from its queue and its workers (see the module's docstring)."""
    by = {s: [w for w in workers if w.status is s] for s in WorkerStatus}
    active = [w for w in workers if w.status in ACTIVE]
    remaining = {t.vm_id: t.remaining_seconds for t in queue.running}
    free_at = [_free_at(now, policy, w, remaining) for w in active]
    dl = deadline_need(now, policy, free_at, queue.waiting)
    work = sum(q.tasks * q.task_seconds for q in queue.waiting) + sum(remaining.values())
    waiting_tasks = sum(q.tasks for q in queue.waiting)
    tasks = waiting_tasks + len(queue.running)
    backlog = min(tasks, math.ceil(work / policy.drain_target_seconds))
    wanted = max(policy.min_workers, max(dl, backlog) + policy.standby)
    return PoolSizing(
        pool=policy.name,
        active=len(active),
        booting=len(by[WorkerStatus.booting]),
        idle=len(by[WorkerStatus.idle]),
        busy=len(by[WorkerStatus.busy]),
        draining=len(by[WorkerStatus.draining]),
        waiting_tasks=waiting_tasks,
        running_tasks=len(queue.running),
        backlog_seconds=work,
        deadline_need=dl,
        backlog_need=backlog,
        standby=policy.standby,
        min_workers=policy.min_workers,
        max_workers=policy.max_workers,
        wanted=wanted,
        desired=min(policy.max_workers, wanted),
    )


def _reason_of(k: int, s: PoolSizing) -> Reason:
    """Why the pool's ``k``-th worker (1-based) is wanted."""
    demand = max(s.deadline_need, s.backlog_need)
    if k <= s.deadline_need:
        return Reason.deadline
    if k <= demand:
        return Reason.backlog
    if k <= demand + s.standby:
        return Reason.standby
    return Reason.min_workers


@dataclass
class _Ledger:
    """The fleet's ceilings as the launches use them up."""

    limits: FleetLimits
    vms: int
    spend: Decimal
    launches: list[Launch] = field(default_factory=list)
    held: dict[tuple[str, Reason], int] = field(default_factory=dict)

    def hold(self, pool: str, reason: Reason) -> None:
        self.held[(pool, reason)] = self.held.get((pool, reason), 0) + 1


def _pick_type(policy: PoolPolicy, now: float, backoffs: Backoffs) -> InstanceOption | None:
    for option in policy.instance_types:
        b = backoffs.get((policy.name, option.placement))
        if b is None or b.until <= now:
            return option
    return None


def decide(
    now: float,
    policies: Sequence[PoolPolicy],
    limits: FleetLimits,
    queues: Mapping[str, PoolQueue],
    fleet: Sequence[Worker],
    backoffs: Backoffs | None = None,
) -> Decision:
    """What the scaler does now: launches, resumes, drains and stops, each with its reason."""
    backoffs = backoffs or {}
    stop_reason = {
        WorkerStatus.drained: Reason.drained,
        WorkerStatus.preempted: Reason.preempted,
        WorkerStatus.failed: Reason.launch_failed,
    }
    stops = tuple(
        VmAction(w.vm_id, w.pool, stop_reason[w.status], {"status": w.status.value})
        for w in fleet
        if w.status in stop_reason
    )
    live = [w for w in fleet if w.status in LIVE]
    ledger = _Ledger(limits, len(live), sum((w.hourly_price_usd for w in live), Decimal(0)))
    sizings: list[PoolSizing] = []
    resumes: list[VmAction] = []
    drains: list[VmAction] = []
    wanted: list[tuple[_Tier, int, str, PoolPolicy, PoolSizing, Reason]] = []
    for policy in policies:
        workers = [w for w in live if w.pool == policy.name]
        s = size_pool(now, policy, queues.get(policy.name, PoolQueue()), workers)
        sizings.append(s)
        inputs = s.inputs()
        if s.wanted > s.max_workers and s.active < s.wanted:
            ledger.held[(s.pool, Reason.pool_max)] = s.wanted - max(s.active, s.max_workers)
        short = s.desired - s.active
        draining = [w for w in workers if w.status is WorkerStatus.draining]
        for w in draining[: max(0, short)]:
            resumes.append(VmAction(w.vm_id, s.pool, Reason.demand_returned, inputs))
        have = s.active + min(max(0, short), len(draining))
        for k in range(have + 1, s.desired + 1):
            reason = _reason_of(k, s)
            wanted.append((_TIER[reason], policy.priority, policy.name, policy, s, reason))
        if short < 0:
            idle = sorted(
                (
                    w
                    for w in workers
                    if w.status is WorkerStatus.idle
                    and w.idle_since is not None
                    and now - w.idle_since >= policy.idle_seconds
                ),
                key=lambda w: (-w.hourly_price_usd, w.idle_since, w.vm_id),
            )
            drains += [VmAction(w.vm_id, s.pool, Reason.idle, inputs) for w in idle[:-short]]
    wanted.sort(key=lambda x: (x[0], x[1], x[2]))
    for _, _, _, policy, s, reason in wanted:
        option = _pick_type(policy, now, backoffs)
        if option is None:
            ledger.hold(s.pool, Reason.backed_off)
            continue
        spot = policy.spot and option.spot_hourly_price_usd is not None
        price = option.price(spot)
        if ledger.vms + 1 > limits.max_vms:
            ledger.hold(s.pool, Reason.fleet_max)
            continue
        if ledger.spend + price > limits.max_spend_per_hour_usd:
            ledger.hold(s.pool, Reason.spend_ceiling)
            continue
        ledger.vms += 1
        ledger.spend += price
        inputs = {
            **s.inputs(),
            "live_vms": ledger.vms,
            "spend_per_hour_usd": str(ledger.spend),
            "max_vms": limits.max_vms,
            "max_spend_per_hour_usd": str(limits.max_spend_per_hour_usd),
        }
        ledger.launches.append(
            Launch(s.pool, option.name, spot, price, reason, inputs, option.region)
        )
    by_pool = {s.pool: s for s in sizings}
    held = tuple(
        Held(pool, n, reason, by_pool[pool].inputs()) for (pool, reason), n in ledger.held.items()
    )
    return Decision(
        now=now,
        pools=tuple(sizings),
        launches=tuple(ledger.launches),
        resumes=tuple(resumes),
        drains=tuple(drains),
        stops=stops,
        held=held,
        spend_per_hour_usd=ledger.spend,
        live_vms=ledger.vms,
    )
