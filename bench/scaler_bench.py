"""17. The scaler over a simulated week: SLA, deadlines and fleet cost, per policy.

A discrete-event simulation on a simulated clock (``bench.testrender_sim.Engine``, no sleeps,
no servers). One week of arrivals is drawn once (a day/night and weekday/weekend pattern;
test renders of three frames in bursts, with the 10-minute SLA; large full renders with
deadlines) and run against the same :class:`SimulatedProvider` draws (boot times from
``bench.testrender_sim.cold_boot``, anchors §4.1; spot preemptions; launch refusals and a
three-hour outage of the preferred full-render type) for:

- ``ours``: :func:`services.scaler.domain.decide` every ``tick_s`` and at each arrival;
- ``fixed``: a fixed fleet (min = max);
- ``queue``: one worker per queued or running task, no deadlines, no standby;

and compared with a clairvoyant lower bound on the fleet's cost (``docs/scaling.md``). A
preempted spot VM's task goes back to the front of its job's queue and renders again.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from functools import partial
from pathlib import Path

from bench.infra import REPO_ROOT
from bench.report import Figure, percentile
from bench.testrender_sim import Engine, cold_boot
from bench.testrender_sim import Params as TestRenderParams
from services.scaler.domain import (
    TEST_RENDER_SLA_SECONDS,
    Backoffs,
    Decision,
    FleetLimits,
    InstanceOption,
    PoolPolicy,
    PoolQueue,
    QueuedWork,
    RunningTask,
    Worker,
    WorkerStatus,
    decide,
    launch_failed,
    launch_succeeded,
)
from services.scaler.provider import LaunchRefused, VmStatus
from services.scaler.simulated import SimulatedProvider

SECTION = "17"
SEED = 17
HOUR = 3600.0
DAY = 86400.0
PLOT = REPO_ROOT / ".run" / "scaler-week.png"
#: Section 14's model: boots, test frames' dispatch, reads and renders, backend overhead.
TR = TestRenderParams()

TEST, FULL = "test", "full"
#: Assumed list prices (us-east-1 style, US$/h; spot about 40 % of on-demand); a 64-core node
#: at 2.72 $/h is inside anchors §4.2's 0.67-5.4 $ per node-hour.
TEST_TYPES = (
    InstanceOption("c6i.8xlarge", Decimal("1.36")),
    InstanceOption("c5.9xlarge", Decimal("1.53")),
)
FULL_TYPES = (
    InstanceOption("c6i.16xlarge", Decimal("2.72"), Decimal("1.09")),
    InstanceOption("c5.18xlarge", Decimal("3.06"), Decimal("1.22")),
)
POLICIES = (
    PoolPolicy(TEST, TEST_TYPES, max_workers=12, standby=1, priority=0, drain_target_seconds=600),
    PoolPolicy(FULL, FULL_TYPES, max_workers=50, spot=True, drain_target_seconds=2 * HOUR),
)
LIMITS = FleetLimits(max_vms=60, max_spend_per_hour_usd=Decimal("90"))


class PolicyName(StrEnum):
    ours = "ours"
    fixed = "fixed"
    queue = "queue"


def policies_for(
    name: PolicyName, fixed_test: int = 3, fixed_full: int = 40
) -> tuple[PoolPolicy, ...]:
    """Each compared policy as pool settings for the same ``decide``."""
    if name is PolicyName.fixed:
        sizes = {TEST: fixed_test, FULL: fixed_full}
        return tuple(
            replace(p, min_workers=sizes[p.name], max_workers=sizes[p.name], standby=0)
            for p in POLICIES
        )
    if name is PolicyName.queue:  # ceil(work / 1 s), capped at the task count: one per task
        return tuple(replace(p, standby=0, drain_target_seconds=1.0) for p in POLICIES)
    return POLICIES


@dataclass(frozen=True)
class Params:
    days: float = 7.0
    #: Scaler decisions: every tick, and at each arrival and preemption.
    tick_s: float = 30.0
    test_bursts_per_hour: float = 8.0  # section 14's rate, the day/night mean
    burst_mean: float = 2.5
    burst_spread_s: float = 120.0
    #: GB a test frame reads (triangular low, mode, high): section 14's 5-30 GB of 200 GB.
    test_needed_gb: tuple[float, float, float] = (1.0, 12.0, 30.0)
    #: The estimator's error on a job's mean task time (lognormal sigma).
    estimate_sigma: float = 0.25
    full_jobs_per_hour: float = 0.3
    full_tasks: tuple[int, int] = (50, 300)
    full_task_median_s: float = TR.full_task_median_s
    full_task_sigma: float = TR.full_task_sigma
    full_deadline_h: tuple[float, float] = (8.0, 30.0)
    #: Assumed (anchors §4 has no figure): a spot VM is reclaimed at this rate.
    spot_preemptions_per_hour: float = 0.02
    #: Assumed: each launch is refused with this probability (capacity).
    refusal_probability: float = 0.02
    #: The preferred full-render type refuses every launch in this window (an outage).
    outage_h: tuple[float, float] = (60.0, 63.0)


# -- the drawn week -------------------------------------------------------------------------


def load_factor(t: float) -> float:
    """Arrival rate multiplier: busy afternoons, quiet nights, half on the weekend (mean ~1)."""
    day = int(t // DAY) % 7
    hour = (t % DAY) / HOUR
    diurnal = 1.0 + 0.8 * math.sin(2.0 * math.pi * (hour - 9.0) / 24.0)
    return diurnal * (0.5 if day >= 5 else 1.2)


def _arrivals(rng: random.Random, per_hour: float, end: float) -> list[float]:
    """A non-homogeneous Poisson process with ``per_hour * load_factor`` (thinning)."""
    peak = per_hour * 2.2
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak / HOUR)
        if t >= end:
            return out
        if rng.random() * peak < per_hour * load_factor(t):
            out.append(t)


@dataclass(frozen=True)
class JobDraw:
    job_id: str
    arrival: float
    deadline: float
    task_s: tuple[float, ...]
    #: What the estimator says a task takes (the scaler's figure until tasks finish).
    estimate_s: float
    test_render: bool


@dataclass(frozen=True)
class Week:
    end: float
    jobs: tuple[JobDraw, ...]


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def generate_week(p: Params, seed: int = SEED) -> Week:
    rng = random.Random(seed)
    end = p.days * DAY
    jobs: list[JobDraw] = []
    extra = p.burst_mean - 1.0
    for t in _arrivals(rng, p.test_bursts_per_hour, end):
        size = 1 + int(rng.expovariate(math.log((extra + 1.0) / extra)))
        for _ in range(size):
            at = t + rng.uniform(0.0, p.burst_spread_s)
            gb = rng.triangular(p.test_needed_gb[0], p.test_needed_gb[2], p.test_needed_gb[1])
            frames = tuple(
                rng.uniform(*TR.dispatch_s)
                + gb / rng.uniform(*TR.read_gb_s)
                + _lognormal(rng, TR.render_median_s, TR.render_sigma)
                for _ in range(TR.test_frames)
            )
            estimate = sum(frames) / len(frames) * math.exp(rng.gauss(0.0, p.estimate_sigma))
            jobs.append(
                JobDraw(f"t{len(jobs)}", at, at + TEST_RENDER_SLA_SECONDS, frames, estimate, True)
            )
    for t in _arrivals(rng, p.full_jobs_per_hour, end):
        tasks = tuple(
            _lognormal(rng, p.full_task_median_s, p.full_task_sigma)
            for _ in range(rng.randint(*p.full_tasks))
        )
        estimate = sum(tasks) / len(tasks) * math.exp(rng.gauss(0.0, p.estimate_sigma))
        deadline = t + rng.uniform(*p.full_deadline_h) * HOUR
        jobs.append(JobDraw(f"f{len(jobs)}", t, deadline, tasks, estimate, False))
    jobs.sort(key=lambda j: j.arrival)
    return Week(end, tuple(jobs))


def clairvoyant_bound_usd(week: Week, policies: Sequence[PoolPolicy], min_boot_s: float) -> Decimal:
    """No schedule costs less: per pool, every task's render seconds once (no preemption, no
    idle second) plus one VM's boot, at the cheapest hourly price the pool may use."""
    total = Decimal(0)
    for policy in policies:
        test = policy.name == TEST
        work = sum(sum(j.task_s) for j in week.jobs if j.test_render is test)
        cheapest = min(o.price(policy.spot) for o in policy.instance_types)
        total += cheapest * Decimal(round(work + min_boot_s)) / 3600
    return total


