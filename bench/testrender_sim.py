"""14. Test render at 200 GB: simulated time-to-ready (a discrete-event simulation).

The path from "test render requested" to "test render ready" for scenes of up to 200 GB, on a
simulated clock (``heapq``, no sleeps, no servers), with figures taken from
``/work/shared/reference/render-farm-anchors.md`` §4 and the sources it cites; every
assumption and its source is in ``docs/test-render-at-scale.md``. Units: GB (10^9 bytes) and
seconds.

What is modelled:

- **Scenes**: a test scene of ``size_gb`` in ``files`` files (a manifest: each file its own
  multipart upload, readable in S3 only once completed); the three test frames need
  ``needed_gb`` of it (the main file, the assets every frame uses, the per-frame caches of
  those three frames), which the scene check lists.
- **Uploads**: the client's uplink; a request comes while the upload runs, just after it
  ended, or long after.
- **Staging** S3 -> farm storage through one ingest link (``link_gbps``) shared max-min fair
  by every transfer, each capped at ``streams`` parallel ranged GETs of about 85-90 MB/s; a
  transfer that follows an upload cannot overtake it.
- **Workers**: a full-render fleet (scaled from its queue up to ``fleet_max``, at most
  ``launches_per_minute``, idle ones shut down after ``idle_shutdown_s``), a warm standby
  pool of ``standby`` workers that only take test frames, cold boots (OS boot + render-worker
  start), preemption of interruptible full-render tasks below ``interruptible_percent``.
- **Full renders** arrive at random with their own scenes to stage (the link's other load)
  and tasks of tens of minutes.

Strategies, on the same drawn workload:

- ``naive`` (what the system does today): the whole scene is staged once the upload has
  ended and the job is asked for, then a VM is cold-booted per test frame, then it renders.
- ``ours``: the scene is staged as its files upload (the needed ones uploaded and staged
  first), the request moves the needed assets to the front of the link, and the test render
  is released as soon as they are staged, before the rest of the scene is. Each frame takes
  an idle standby worker, else an idle fleet worker, else the first of: a fleet worker
  finishing its task, a VM cold-booted for that frame (launched at the request, or at the
  release at the latest), and, once the boot-time budget has run out (the deadline guard),
  a worker whose interruptible full-render task is preempted.

Time-to-ready is counted from the request or, when the request comes before the needed
assets are in the bucket (an upload still running), from the moment they are: the backend
cannot make a client's uplink faster. The figure from the request itself is reported too.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial

from bench.report import Figure, percentile

SECTION = "14"
#: The test render's promise (DESIGN.md: "Test render within 10 minutes").
DEADLINE_S = 600.0
#: One seed for the bench section, so a run is comparable with the last one.
SEED = 11
#: Bytes below this (in GB, i.e. 100 bytes) count as zero in the fluid transfer model.
_EPS = 1e-7


class Strategy(StrEnum):
    naive = "naive"
    ours = "ours"


class UploadState(StrEnum):
    """Where the scene's upload stands when the test render is requested."""

    in_progress = "in_progress"
    just_finished = "just_finished"
    long_ago = "long_ago"


class Source(StrEnum):
    """Where a test frame's worker came from."""

    standby = "standby"  # the warm standby pool
    warm = "warm"  # a fleet worker that was idle or just finished its task
    preempted = "preempted"  # an interruptible full-render task was requeued for it
    cold = "cold"  # a VM cold-booted for test frames


@dataclass(frozen=True)
class Params:
    """The model's inputs; sources in ``docs/test-render-at-scale.md`` ("Assumptions")."""

    days: float = 7.0
    warmup_hours: float = 6.0
    # -- test renders: bursts of requests (an agent asking for several shots at once)
    test_bursts_per_hour: float = 8.0
    burst_mean: float = 2.5
    burst_spread_s: float = 120.0
    share_200gb: float = 0.3
    other_scene_median_gb: float = 10.0
    test_frames: int = 3
    #: Needed share of a scene for its three test frames: triangular (low, mode, high);
    #: 5-30 GB of a 200 GB scene.
    needed_fraction: tuple[float, float, float] = (0.025, 0.06, 0.15)
    #: Files per GB of scene (200 GB -> 2,000 files, 100 MB on average).
    files_per_gb: float = 10.0
    #: Every scene one packed file that each frame needs whole (the worst case).
    packed: bool = False
    #: ``ours`` stages a scene's files as they upload; False: only from the request on
    #: (needed assets first), as for a scene no longer on farm storage.
    stage_as_uploaded: bool = True
    #: Upload state at the request: in progress, just finished (0-120 s), long ago.
    p_in_progress: float = 0.2
    p_just_finished: float = 0.45
    # -- the farm's storage ingest and S3
    link_gbps: float = 10.0
    streams: int = 16
    stream_mb_s: float = 87.5
    stream_efficiency: tuple[float, float] = (0.7, 1.0)
    s3_gets_per_s: float = 5500.0
    range_mb: float = 16.0
    # -- fleet
    fleet_max: int = 40
    standby: int = 1
    idle_shutdown_s: float = 300.0
    launches_per_minute: float = 10.0
    interruptible_percent: float = 80.0
    #: The deadline guard's allowance for a test frame's render (about this model's p99 of
    #: one frame): a waiting frame preempts once less than this (and the rest) is left.
    render_reserve_s: float = 240.0
    # -- boot and dispatch (seconds)
    run_instances_s: float = 1.5
    os_boot_median_s: float = 27.0
    os_boot_sigma: float = 0.3
    worker_start_s: tuple[float, float] = (30.0, 150.0)
    dispatch_s: tuple[float, float] = (3.0, 10.0)
    preempt_s: tuple[float, float] = (5.0, 30.0)
    # -- the test frames
    render_median_s: float = 45.0
    render_sigma: float = 0.7
    read_gb_s: tuple[float, float] = (0.6, 1.2)
    overhead_s: float = 2.0
    # -- full renders (the fleet's load, about 80 % of fleet_max)
    full_jobs_per_hour: float = 0.33
    full_tasks: tuple[int, int] = (50, 300)
    full_task_median_s: float = 1800.0
    full_task_sigma: float = 0.5
    full_scene_median_gb: float = 20.0


