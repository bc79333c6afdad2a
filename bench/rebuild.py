"""5. Projection rebuild: load N job events with COPY, then rebuild ``job.jobs`` from zero.

Every job gets the same ten valid events (submitted, renamed, priority changed, then the
three preparation steps started/succeeded, one progress report) and ends ``ready``. Jobs
run in cohorts: the events of ``cohort`` jobs are interleaved round-robin, as when that
many jobs progress at the same time, so a batch of B events touches about
min(B, cohort) distinct jobs.

Two layouts, each loaded into its own database: **production** (cohorts of 10,000 jobs: a
render's events are spread among thousands of other jobs', so a 5,000-event batch holds one
event per job) gives the main figure; **easy** (cohorts of 100: a batch touches 100 jobs,
ten events each) the second. Each is timed through :func:`libs.eventstore.rebuild.rebuild`,
the path ``renderctl rebuild`` takes (bulk: in-memory fold, COPY, indexes after, swap), with
the peak RSS of this process during it. Then, on the production layout, the live projector's
incremental path (``Projector.run_once`` from zero, per batch size, time-bounded) for
comparison.
"""

from __future__ import annotations

import contextlib
import gc
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from bench.cpu import CpuMeter, cpu_text
from bench.infra import Infra
from bench.report import Figure
from bench.store_bench import META
from contracts.base import Event
from contracts.jobs import (
    FrameRange,
    JobPriority,
    JobPriorityChanged,
    JobRenamed,
    JobStepProgressed,
    JobStepStarted,
    JobStepSucceeded,
    JobSubmitted,
    Renderer,
    RenderSettings,
    Resolution,
    StepName,
)
from contracts.staging import SceneKind, SceneRef
from libs.eventstore.processor import Projector
from libs.eventstore.rebuild import rebuild
from libs.eventstore.store import EventStore, create_pool
from libs.migrations import declared_plan, migrate
from services.job.projections import JobsProjection

EVENTS_PER_JOB = 10
COPY_CHUNK = 100_000


#: Jobs progressing at once in the production layout, and in the easy one.
PRODUCTION_COHORT = 10_000
EASY_COHORT = 100
TARGET = 30_000.0


@dataclass
class RebuildOptions:
    events: int = 1_000_000
    #: The easy layout's cohort (the production one's is :data:`PRODUCTION_COHORT`).
    cohort: int = EASY_COHORT
    #: Batch sizes of the incremental path's comparison run (empty: none).
    batch_sizes: list[int] = field(default_factory=lambda: [5000])
    #: Each incremental catch-up stops after this many seconds (then the figure covers what
    #: it did); 0 means no limit.
    max_seconds: float = 30.0
    #: Also time the easy layout (a second load).
    easy: bool = True


def _templates(at: datetime) -> list[tuple[str, int, dict[str, Any]]]:
    """(type, schema version, json data) of the ten events of one job, with placeholder ids."""
    jid, owner = _JOB, _OWNER
    events: list[Event] = [
        JobSubmitted(
            job_id=jid,
            owner_id=owner,
            name="shot_010 lighting",
            scene=SceneRef(
                scene_id="upl_01M81S0DQ3V8WQ6J2M4H3X9K7A",
                kind=SceneKind.upload,
                main_file="main.blend",
                file_count=1,
                size_bytes=1_500_000_000,
                content_sha256="5c" * 32,
                bucket="rf-scenes",
                object_key="uploads/upl_01M81S0DQ3V8WQ6J2M4H3X9K7A/main.blend",
            ),
            renderer=Renderer.blender_cycles,
            frame_range=FrameRange(start=1, end=240),
            chunk_size=4,
            resolution=Resolution(width=1920, height=1080),
            render_settings=RenderSettings(),
            priority=JobPriority.normal,
            cost_cap_credits=Decimal("150.50"),
            submitted_at=at,
        ),
        JobRenamed(job_id=jid, name="shot_010 lighting v2"),
        JobPriorityChanged(job_id=jid, priority=JobPriority.high),
        JobStepStarted(job_id=jid, step=StepName.scene_check, at=at),
        JobStepSucceeded(job_id=jid, step=StepName.scene_check, at=at),
        JobStepStarted(job_id=jid, step=StepName.repath, at=at),
        JobStepSucceeded(job_id=jid, step=StepName.repath, at=at),
        JobStepStarted(job_id=jid, step=StepName.render_settings, at=at),
        JobStepProgressed(job_id=jid, step=StepName.render_settings, progress_percent=50.0, at=at),
        JobStepSucceeded(job_id=jid, step=StepName.render_settings, at=at),
    ]
    assert len(events) == EVENTS_PER_JOB
    return [(e.event_type, e.schema_version, e.model_dump(mode="json")) for e in events]


