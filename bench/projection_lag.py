"""8. Live projection lag: job events appended at a steady rate while the jobs projector runs.

The projector runs as a service runs it (``libs/runtime.py``): a ``Projector`` of
``JobsProjection`` with the 2 s fallback poll, woken by the process's ``FeedWatcher``
(50 ms) and, for appends made through the same ``EventStore``, at once. Two runs:

* **local**: the events are appended through the projector's own store (as the job
  service's command server does), so each append wakes it at once;
* **elsewhere**: through another pool and store (another replica or process), so only the
  feed watcher wakes it.

An event's lag is from its ``recorded_at`` (and from the append's return) to the moment
the projector's checkpoint passed it: the batch that holds it has committed, its row is
readable. Events go to ``jobs`` jobs submitted beforehand, round-robin, as renames.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.cpu import CpuMeter, cpu_text
from bench.infra import Infra
from bench.rebuild import _templates
from bench.report import Figure, percentile
from bench.store_bench import META
from contracts.base import EVENTS
from contracts.jobs import JobRenamed
from libs.config import BaseServiceSettings
from libs.eventstore.feed import FeedWatcher
from libs.eventstore.processor import Projector
from libs.eventstore.store import EventStore, NewEvent, Position, StreamWrite, create_pool
from libs.migrations import declared_plan, migrate
from libs.runtime import TAILER_FALLBACK_POLL_SECONDS
from services.job.projections import JobsProjection

TARGET_P99_MS = 100.0


@dataclass
class LagOptions:
    rate: float = 2000.0
    seconds: float = 5.0
    tick: float = 0.005
    jobs: int = 5000


class _Timed(Projector):
    """A projector that notes when its checkpoint passed each position."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, JobsProjection())
        self.progress: list[tuple[Position, float]] = []

    async def _advanced(self, to: Position) -> None:
        self.progress.append((to, time.time()))
        await super()._advanced(to)


async def _seed(store: EventStore, jobs: list[str]) -> None:
    typ, _, data = _templates(datetime.now(UTC))[0]
    cls = EVENTS.cls_for(typ)
    for first in range(0, len(jobs), 500):
        await store.append_streams(
            [
                StreamWrite(
                    f"job-{j}",
                    0,
                    [NewEvent(cls.model_validate({**data, "job_id": j, "owner_id": "usr_bench"}))],
                )
                for j in jobs[first : first + 500]
            ]
        )


async def _run(
    writer: EventStore, projector: _Timed, jobs: list[str], versions: dict[str, int], o: LagOptions
) -> tuple[list[float], list[float], float, int, dict[str, float]]:
    """Append at ``o.rate`` for ``o.seconds``; returns the lags (s) from recorded_at and from
    the append's return, the write rate, late ticks and CPU shares."""
    per_tick = max(1, round(o.rate * o.tick))
    ticks = int(o.seconds / o.tick)
    appended: list[tuple[Position, float, float]] = []  # cursor, recorded_at, returned
    loop = asyncio.get_running_loop()
    late, n = 0, 0
    meter = CpuMeter()
    meter.start()
    t_start = loop.time()
    for k in range(ticks):
        delay = t_start + k * o.tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -o.tick:
            late += 1
        writes = []
        for _ in range(per_tick):
            job = jobs[n % len(jobs)]
            n += 1
            writes.append(
                StreamWrite(
                    f"job-{job}",
                    versions[job],
                    [NewEvent(JobRenamed(job_id=job, name=f"take {n}"), metadata=META)],
                )
            )
            versions[job] += 1
        recorded = await writer.append_streams(writes)
        returned = time.time()
        appended += [(r.cursor, r.recorded_at.timestamp(), returned) for r in recorded]
    written_s = loop.time() - t_start
    last = max(c for c, _, _ in appended)
    async with asyncio.timeout(30):
        await projector.wait_for(last)
    cpu = meter.stop()
    positions = [p for p, _ in projector.progress]
    from_recorded, from_returned = [], []
    for cursor, recorded_at, returned in appended:
        i = bisect.bisect_left(positions, cursor)
        seen = projector.progress[i][1]
        from_recorded.append(seen - recorded_at)
        from_returned.append(seen - returned)
    return sorted(from_recorded), sorted(from_returned), len(appended) / written_s, late, cpu


async def run_projection_lag(infra: Infra, o: LagOptions) -> list[Figure]:
    dsn = await infra.create_database("lag")
    settings = BaseServiceSettings(service_name="bench-lag", database_url=dsn)
    pool = await create_pool(dsn, max_size=settings.db_pool_size)
    other = await create_pool(dsn, max_size=4)
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    figures: list[Figure] = []
    try:
        await migrate(pool, "job", declared_plan("job"))
        store = EventStore(pool, "job")
        tag = uuid.uuid4().hex[:6]
        jobs = [f"job_{tag}{i:020d}" for i in range(o.jobs)]
        await _seed(store, jobs)
        versions = dict.fromkeys(jobs, 1)
        projector = _Timed(store)
        await projector.catch_up()
        projector.poll_interval = TAILER_FALLBACK_POLL_SECONDS
        feed = FeedWatcher(store, settings.feed_poll_seconds)
        tasks = [
            asyncio.create_task(projector.run(stopping)),
            asyncio.create_task(feed.run(stopping)),
        ]
        async with asyncio.timeout(10):
            while not projector.is_leader:
                await asyncio.sleep(0.01)
        for where, writer in (("local", store), ("elsewhere", EventStore(other, "job"))):
            lag, returned, rate, late, cpu = await _run(writer, projector, jobs, versions, o)
            p50, p99 = percentile(lag, 50) * 1000, percentile(lag, 99) * 1000
            r50, r99 = percentile(returned, 50) * 1000, percentile(returned, 99) * 1000
            how = (
                "appended through the projector's store (wakes it at once)"
                if where == "local"
                else "appended through another store (only the feed watcher wakes it,"
                f" every {settings.feed_poll_seconds * 1000:.0f} ms)"
            )
            print(
                f"  {where}: {len(lag):,} events at {rate:,.0f} events/s ({late} ticks late),"
                f" {how}; lag from recorded_at p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                f" max {percentile(lag, 100) * 1000:.1f} ms; from append return p50"
                f" {r50:.1f} ms, p99 {r99:.1f} ms"
            )
            print(f"    {cpu_text(cpu)}")
            section = "8 projection lag"
            extra = {
                "events": len(lag),
                "write_rate": rate,
                "late_ticks": late,
                "from_append_return_p50_ms": r50,
                "from_append_return_p99_ms": r99,
                **cpu,
            }
            figures += [
                Figure(
                    section,
                    f"{where} p50",
                    p50,
                    "ms",
                    target=TARGET_P99_MS,
                    direction="max",
                    extra=extra,
                ),
                Figure(
                    section,
                    f"{where} p99",
                    p99,
                    "ms",
                    target=TARGET_P99_MS,
                    direction="max",
                    note=(
                        f"jobs projector, {rate:,.0f} events/s for {o.seconds:.0f} s over"
                        f" {o.jobs:,} jobs; {how}; from append return: p50 {r50:.1f} ms,"
                        f" p99 {r99:.1f} ms"
                    ),
                ),
            ]
    finally:
        stopping.set()
        for t in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 10)
        await other.close()
        await pool.close()
    return figures