# -- the drawn workload ---------------------------------------------------------------------


@dataclass(frozen=True)
class FrameDraw:
    """One test frame's random times, the same for every strategy."""

    cold_boot_s: float
    dispatch_s: float
    preempt_s: float
    load_s: float
    render_s: float


@dataclass(frozen=True)
class RenderRequest:
    index: int
    t_request: float
    size_gb: float
    needed_gb: float
    files: int
    uplink_gb_s: float
    upload_start: float
    state: UploadState
    frames: tuple[FrameDraw, ...]
    stream_gb_s: float

    @property
    def upload_end(self) -> float:
        return self.upload_start + self.size_gb / self.uplink_gb_s

    @property
    def file_gb(self) -> float:
        return self.size_gb / self.files

    @property
    def needed_uploaded_at(self) -> float:
        """When the needed assets are in the bucket (uploaded first, as ``ours`` asks)."""
        first = max(self.needed_gb, self.file_gb)
        return self.upload_start + min(first, self.size_gb) / self.uplink_gb_s

    @property
    def clock_start(self) -> float:
        """Where the test render's 10 minutes start (see the module's docstring)."""
        return max(self.t_request, self.needed_uploaded_at)


@dataclass(frozen=True)
class FullJob:
    t_arrival: float
    scene_gb: float
    stream_gb_s: float
    task_s: tuple[float, ...]


@dataclass(frozen=True)
class Workload:
    start: float
    end: float
    tests: tuple[RenderRequest, ...]
    full_jobs: tuple[FullJob, ...]


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def cold_boot(rng: random.Random, p: Params) -> float:
    """RunInstances + OS boot to SSH + render-worker start (Deadline Worker, Blender)."""
    os_boot = _lognormal(rng, p.os_boot_median_s, p.os_boot_sigma)
    return p.run_instances_s + os_boot + rng.uniform(*p.worker_start_s)


def _frame(rng: random.Random, p: Params, needed_gb: float) -> FrameDraw:
    return FrameDraw(
        cold_boot_s=cold_boot(rng, p),
        dispatch_s=rng.uniform(*p.dispatch_s),
        preempt_s=rng.uniform(*p.preempt_s),
        load_s=needed_gb / rng.uniform(*p.read_gb_s),
        render_s=_lognormal(rng, p.render_median_s, p.render_sigma),
    )


def _uplink_gb_s(rng: random.Random) -> float:
    """A studio's uplink: 25 % 0.1-0.3 Gb/s, 55 % 0.5-1 Gb/s, 20 % 1-5 Gb/s."""
    u = rng.random()
    low, high = (0.1, 0.3) if u < 0.25 else (0.5, 1.0) if u < 0.8 else (1.0, 5.0)
    return rng.uniform(low, high) / 8.0


def _stream_gb_s(rng: random.Random, p: Params) -> float:
    return p.stream_mb_s / 1000.0 * rng.uniform(*p.stream_efficiency)


def generate_workload(p: Params, seed: int) -> Workload:
    """Every random draw of a run that does not depend on the strategy."""
    rng = random.Random(seed)
    start, end = -p.warmup_hours * 3600.0, p.days * 86400.0
    requests: list[tuple[float, random.Random]] = []
    t = start
    while True:
        t += rng.expovariate(p.test_bursts_per_hour / 3600.0)
        if t >= end:
            break
        extra = p.burst_mean - 1.0  # requests after the first: geometric with this mean
        size = 1 + (int(rng.expovariate(math.log((extra + 1.0) / extra))) if extra > 0 else 0)
        for _ in range(size):
            requests.append((t + rng.uniform(0.0, p.burst_spread_s), random.Random(rng.random())))
    requests.sort(key=lambda r: r[0])
    tests: list[RenderRequest] = []
    for i, (t_req, r) in enumerate(requests):
        if r.random() < p.share_200gb:
            size_gb = 200.0
        else:
            size_gb = min(150.0, max(0.5, _lognormal(r, p.other_scene_median_gb, 1.0)))
        needed = size_gb * r.triangular(
            p.needed_fraction[0], p.needed_fraction[2], p.needed_fraction[1]
        )
        files = max(1, round(size_gb * p.files_per_gb))
        if p.packed:
            needed, files = size_gb, 1
        uplink = _uplink_gb_s(r)
        duration = size_gb / uplink
        u = r.random()
        if u < p.p_in_progress:
            state = UploadState.in_progress
            upload_start = t_req - r.uniform(0.05, 0.95) * duration
        elif u < p.p_in_progress + p.p_just_finished:
            state = UploadState.just_finished
            upload_start = t_req - r.uniform(0.0, 120.0) - duration
        else:
            state = UploadState.long_ago
            upload_start = t_req - r.uniform(600.0, 6 * 3600.0) - duration
        tests.append(
            RenderRequest(
                index=i,
                t_request=t_req,
                size_gb=size_gb,
                needed_gb=needed,
                files=files,
                uplink_gb_s=uplink,
                upload_start=upload_start,
                state=state,
                frames=tuple(_frame(r, p, needed) for _ in range(p.test_frames)),
                stream_gb_s=_stream_gb_s(r, p),
            )
        )
    jobs: list[FullJob] = []
    t = start
    while True:
        t += rng.expovariate(p.full_jobs_per_hour / 3600.0)
        if t >= end:
            break
        n_tasks = rng.randint(*p.full_tasks)
        jobs.append(
            FullJob(
                t_arrival=t,
                scene_gb=min(400.0, max(1.0, _lognormal(rng, p.full_scene_median_gb, 1.0))),
                stream_gb_s=_stream_gb_s(rng, p),
                task_s=tuple(
                    _lognormal(rng, p.full_task_median_s, p.full_task_sigma) for _ in range(n_tasks)
                ),
            )
        )
    return Workload(start, end, tuple(tests), tuple(jobs))