# -- the farm -------------------------------------------------------------------------------


@dataclass(eq=False)
class JobRun:
    draw: JobDraw
    waiting: deque[float]
    left: int
    done_s: float = 0.0
    done: int = 0
    finished_at: float | None = None

    @property
    def pool(self) -> str:
        return TEST if self.draw.test_render else FULL

    @property
    def measured_s(self) -> float:
        """The mean of the finished tasks, the estimate before any finished."""
        return self.done_s / self.done if self.done else self.draw.estimate_s


@dataclass(eq=False)
class SimWorker:
    vm_id: str
    pool: str
    instance_type: str
    spot: bool
    price: Decimal
    launched_at: float
    status: WorkerStatus = WorkerStatus.booting
    idle_since: float | None = None
    job: JobRun | None = None
    task_s: float = 0.0
    task_started: float = 0.0
    gen: int = 0


@dataclass
class WeekResult:
    policy: PolicyName
    test_ready_s: list[float]
    full_lateness_s: list[float]
    cost_usd: Decimal
    horizon_s: float
    launches: int
    refused: int
    fallback_launches: int
    preempted: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def sla_share(self) -> float:
        ready = self.test_ready_s
        return sum(1 for r in ready if r <= TEST_RENDER_SLA_SECONDS) / len(ready) if ready else 1.0

    @property
    def deadlines_met(self) -> float:
        late = self.full_lateness_s
        return sum(1 for x in late if x <= 0.0) / len(late) if late else 1.0

    def lateness_h(self, p: float) -> float:
        return percentile(sorted(max(0.0, x) / HOUR for x in self.full_lateness_s), p)