Record = tuple[uuid.UUID, str, int, str, int, str, str, datetime]
_JOB, _OWNER = "job_PLACEHOLDER", "usr_PLACEHOLDER"


def generate(n_events: int, cohort: int, start: datetime) -> Iterator[Record]:
    """The events in feed order: cohorts of ``cohort`` jobs, interleaved within a cohort."""
    texts = [(typ, ver, orjson.dumps(data).decode()) for typ, ver, data in _templates(start)]
    assert all(t.count(_JOB) == 1 for _, _, t in texts) and texts[0][2].count(_OWNER) == 1
    meta = orjson.dumps(META).decode()
    n_jobs = n_events // EVENTS_PER_JOB
    seq = 0
    for first in range(0, n_jobs, cohort):
        jobs = [
            (f"job_{j:026d}", f"usr_{j % 5000:026d}")
            for j in range(first, min(n_jobs, first + cohort))
        ]
        for v, (typ, schema_version, text) in enumerate(texts, start=1):
            for jid, owner in jobs:
                data = text.replace(_JOB, jid)
                if v == 1:
                    data = data.replace(_OWNER, owner)
                yield (
                    uuid.uuid4(),
                    f"job-{jid}",
                    v,
                    typ,
                    schema_version,
                    data,
                    meta,
                    start + timedelta(milliseconds=seq),
                )
                seq += 1