# -- the event engine and the link ----------------------------------------------------------


class Engine:
    """A simulated clock and a heap of timed callbacks (ties run in scheduling order)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), self._seq, fn))

    def run(self, done: Callable[[], bool]) -> None:
        while self._heap and not done():
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()


@dataclass(eq=False)
class Transfer:
    """Bytes to copy from S3 to farm storage; ``src_left`` is not uploaded yet."""

    remaining: float
    ahead: float  # uploaded, not staged yet
    src_left: float
    src_rate: float
    cap: float
    prio: int
    on_done: Callable[[], None]
    rate: float = 0.0
    done: bool = False

    def effective_cap(self) -> float:
        if self.ahead > _EPS:
            return self.cap
        if self.src_left > _EPS:
            return min(self.cap, self.src_rate)
        return 0.0


#: Transfer classes: a requested test render's needed assets go first (``ours``).
PRIO_TEST = 0
PRIO_BULK = 1


class Link:
    """The farm storage's ingest from S3: a fluid model, max-min fair within a class,
    classes served in order (strict priority)."""

    def __init__(self, engine: Engine, capacity_gb_s: float) -> None:
        self.engine = engine
        self.capacity = capacity_gb_s
        self.active: list[Transfer] = []
        self._last = engine.now
        self._version = 0

    def add(self, tr: Transfer) -> None:
        self._advance()
        self.active.append(tr)
        self._reschedule()

    def set_prio(self, tr: Transfer, prio: int) -> None:
        if tr.done or tr.prio == prio:
            return
        self._advance()
        tr.prio = prio
        self._reschedule()

    def _advance(self) -> None:
        now = self.engine.now
        dt = now - self._last
        self._last = now
        if dt <= 0:
            return
        for tr in self.active:
            produced = tr.src_rate * dt
            if produced > tr.src_left:
                produced = tr.src_left
            staged = tr.rate * dt
            if staged > tr.ahead + produced:
                staged = tr.ahead + produced
            if staged > tr.remaining:
                staged = tr.remaining
            tr.ahead += produced - staged
            tr.src_left -= produced
            tr.remaining -= staged

    def _share(self) -> None:
        """Water-filling: each class in order, within a class the smallest caps first."""
        left = self.capacity
        prios = {tr.prio for tr in self.active}
        for prio in sorted(prios) if len(prios) > 1 else prios:
            group = sorted(
                ((tr.effective_cap(), id(tr), tr) for tr in self.active if tr.prio == prio),
                key=lambda c: c[0],
            )
            n = len(group)
            for i, (cap, _, tr) in enumerate(group):
                share = left / (n - i)
                tr.rate = cap if cap < share else share
                left -= tr.rate

    def _reschedule(self) -> None:
        finished = []
        for tr in self.active:  # float dust would schedule events closer than the clock ticks
            if tr.ahead < _EPS:
                tr.ahead = 0.0
            if tr.src_left < _EPS:
                tr.src_left = 0.0
            if tr.remaining <= _EPS or (tr.ahead == 0.0 and tr.src_left == 0.0):
                finished.append(tr)
        if finished:
            self.active = [tr for tr in self.active if tr not in finished]
            for tr in finished:
                tr.done = True
                tr.remaining = 0.0
        self._share()
        nxt = math.inf
        for tr in self.active:
            src = 0.0
            if tr.src_left > 0.0:
                src = tr.src_rate
                if src > 0.0 and tr.src_left / src < nxt:
                    nxt = tr.src_left / src
            if tr.ahead > 0.0 and tr.rate > src and tr.ahead / (tr.rate - src) < nxt:
                nxt = tr.ahead / (tr.rate - src)
        self._version += 1
        if nxt < math.inf:
            version = self._version
            self.engine.at(self.engine.now + max(nxt, 1e-6), lambda: self._on_event(version))
        for tr in finished:
            tr.on_done()

    def _on_event(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        self._reschedule()


# -- workers ----------------------------------------------------------------------------------


class WState(StrEnum):
    booting = "booting"
    idle = "idle"
    full = "full"
    stopping = "stopping"  # its full task was interrupted; free once that has taken effect
    test = "test"


class Pool(StrEnum):
    full = "full"  # the full-render fleet
    standby = "standby"  # the warm standby pool: test frames only
    test_vm = "test_vm"  # booted for one test frame (naive: shut down after it)


@dataclass(eq=False)
class Worker:
    pool: Pool
    state: WState = WState.booting
    task: float = 0.0  # the running full task's duration
    task_started: float = 0.0
    gen: int = 0  # invalidates a pending "task done" or "idle timeout" event


@dataclass(eq=False)
class RequestRun:
    req: RenderRequest
    frames_left: int
    needed: Transfer | None = None  # ``ours``: the needed assets' staging
    requested: bool = False
    staged_at: float | None = None  # the needed assets (``naive``: the whole scene) staged
    released_at: float | None = None  # the frames may start: what they need is staged
    last_finish: float = 0.0
    max_wait: float = 0.0  # the longest a frame waited for its worker after the release
    sources: list[Source] = field(default_factory=list)
    hedged: set[int] = field(default_factory=set)  # frames with a cold boot of their own


@dataclass(frozen=True)
class RequestResult:
    index: int
    size_gb: float
    needed_gb: float
    state: UploadState
    #: From the clock start (``RenderRequest.clock_start``) to ready.
    ttr_s: float
    #: From the request itself to ready.
    ttr_from_request_s: float
    #: From the clock start to the release: what the frames need is staged.
    staged_s: float
    #: The longest a frame waited after the release for a worker to pick it up.
    worker_wait_s: float
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class RunResult:
    strategy: Strategy
    results: tuple[RequestResult, ...]
    #: Full-render work thrown away by preemption (worker-seconds).
    preempted_worker_s: float
    #: VMs booted for test frames (``ours``: also those whose frame found a worker first).
    test_boots: int


class Farm:
    """One strategy's run over a workload."""

    def __init__(self, p: Params, strategy: Strategy, work: Workload, seed: int) -> None:
        self.p = p
        self.strategy = strategy
        self.work = work
        self.standby = p.standby if strategy is Strategy.ours else 0
        self.rng = random.Random(seed * 7919 + 1)  # boots of fleet and standby workers
        self.engine = Engine(work.start)
        self.link = Link(self.engine, p.link_gbps / 8.0)
        self.workers: list[Worker] = []
        #: Workers by pool (dicts: ordered, so runs stay deterministic).
        self.pools: dict[Pool, dict[Worker, None]] = {pool: {} for pool in Pool}
        self.full_queue: deque[float] = deque()
        self.test_queue: deque[tuple[RequestRun, int]] = deque()
        self.launch_queue: list[tuple[int, int, float, Worker]] = []
        self.tokens = p.launches_per_minute
        self.tokens_at = work.start
        self.launch_wake = False
        self.preempted_worker_s = 0.0
        self.test_boots = 0
        self.results: list[RequestResult] = []
        self.measured_left = sum(1 for r in work.tests if r.t_request >= 0.0)
        self._seq = 0

    def run(self) -> RunResult:
        for _ in range(self.standby):
            self._add(Worker(Pool.standby, WState.idle))
        for job in self.work.full_jobs:
            self.engine.at(job.t_arrival, partial(self._full_job_arrives, job))
        for req in self.work.tests:
            run = RequestRun(req, frames_left=len(req.frames))
            if self.strategy is Strategy.ours:
                if self.p.stage_as_uploaded:
                    self._follow_staging(run)
                else:
                    self.engine.at(req.clock_start, partial(self._stage_needed_now, run))
                self.engine.at(req.t_request, partial(self._ours_requested, run))
            else:
                at = max(req.t_request, req.upload_end)
                self.engine.at(at, partial(self._naive_stage, run))
        self.engine.run(lambda: self.measured_left == 0)
        return RunResult(
            self.strategy,
            tuple(sorted(self.results, key=lambda r: r.index)),
            self.preempted_worker_s,
            self.test_boots,
        )

    # -- the fleet's VMs: the autoscaler launches at most launches_per_minute ---------------

    def _add(self, w: Worker) -> None:
        self.workers.append(w)
        self.pools[w.pool][w] = None

    def _remove(self, w: Worker) -> None:
        self.workers.remove(w)
        del self.pools[w.pool][w]

    def _move(self, w: Worker, pool: Pool) -> None:
        del self.pools[w.pool][w]
        w.pool = pool
        self.pools[pool][w] = None

    def _launch(self, prio: int, pool: Pool) -> None:
        """A fleet (``prio`` 2) or standby (1) VM through the scale-out limit."""
        w = Worker(pool)
        self._add(w)
        self._seq += 1
        heapq.heappush(self.launch_queue, (prio, self._seq, cold_boot(self.rng, self.p), w))
        self._drain_launches()

    def _drain_launches(self) -> None:
        now = self.engine.now
        per_s = self.p.launches_per_minute / 60.0
        self.tokens = min(self.p.launches_per_minute, self.tokens + (now - self.tokens_at) * per_s)
        self.tokens_at = now
        while self.launch_queue and self.tokens >= 1.0 - 1e-9:
            _, _, boot_s, w = heapq.heappop(self.launch_queue)
            self.tokens -= 1.0
            self.engine.at(now + boot_s, partial(self._free, w))
        if self.launch_queue and not self.launch_wake:
            self.launch_wake = True
            self.engine.at(now + (1.0 - self.tokens) / per_s, self._launch_wake)

    def _launch_wake(self) -> None:
        self.launch_wake = False
        self._drain_launches()

    # -- the full-render fleet and the standby pool -----------------------------------------

    def _full_job_arrives(self, job: FullJob) -> None:
        def staged() -> None:
            self.full_queue.extend(job.task_s)
            self._feed_full()

        cap = self._cap(job.stream_gb_s, job.scene_gb)
        self.link.add(Transfer(job.scene_gb, job.scene_gb, 0.0, 0.0, cap, PRIO_BULK, staged))

    def _feed_full(self) -> None:
        """Queued full tasks to idle fleet workers, then boot more, up to ``fleet_max``."""
        for w in self.workers:
            if not self.full_queue:
                return
            if w.pool is Pool.full and w.state is WState.idle:
                self._start_full(w)
        fleet = self.pools[Pool.full]
        booting = sum(1 for w in fleet if w.state is WState.booting)
        for _ in range(min(self.p.fleet_max - len(fleet), len(self.full_queue) - booting)):
            self._launch(2, Pool.full)

    def _start_full(self, w: Worker) -> None:
        w.state = WState.full
        w.task = self.full_queue.popleft()
        w.task_started = self.engine.now
        w.gen += 1
        gen = w.gen
        self.engine.at(self.engine.now + w.task, lambda: self._full_done(w, gen))

    def _full_done(self, w: Worker, gen: int) -> None:
        if w.state is WState.full and w.gen == gen:  # not interrupted meanwhile
            self._free(w)

    def _standby_others(self, w: Worker) -> int:
        """Standby workers other than ``w`` that are idle or booting."""
        return sum(1 for x in self.pools[Pool.standby] if x is not w and x.state is not WState.test)

    def _free(self, w: Worker, source: Source | None = None) -> None:
        """A worker with nothing to do: the first waiting test frame, else its pool's work.
        ``source`` says where a frame it takes got its worker from."""
        if self.test_queue:
            run, i = self.test_queue.popleft()
            if w.pool is Pool.standby:
                self._replace_standby(w)
            default = Source.standby if w.pool is Pool.standby else Source.warm
            self._start_frame(w, run, i, self.engine.now, source or default)
            return
        if w.pool is Pool.test_vm:
            if self.strategy is Strategy.naive:  # booted for one frame: it goes away
                self._remove(w)
                return
            self._move(w, Pool.standby if self._standby_others(w) < self.standby else Pool.full)
        if w.pool is Pool.standby:
            if self._standby_others(w) < self.standby:
                w.state = WState.idle
                return
            self._move(w, Pool.full)  # its replacement is there: it joins the fleet
        if len(self.pools[Pool.full]) > self.p.fleet_max:
            self._remove(w)  # over the fleet's size: it shuts down
            return
        if self.full_queue:
            self._start_full(w)
            return
        w.state = WState.idle
        w.gen += 1
        gen = w.gen
        self.engine.at(self.engine.now + self.p.idle_shutdown_s, lambda: self._idle_out(w, gen))

    def _idle_out(self, w: Worker, gen: int) -> None:
        if w.state is WState.idle and w.gen == gen and w.pool is Pool.full:
            self._remove(w)

    def _replace_standby(self, w: Worker) -> None:
        """``w`` leaves the standby pool for a test frame: boot a replacement."""
        if self._standby_others(w) < self.standby:
            self._launch(1, Pool.standby)

    # -- staging ----------------------------------------------------------------------------

    def _cap(self, stream_gb_s: float, file_gb: float) -> float:
        """A transfer's own limit: parallel ranged GETs, and S3's GETs per second."""
        p = self.p
        per_get_gb = min(p.range_mb / 1000.0, file_gb)
        return min(p.streams * stream_gb_s, p.s3_gets_per_s * per_get_gb)

    def _follow_staging(self, run: RequestRun) -> None:
        """``ours``: stage the scene's files as their uploads complete, the needed ones first."""
        req = run.req
        cap = self._cap(req.stream_gb_s, req.file_gb)
        needed_gb = min(max(req.needed_gb, req.file_gb), req.size_gb)
        start = self.work.start

        def follow(lo: float, hi: float, at: float, done: Callable[[], None]) -> Transfer | None:
            """Bytes [lo, hi) of the upload, readable from ``at`` on; None: staged already."""
            if req.upload_start + hi / req.uplink_gb_s <= start:
                return None
            t0 = max(at, start)
            uploaded = min(hi, max(lo, (t0 - req.upload_start) * req.uplink_gb_s)) - lo
            before = uploaded if at < start else 0.0  # staged before the simulation began
            rate = req.uplink_gb_s
            return Transfer(
                hi - lo - before, uploaded - before, hi - lo - uploaded, rate, cap, PRIO_BULK, done
            )

        def needed_staged() -> None:
            run.staged_at = self.engine.now
            if run.requested:
                self._ours_release(run)

        first_file = req.upload_start + min(req.file_gb, needed_gb) / req.uplink_gb_s
        needed = follow(0.0, needed_gb, first_file, needed_staged)
        run.needed = needed

        def begin_needed() -> None:
            if needed is None:
                needed_staged()
                return
            if run.requested:
                needed.prio = PRIO_TEST
            self.link.add(needed)

        self.engine.at(max(first_file, start), begin_needed)
        if needed_gb < req.size_gb:
            rest = follow(needed_gb, req.size_gb, req.needed_uploaded_at, lambda: None)
            if rest is not None:
                self.engine.at(max(req.needed_uploaded_at, start), lambda: self.link.add(rest))

    def _stage_needed_now(self, run: RequestRun) -> None:
        """Without staging as uploaded: the needed assets from the clock start on, ahead of
        everything else, the rest once the upload has ended."""
        req = run.req
        cap = self._cap(req.stream_gb_s, req.file_gb)
        needed_gb = min(max(req.needed_gb, req.file_gb), req.size_gb)

        def staged() -> None:
            run.staged_at = self.engine.now
            if run.requested:
                self._ours_release(run)

        run.needed = Transfer(needed_gb, needed_gb, 0.0, 0.0, cap, PRIO_TEST, staged)
        self.link.add(run.needed)
        rest = req.size_gb - needed_gb
        if rest > 0:
            transfer = Transfer(rest, rest, 0.0, 0.0, cap, PRIO_BULK, lambda: None)
            self.engine.at(req.upload_end, lambda: self.link.add(transfer))

    # -- ours -------------------------------------------------------------------------------

    def _ours_requested(self, run: RequestRun) -> None:
        """Needed assets to the front of the link; cold boots at once for the frames that
        no idle worker is there for."""
        run.requested = True
        if run.needed is not None and run.needed in self.link.active:
            self.link.set_prio(run.needed, PRIO_TEST)
        idle = sum(1 for w in self.workers if w.state is WState.idle)
        for i in range(max(0, len(run.req.frames) - idle)):
            self._hedge(run, i)
        if run.staged_at is not None:
            self._ours_release(run)

    def _hedge(self, run: RequestRun, i: int) -> None:
        """A VM cold-booted for frame ``i`` of ``run`` (no scale-out limit: a handful),
        with that frame's drawn boot time; it takes its own frame if that still waits."""
        if i in run.hedged:
            return
        run.hedged.add(i)
        self.test_boots += run.req.t_request >= 0.0
        w = Worker(Pool.test_vm)
        self._add(w)

        def up() -> None:
            mine = [k for k, (r, _) in enumerate(self.test_queue) if r is run]
            if mine:
                k = next((k for k in mine if self.test_queue[k][1] == i), mine[0])
                _, j = self.test_queue[k]
                del self.test_queue[k]
                self._start_frame(w, run, j, self.engine.now, Source.cold)
            else:
                self._free(w, Source.cold)

        self.engine.at(self.engine.now + run.req.frames[i].cold_boot_s, up)

    def _ours_release(self, run: RequestRun) -> None:
        """The needed assets are staged: each frame takes an idle standby or fleet worker,
        else waits for whichever comes first: a fleet worker finishing its task, its own cold
        boot, or (past the deadline guard) a preempted full-render task."""
        if run.released_at is not None:
            return
        now = run.released_at = self.engine.now
        idle = [w for w in self.workers if w.state is WState.idle]
        standby = deque(w for w in idle if w.pool is Pool.standby)
        warm = deque(w for w in idle if w.pool is Pool.full)
        waiting = []
        for i in range(len(run.req.frames)):
            if standby:
                w = standby.popleft()
                self._replace_standby(w)
                self._start_frame(w, run, i, now, Source.standby)
            elif warm:
                self._start_frame(warm.popleft(), run, i, now, Source.warm)
            else:
                self.test_queue.append((run, i))
                waiting.append(i)
                self._hedge(run, i)
        if waiting and self.p.interruptible_percent > 0:
            self.engine.at(self._guard_time(run), lambda: self._preempt_for(run, waiting))

    def _guard_time(self, run: RequestRun) -> float:
        """The last moment a preempted worker still makes the deadline with a render of
        ``render_reserve_s``: the boot-time budget runs out."""
        p, req = self.p, run.req
        load = req.needed_gb / p.read_gb_s[0]
        after = load + p.render_reserve_s + p.overhead_s + p.preempt_s[1] + p.dispatch_s[1]
        return req.clock_start + DEADLINE_S - after

    def _preemptable(self) -> list[Worker]:
        """Fleet workers on a full-render task below ``interruptible_percent``, the least
        work lost first."""
        now, limit = self.engine.now, self.p.interruptible_percent / 100.0
        return sorted(
            (
                w
                for w in self.pools[Pool.full]
                if w.state is WState.full and now - w.task_started < limit * w.task
            ),
            key=lambda w: -w.task_started,
        )

    def _preempt_for(self, run: RequestRun, frames: list[int]) -> None:
        """Interrupt a full-render task for each frame of ``run`` still waiting; a stopped
        worker takes the first waiting frame (or its own work if a frame found one)."""
        still = [i for i in frames if (run, i) in self.test_queue]
        victims = self._preemptable()[: len(still)]
        now = self.engine.now
        for w, i in zip(victims, still, strict=False):
            self.preempted_worker_s += now - w.task_started
            self.full_queue.appendleft(w.task)  # requeued: it renders again from the start
            w.state = WState.stopping
            w.gen += 1
            stop = run.req.frames[i].preempt_s
            self.engine.at(now + stop, partial(self._free, w, Source.preempted))
        if victims:
            self._feed_full()  # the requeued tasks may want a VM

    # -- naive ------------------------------------------------------------------------------

    def _naive_stage(self, run: RequestRun) -> None:
        """The whole scene once its upload ended, then a cold-booted VM per frame."""
        req = run.req

        def staged() -> None:
            run.staged_at = run.released_at = self.engine.now
            for i, frame in enumerate(req.frames):
                w = Worker(Pool.test_vm)
                self._add(w)
                self.test_boots += req.t_request >= 0.0
                self.engine.at(
                    self.engine.now + frame.cold_boot_s,
                    partial(self._cold_frame, w, run, i),
                )

        cap = self._cap(req.stream_gb_s, req.file_gb)
        self.link.add(Transfer(req.size_gb, req.size_gb, 0.0, 0.0, cap, PRIO_BULK, staged))

    # -- test frames ------------------------------------------------------------------------

    def _cold_frame(self, w: Worker, run: RequestRun, i: int) -> None:
        self._start_frame(w, run, i, self.engine.now, Source.cold)

    def _start_frame(
        self, w: Worker, run: RequestRun, i: int, available: float, source: Source
    ) -> None:
        """Frame ``i`` on ``w`` from ``available`` on: the task is picked up, the needed
        assets are read, the frame renders."""
        frame = run.req.frames[i]
        w.state = WState.test
        w.gen += 1
        run.sources.append(source)
        assert run.released_at is not None
        run.max_wait = max(run.max_wait, available + frame.dispatch_s - run.released_at)
        finish = available + frame.dispatch_s + frame.load_s + frame.render_s

        def done() -> None:
            run.frames_left -= 1
            run.last_finish = max(run.last_finish, finish)
            if run.frames_left == 0:
                self._ready(run)
            self._free(w)

        self.engine.at(finish, done)

    def _ready(self, run: RequestRun) -> None:
        req = run.req
        if req.t_request < 0.0:  # the warm-up
            return
        assert run.released_at is not None
        ready = run.last_finish + self.p.overhead_s
        self.results.append(
            RequestResult(
                index=req.index,
                size_gb=req.size_gb,
                needed_gb=req.needed_gb,
                state=req.state,
                ttr_s=ready - req.clock_start,
                ttr_from_request_s=ready - req.t_request,
                staged_s=max(0.0, run.released_at - req.clock_start),
                worker_wait_s=run.max_wait,
                sources=tuple(run.sources),
            )
        )
        self.measured_left -= 1