class Farm:
    """One policy's week: the farm's queue and workers, the scaler, the simulated cloud."""

    def __init__(self, p: Params, name: PolicyName, week: Week, seed: int) -> None:
        self.p, self.name, self.week = p, name, week
        self.policies = policies_for(name)
        self.engine = Engine(0.0)
        self.provider = SimulatedProvider(
            (*TEST_TYPES, *FULL_TYPES),
            seed=seed,
            boot_seconds=lambda rng: cold_boot(rng, TR),
            spot_preemptions_per_hour=p.spot_preemptions_per_hour,
            refusal_probability=p.refusal_probability,
        )
        self.workers: dict[str, SimWorker] = {}
        self.queued: dict[str, list[JobRun]] = {TEST: [], FULL: []}
        self.running: dict[str, JobRun] = {}
        self.backoffs: Backoffs = {}
        self.left = len(week.jobs)
        self.result = WeekResult(name, [], [], Decimal(0), 0.0, 0, 0, 0, 0)
        self._seq = 0
        self._wake_at = math.inf
        self._poked = False
        #: Decision times due: the engine's callbacks are synchronous, the scaler's async.
        self._pending: list[float] = []

    async def run(self) -> WeekResult:
        for draw in self.week.jobs:
            self.engine.at(draw.arrival, partial(self._arrive, draw))
        self.engine.at(0.0, self._tick)
        while True:
            self.engine.run(lambda: self.left == 0 or bool(self._pending))
            if not self._pending:
                break
            self._pending.clear()
            await self._decide()
        self._sync()
        self.result.cost_usd = self.provider.spent_usd()
        self.result.horizon_s = self.engine.now
        return self.result

    # -- the scaler's loop ------------------------------------------------------------------

    def _tick(self) -> None:
        self._pending.append(self.engine.now)
        self.engine.at(self.engine.now + self.p.tick_s, self._tick)

    def _poke(self) -> None:
        if not self._poked:
            self._poked = True
            self.engine.at(self.engine.now, self._tick_once)

    def _tick_once(self) -> None:
        self._poked = False
        self._pending.append(self.engine.now)

    def snapshot(self) -> tuple[dict[str, PoolQueue], list[Worker]]:
        now = self.engine.now
        strip = self.name is PolicyName.queue
        queues = {}
        for pool, jobs in self.queued.items():
            waiting = tuple(
                QueuedWork(
                    j.draw.job_id,
                    len(j.waiting),
                    j.measured_s,
                    None if strip else j.draw.deadline,
                    j.draw.test_render,
                )
                for j in jobs
            )
            running = tuple(
                RunningTask(w.vm_id, w.vm_id, max(0.0, w.job.measured_s - (now - w.task_started)))
                for w in self.workers.values()
                if w.pool == pool and w.job is not None
            )
            queues[pool] = PoolQueue(waiting, running)
        fleet = [
            Worker(
                w.vm_id,
                w.pool,
                w.status,
                w.instance_type,
                w.spot,
                w.price,
                w.launched_at,
                w.idle_since,
            )
            for w in self.workers.values()
        ]
        return queues, fleet

    async def _decide(self) -> None:
        now = self.engine.now
        self._sync()
        self._outage(now)
        for _ in range(4):  # again at once after drains (to stop) or refusals (next type)
            queues, fleet = self.snapshot()
            d = decide(now, self.policies, LIMITS, queues, fleet, self.backoffs)
            again = await self._apply(d)
            if not again:
                break
        waiting = sum(len(j.waiting) for jobs in self.queued.values() for j in jobs)
        live = sum(1 for w in self.workers.values() if w.status is not WorkerStatus.preempted)
        self.result.samples.append((now, live, waiting))
        nxt = self.provider.next_change()
        if nxt < self._wake_at:
            self._wake_at = nxt
            self.engine.at(nxt, self._provider_wake)

    async def _apply(self, d: Decision) -> bool:
        now = self.engine.now
        for stop in d.stops:
            await self.provider.stop(stop.vm_id)
            del self.workers[stop.vm_id]
        for drain in d.drains:
            self.workers[drain.vm_id].status = WorkerStatus.drained
        for resume in d.resumes:
            self.workers[resume.vm_id].status = WorkerStatus.busy
        refused = False
        for launch in d.launches:
            self._seq += 1
            vm_id = f"rw-{launch.pool}-{self._seq:05d}"
            try:
                info = await self.provider.launch(launch.spec(vm_id))
            except LaunchRefused as e:
                self.result.refused += 1
                self.backoffs = launch_failed(
                    self.backoffs, launch.pool, launch.placement, now, e.reason
                )
                refused = True
                continue
            # Its machines never fail after a launch was accepted: accepted is up.
            self.backoffs = launch_succeeded(self.backoffs, launch.pool, launch.placement)
            self.result.launches += 1
            preferred = next(p for p in self.policies if p.name == launch.pool).instance_types[0]
            self.result.fallback_launches += launch.instance_type != preferred.name
            self.workers[vm_id] = SimWorker(
                vm_id, launch.pool, launch.instance_type, launch.spot, info.hourly_price_usd, now
            )
        return refused or bool(d.drains)

    def _outage(self, now: float) -> None:
        lo, hi = self.p.outage_h
        if lo * HOUR <= now < hi * HOUR:
            self.provider.unavailable.add(FULL_TYPES[0].name)
        else:
            self.provider.unavailable.discard(FULL_TYPES[0].name)

    def _provider_wake(self) -> None:
        self._wake_at = math.inf
        self._sync()
        nxt = self.provider.next_change()
        if nxt < math.inf:
            self._wake_at = nxt
            self.engine.at(nxt, self._provider_wake)

    def _sync(self) -> None:
        """The cloud's clock to the engine's; its boots and preemptions reach the farm."""
        now = self.engine.now
        for info in self.provider.advance(now):
            w = self.workers.get(info.vm_id)
            if w is None:
                continue
            if info.status is VmStatus.running:
                w.status, w.idle_since = WorkerStatus.idle, now
                self._dispatch(w.pool)
            elif info.status is VmStatus.preempted:
                self.result.preempted += 1
                if w.job is not None:
                    self._requeue(w.job, w.task_s)
                w.status, w.job, w.gen = WorkerStatus.preempted, None, w.gen + 1
                self._poke()

    # -- the farm's queue -------------------------------------------------------------------

    def _arrive(self, draw: JobDraw) -> None:
        job = JobRun(draw, deque(draw.task_s), len(draw.task_s))
        self.queued[job.pool].append(job)
        self._dispatch(job.pool)
        self._poke()

    def _requeue(self, job: JobRun, task_s: float) -> None:
        job.waiting.appendleft(task_s)
        if job not in self.queued[job.pool]:
            self.queued[job.pool].append(job)
        self._dispatch(job.pool)

    def _next_task(self, pool: str) -> tuple[JobRun, float] | None:
        jobs = self.queued[pool]
        if not jobs:
            return None
        job = min(jobs, key=lambda j: (j.draw.deadline, j.draw.arrival))
        task_s = job.waiting.popleft()
        if not job.waiting:
            jobs.remove(job)
        return job, task_s

    def _dispatch(self, pool: str) -> None:
        now = self.engine.now
        for w in self.workers.values():
            if w.pool != pool or w.status is not WorkerStatus.idle:
                continue
            picked = self._next_task(pool)
            if picked is None:
                return
            w.job, w.task_s = picked
            w.status, w.idle_since, w.task_started = WorkerStatus.busy, None, now
            w.gen += 1
            self.engine.at(now + w.task_s, partial(self._task_done, w, w.gen))

    def _task_done(self, w: SimWorker, gen: int) -> None:
        if gen != w.gen or w.job is None:
            return
        now, job = self.engine.now, w.job
        job.done += 1
        job.done_s += w.task_s
        job.left -= 1
        if job.left == 0:
            self._finished(job, now)
        w.job = None
        if w.status is WorkerStatus.draining:
            w.status = WorkerStatus.drained
        else:
            w.status, w.idle_since = WorkerStatus.idle, now
            self._dispatch(w.pool)

    def _finished(self, job: JobRun, now: float) -> None:
        job.finished_at = now
        self.left -= 1
        if job.draw.test_render:
            self.result.test_ready_s.append(now + TR.overhead_s - job.draw.arrival)
        else:
            self.result.full_lateness_s.append(now - job.draw.deadline)