async def load(dsn: str, n_events: int, cohort: int) -> float:
    """COPY the events into ``job.events`` in chunks (one transaction each); returns seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        rows = generate(n_events, cohort, datetime(2025, 1, 1, tzinfo=UTC))
        done = 0
        while done < n_events:
            chunk = [r for _, r in zip(range(COPY_CHUNK), rows, strict=False)]
            if not chunk:
                break
            await conn.copy_records_to_table(
                "events",
                schema_name="job",
                columns=[
                    "event_id",
                    "stream_id",
                    "version",
                    "type",
                    "schema_version",
                    "data",
                    "metadata",
                    "recorded_at",
                ],
                records=chunk,
            )
            done += len(chunk)
        await conn.execute("ANALYZE job.events")
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def _feed_plan(pool: asyncpg.Pool, store: EventStore) -> str:
    """The plan PostgreSQL picks for the store's global-feed read (a diagnostic)."""
    try:
        async with pool.acquire() as conn:
            doc = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {store._read_all_sql}", "0", 0, 1000)
    except Exception as e:
        return f"unavailable ({e!r})"
    plan = (orjson.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    steps: list[str] = []
    while plan:
        step = plan["Node Type"]
        if "Index Name" in plan:
            step += f" using {plan['Index Name']}"
        if "Sort Key" in plan:
            step += f" by {', '.join(plan['Sort Key'])}"
        steps.append(step)
        plan = (plan.get("Plans") or [None])[0]
    return " <- ".join(steps)


def _rss_reset() -> int:
    """Reset this process's peak RSS to its current RSS (Linux); returns the RSS in bytes."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _status_bytes(field_name: str) -> int:
    try:
        with open("/proc/self/status") as f:
            found = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return 0
    return int(found.group(1)) * 1024 if found else 0


async def _layout(
    infra: Infra, suffix: str, n_events: int, cohort: int
) -> tuple[asyncpg.Pool, EventStore, float]:
    dsn = await infra.create_database(suffix)
    pool = await create_pool(dsn, max_size=4)
    await migrate(pool, "job", declared_plan("job"))
    load_s = await load(dsn, n_events, cohort)
    print(
        f"  {suffix}: loaded {n_events:,} events ({n_events // EVENTS_PER_JOB:,} jobs x"
        f" {EVENTS_PER_JOB}, cohorts of {cohort:,} jobs interleaved) with COPY in {load_s:.1f} s"
        f" = {n_events / load_s:,.0f} events/s"
    )
    return pool, EventStore(pool, "job"), load_s


async def _bulk_rebuild(
    pool: asyncpg.Pool, store: EventStore, layout: str, n_events: int, cohort: int
) -> Figure:
    """``rebuild(store, JobsProjection())`` as renderctl runs it, timed, with peak RSS."""
    gc.collect()
    rss_before = _rss_reset()
    meter = CpuMeter()
    meter.start()
    t0 = time.perf_counter()
    result = await rebuild(store, JobsProjection())
    dt = time.perf_counter() - t0
    cpu = meter.stop()
    peak = _status_bytes("VmHWM")
    async with pool.acquire() as conn:
        jobs = await conn.fetchval("SELECT count(*) FROM job.jobs")
        ready = await conn.fetchval("SELECT count(*) FROM job.jobs WHERE status = 'ready'")
    rate = result.events / dt if dt > 0 else 0.0
    mib = 1024 * 1024
    ok = jobs == ready == n_events // EVENTS_PER_JOB and result.events == n_events
    print(
        f"  rebuild ({layout} layout, {result.path} path): {result.events:,} events in"
        f" {dt:.1f} s = {rate:,.0f} events/s; job.jobs has {jobs:,} rows, {ready:,} ready"
        f"{'' if ok else '  (WRONG: expected every job ready)'}; peak RSS"
        f" {peak / mib:,.0f} MiB ({(peak - rss_before) / mib:+,.0f} MiB over the"
        f" {rss_before / mib:,.0f} MiB before)"
    )
    print(f"    {cpu_text(cpu)}")
    return Figure(
        "5 rebuild",
        f"rebuild, {layout} layout",
        rate if ok else 0.0,
        "events/s",
        target=TARGET,
        note=(
            f"renderctl's rebuild path ({result.path}), {n_events:,} events, cohorts of"
            f" {cohort:,} jobs; peak RSS {peak / mib:,.0f} MiB"
            f" ({(peak - rss_before) / mib:+,.0f} MiB during the rebuild)"
            + ("" if ok else "; WRONG result: counted as 0")
        ),
        extra={
            "events": result.events,
            "seconds": dt,
            "path": result.path,
            "cohort": cohort,
            "jobs_rows": jobs,
            "ready_rows": ready,
            "rss_before_bytes": rss_before,
            "peak_rss_bytes": peak,
            **cpu,
        },
    )


async def _incremental(
    pool: asyncpg.Pool, store: EventStore, opts: RebuildOptions, n_events: int, bs: int
) -> Figure:
    """The live projector's path from zero: ``Projector.run_once`` until done or timed out."""
    async with pool.acquire() as conn:  # from zero: empty model, no checkpoint
        await conn.execute(
            "TRUNCATE job.jobs, job.quarantine; DELETE FROM job.checkpoints WHERE name = 'jobs'"
        )
    projector = Projector(store, JobsProjection(), batch_size=bs)
    total = 0
    meter = CpuMeter()
    meter.start()
    t0 = time.perf_counter()
    deadline = t0 + opts.max_seconds if opts.max_seconds > 0 else float("inf")
    while n := await projector.run_once():
        total += n
        if time.perf_counter() > deadline:
            break
    dt = time.perf_counter() - t0
    cpu = meter.stop()
    complete = total == n_events
    rate = total / dt if dt > 0 else 0.0
    print(
        f"  incremental (live projector) batch {bs}, production layout: {total:,} of"
        f" {n_events:,} events in {dt:.1f} s = {rate:,.0f} events/s"
        + ("" if complete else f"  (stopped after {opts.max_seconds:.0f} s: partial)")
    )
    print(f"    {cpu_text(cpu)}")
    return Figure(
        "5 rebuild",
        f"incremental path, batch {bs}",
        rate,
        "events/s",
        target=2000.0,
        note=(
            "the live projector's path from zero on the production layout (must keep up"
            " with 2,000 events/s live)"
            + (
                ""
                if complete
                else f"; partial: {total:,} of {n_events:,} events in {opts.max_seconds:.0f} s"
            )
        ),
        extra={"events_processed": total, "seconds": dt, "complete": complete, **cpu},
    )


async def run_rebuild(infra: Infra, opts: RebuildOptions) -> list[Figure]:
    n_events = opts.events - opts.events % EVENTS_PER_JOB
    figures: list[Figure] = []
    pool, store, load_s = await _layout(infra, "rebuild", n_events, PRODUCTION_COHORT)
    try:
        figures.append(
            Figure(
                "5 rebuild",
                "COPY load (set-up)",
                n_events / load_s,
                "events/s",
                note=f"{n_events:,} events, {n_events // EVENTS_PER_JOB:,} jobs",
            )
        )
        print(f"  read_all plan from the start of the feed: {await _feed_plan(pool, store)}")
        figures.append(await _bulk_rebuild(pool, store, "production", n_events, PRODUCTION_COHORT))
        for bs in opts.batch_sizes:
            figures.append(await _incremental(pool, store, opts, n_events, bs))
    finally:
        with contextlib.suppress(Exception):
            await pool.close()
    if opts.easy:
        pool, store, _ = await _layout(infra, "rebuild_easy", n_events, opts.cohort)
        try:
            figures.append(await _bulk_rebuild(pool, store, "easy", n_events, opts.cohort))
        finally:
            with contextlib.suppress(Exception):
                await pool.close()
    return figures