def simulate(p: Params, strategy: Strategy, work: Workload, seed: int = SEED) -> RunResult:
    """Run one strategy over a drawn workload (``seed`` draws the fleet's own boots)."""
    return Farm(p, strategy, work, seed).run()


# -- the comparison and the bench section ---------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    label: str
    strategy: Strategy
    params: Params


@dataclass(frozen=True)
class Summary:
    """Time-to-ready of the 200 GB test renders of one run."""

    label: str
    strategy: Strategy
    count: int
    p50: float
    p95: float
    p99: float
    within_deadline: float  # share ready within DEADLINE_S
    p99_from_request: float
    #: Share of the test frames by where their worker came from.
    sources: dict[Source, float]
    preempted_worker_h_per_day: float
    test_boots_per_day: float

    def row(self) -> dict[str, object]:
        return {
            "scenario": self.label,
            "strategy": self.strategy.value,
            "count": self.count,
            "p50_s": round(self.p50, 1),
            "p95_s": round(self.p95, 1),
            "p99_s": round(self.p99, 1),
            "within_10_min": round(self.within_deadline, 4),
            "p99_from_request_s": round(self.p99_from_request, 1),
            "frames_by_source": {k.value: round(v, 3) for k, v in self.sources.items()},
            "preempted_worker_h_per_day": round(self.preempted_worker_h_per_day, 1),
            "test_boots_per_day": round(self.test_boots_per_day, 1),
        }