async def simulate_week(p: Params, name: PolicyName, week: Week, seed: int = SEED) -> WeekResult:
    """One policy over a drawn week (``seed`` draws the cloud: boots, preemptions, refusals)."""
    return await Farm(p, name, week, seed).run()


# -- the plot and the bench section ---------------------------------------------------------


def plot(results: Sequence[WeekResult], path: Path = PLOT) -> Path:
    """Fleet size and queued tasks over the week, one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3 * len(results)), sharex=True)
    for ax, r in zip(axes, results, strict=True):
        t = [s[0] / DAY for s in r.samples]
        ax.step(t, [s[1] for s in r.samples], where="post", color="tab:blue", label="VMs")
        ax.set_ylabel("VMs", color="tab:blue")
        ax.set_ylim(bottom=0)
        q = ax.twinx()
        q.step(t, [s[2] for s in r.samples], where="post", color="tab:orange", lw=0.7)
        q.set_ylabel("queued tasks", color="tab:orange")
        ax.set_title(
            f"{r.policy.value}: {float(r.cost_usd):,.0f} $, test renders within 10 min"
            f" {r.sla_share * 100:.1f} %, full-render deadlines met {r.deadlines_met * 100:.0f} %"
        )
    axes[-1].set_xlabel("day")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


async def measure_scaler_week(quick: bool) -> list[Figure]:
    """Section 17: our policy, a fixed fleet and queue-length scaling on one drawn week."""
    p = Params(days=2.0 if quick else 7.0)
    t0 = time.perf_counter()
    week = generate_week(p)
    results = {n: await simulate_week(p, n, week) for n in PolicyName}
    wall = time.perf_counter() - t0
    min_boot = TR.run_instances_s + TR.worker_start_s[0]  # cold_boot's least (OS boot > 0)
    bound = clairvoyant_bound_usd(week, POLICIES, min_boot)
    tests = sum(1 for j in week.jobs if j.test_render)
    print(
        f"   {tests} test renders and {len(week.jobs) - tests} full renders over {p.days:g}"
        f" simulated days, seed {SEED}; clairvoyant bound {float(bound):,.0f} $;"
        f" {wall:.1f} s of simulation",
        flush=True,
    )
    for r in results.values():
        print(
            f"   {r.policy.value:>5}: within 10 min {r.sla_share * 100:.2f} %,"
            f" deadlines met {r.deadlines_met * 100:.1f} %, lateness p50 {r.lateness_h(50):.2f} h"
            f" p99 {r.lateness_h(99):.2f} h, cost {float(r.cost_usd):,.0f} $"
            f" ({float(r.cost_usd / bound):.2f}x bound), {r.launches} launches"
            f" ({r.fallback_launches} of a fallback type), {r.refused} refused,"
            f" {r.preempted} preempted",
            flush=True,
        )
    figures: list[Figure] = []
    note = f"{p.days:g} simulated days, seed {SEED}, same draws for every policy"
    for name, r in results.items():
        ours = name is PolicyName.ours
        label = f"({name.value})"
        figures += [
            Figure(
                SECTION,
                f"{label} test renders ready within 10 min",
                r.sla_share * 100.0,
                "%",
                target=99.0 if ours else None,
                note=note if ours else "",
            ),
            Figure(
                SECTION,
                f"{label} full renders done by their deadline",
                r.deadlines_met * 100.0,
                "%",
            ),
            Figure(SECTION, f"{label} full-render lateness p50", r.lateness_h(50), "h"),
            Figure(SECTION, f"{label} full-render lateness p99", r.lateness_h(99), "h"),
            Figure(
                SECTION,
                f"{label} fleet cost",
                float(r.cost_usd),
                "$",
                baseline=float(bound),
                baseline_name="clairvoyant lower bound (docs/scaling.md)" if ours else None,
                target=1.2 if ours else None,
                direction="max",
                target_on_ratio=True,
                extra={"cost_usd": str(r.cost_usd), "bound_usd": str(bound)},
            ),
        ]
    try:
        print(f"   plot: {plot(list(results.values()))}", flush=True)
    except ImportError as e:
        print(f"   no plot: {e}", flush=True)
    return figures