def summarise(label: str, run: RunResult, days: float, size_gb: float = 200.0) -> Summary:
    chosen = [r for r in run.results if r.size_gb == size_gb]
    ttr = sorted(r.ttr_s for r in chosen)
    from_request = sorted(r.ttr_from_request_s for r in chosen)
    frames = [s for r in chosen for s in r.sources]
    return Summary(
        label=label,
        strategy=run.strategy,
        count=len(chosen),
        p50=percentile(ttr, 50),
        p95=percentile(ttr, 95),
        p99=percentile(ttr, 99),
        within_deadline=sum(1 for t in ttr if t <= DEADLINE_S) / len(ttr) if ttr else math.nan,
        p99_from_request=percentile(from_request, 99),
        sources={s: frames.count(s) / len(frames) for s in Source} if frames else {},
        preempted_worker_h_per_day=run.preempted_worker_s / 3600.0 / days,
        test_boots_per_day=run.test_boots / days,
    )


#: Render-worker start after the OS is up when it goes badly: 2-10 min (the anchors found no
#: measured figure; managed HPC products quote 2-18 min node starts).
SLOW_WORKER_START_S = (120.0, 600.0)


def scenarios(base: Params) -> list[Scenario]:
    """The comparison, every run on the same draws: the standby pool's size at the boot
    times measured and at slow ones, the deadline guard's preemption, packed scenes."""
    slow = replace(base, worker_start_s=SLOW_WORKER_START_S)
    packed = replace(base, packed=True)
    n = base.standby
    return [
        Scenario("(a) naive", Strategy.naive, base),
        *(Scenario(f"(b) standby {k}", Strategy.ours, replace(base, standby=k)) for k in (0, 1, 2)),
        *(
            Scenario(f"(b) standby {k}, slow boots", Strategy.ours, replace(slow, standby=k))
            for k in (0, 1, 2)
        ),
        Scenario(
            "(b) standby 0, slow boots, no preemption",
            Strategy.ours,
            replace(slow, standby=0, interruptible_percent=0.0),
        ),
        Scenario(
            f"(b) standby {n}, staged only from the request",
            Strategy.ours,
            replace(base, stage_as_uploaded=False),
        ),
        Scenario("(a) naive, packed scenes", Strategy.naive, packed),
        Scenario(f"(b) standby {n}, packed scenes", Strategy.ours, packed),
    ]


def compare(base: Params, seed: int = SEED) -> tuple[list[Summary], dict[str, RunResult]]:
    """Run every scenario; a workload is drawn once per distinct scene model."""
    workloads: dict[tuple[bool, tuple[float, float]], Workload] = {}
    summaries: list[Summary] = []
    runs: dict[str, RunResult] = {}
    for sc in scenarios(base):
        key = (sc.params.packed, sc.params.worker_start_s)
        work = workloads.get(key)
        if work is None:
            work = workloads[key] = generate_workload(sc.params, seed)
        run = simulate(sc.params, sc.strategy, work, seed)
        runs[sc.label] = run
        summaries.append(summarise(sc.label, run, sc.params.days))
    return summaries, runs


def table(summaries: Sequence[Summary]) -> str:
    """The comparison as a Markdown table (printed by the bench section, pasted in docs)."""
    lines = [
        "| scenario (same draws) | n | p50 s | p95 s | p99 s | within 10 min"
        " | p99 from request s | frames: standby/warm/preempted/cold % | preempted worker-h/day"
        " | test VMs booted/day |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        src = "/".join(f"{s.sources.get(k, 0.0) * 100:.0f}" for k in Source)
        lines.append(
            f"| {s.label} | {s.count} | {s.p50:.0f} | {s.p95:.0f} | {s.p99:.0f}"
            f" | {s.within_deadline * 100:.1f} % | {s.p99_from_request:.0f} | {src}"
            f" | {s.preempted_worker_h_per_day:.1f} | {s.test_boots_per_day:.0f} |"
        )
    return "\n".join(lines)


def by_upload_state(run: RunResult) -> str:
    """p50 and p99 of the 200 GB test renders per upload state at the request."""
    parts = []
    for state in UploadState:
        ttr = sorted(r.ttr_s for r in run.results if r.size_gb == 200.0 and r.state is state)
        if ttr:
            parts.append(
                f"{state.value} (n={len(ttr)}): p50 {percentile(ttr, 50):.0f} s,"
                f" p99 {percentile(ttr, 99):.0f} s"
            )
    return "; ".join(parts)


def budget(run: RunResult) -> str:
    """Where the time of the 200 GB test renders went: staging and the wait for a worker."""
    chosen = [r for r in run.results if r.size_gb == 200.0]
    staged = sorted(r.staged_s for r in chosen)
    wait = sorted(r.worker_wait_s for r in chosen)
    return (
        f"staged after the clock start p50 {percentile(staged, 50):.0f} s,"
        f" p99 {percentile(staged, 99):.0f} s; then a worker (picked up, Blender up)"
        f" p50 {percentile(wait, 50):.0f} s, p99 {percentile(wait, 99):.0f} s"
    )


def measure_testrender_sim(quick: bool) -> list[Figure]:
    """Section 14: the design against the naive path on the same draws (no servers)."""
    base = Params(days=2.0 if quick else 7.0)
    t0 = time.perf_counter()
    summaries, runs = compare(base)
    wall = time.perf_counter() - t0
    by = {s.label: s for s in summaries}
    n = base.standby
    design_label = f"(b) standby {n}"
    design, naive = by[design_label], by["(a) naive"]
    tests = runs["(a) naive"].results
    print(
        f"   {len(tests)} test renders measured ({naive.count} of 200 GB) over {base.days:g}"
        f" simulated days, seed {SEED}; fleet up to {base.fleet_max}, link"
        f" {base.link_gbps:g} Gb/s; the design is {design_label}; {wall:.1f} s of simulation",
        flush=True,
    )
    print("\n" + table(summaries) + "\n")
    for label in (design_label, "(a) naive"):
        print(f"   {label} at 200 GB: {budget(runs[label])}")
        print(f"     by upload state: {by_upload_state(runs[label])}", flush=True)
    baseline = "(a) naive on the same draws: whole scene staged, then a cold boot, then render"
    note = (
        f"{naive.count} test renders of 200 GB, {base.days:g} simulated days, seed {SEED};"
        " the clock starts at the request, or once the frames' assets are in the bucket"
    )

    def p99(label: str) -> float:
        return by[label].p99

    return [
        Figure(
            SECTION,
            "(b) p99 time-to-ready at 200 GB (simulated)",
            design.p99,
            "s",
            baseline=naive.p99,
            baseline_name=baseline,
            target=DEADLINE_S,
            direction="max",
            note=note,
            extra={"scenarios": [s.row() for s in summaries], "seed": SEED, "days": base.days},
        ),
        Figure(SECTION, "(b) p50 time-to-ready at 200 GB", design.p50, "s", baseline=naive.p50),
        Figure(SECTION, "(b) p95 time-to-ready at 200 GB", design.p95, "s", baseline=naive.p95),
        Figure(
            SECTION,
            "(b) 200 GB test renders ready within 10 min",
            design.within_deadline * 100.0,
            "%",
            baseline=naive.within_deadline * 100.0,
        ),
        *(
            Figure(SECTION, f"(b) p99 at 200 GB, standby {k}", p99(f"(b) standby {k}"), "s")
            for k in (0, 1, 2)
            if k != n
        ),
        Figure(
            SECTION,
            f"(b) p99 at 200 GB, standby {n}, slow boots (worker start 2-10 min)",
            p99(f"(b) standby {n}, slow boots"),
            "s",
        ),
        Figure(
            SECTION,
            "(b) p99 at 200 GB, standby 0, slow boots",
            p99("(b) standby 0, slow boots"),
            "s",
            baseline=p99("(b) standby 0, slow boots, no preemption"),
            baseline_name="the same without the deadline guard's preemption",
        ),
        Figure(
            SECTION,
            f"(b) p99 at 200 GB, standby {n}, staged only from the request (needed first)",
            p99(f"(b) standby {n}, staged only from the request"),
            "s",
        ),
        Figure(
            SECTION,
            "(b) p99 at 200 GB, packed scenes (every frame needs the whole file)",
            p99(f"(b) standby {n}, packed scenes"),
            "s",
            baseline=p99("(a) naive, packed scenes"),
            baseline_name="(a) naive, packed scenes",
        ),
        Figure(
            SECTION,
            "(b) full-render work lost to preemption",
            design.preempted_worker_h_per_day,
            "worker-h/day",
        ),
    ]
