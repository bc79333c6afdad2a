"""5. Projection rebuild: load N job events with COPY, then time ``Projector.catch_up`` from zero.

Every job gets the same ten valid events (submitted, renamed, priority changed, then the
three preparation steps started/succeeded, one progress report) and ends ``ready``. Jobs
run in cohorts: the events of ``cohort`` jobs are interleaved round-robin, as when that
many jobs progress at the same time, so a batch of B events touches about
min(B, cohort) distinct jobs.
"""

from __future__ import annotations

import contextlib
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
from libs.eventstore.processor import Projector
from libs.eventstore.store import EventStore, create_pool
from libs.migrations import declared_plan, migrate
from services.job.projections import JobsProjection

EVENTS_PER_JOB = 10
COPY_CHUNK = 100_000


@dataclass
class RebuildOptions:
    events: int = 1_000_000
    cohort: int = 100
    batch_sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    #: Each catch-up stops after this many seconds (then the figure covers what it did);
    #: 0 means no limit.
    max_seconds: float = 90.0


def _templates(at: datetime) -> list[tuple[str, dict[str, Any]]]:
    """(type, json data) of the ten events of one job, with placeholder ids."""
    jid, owner = "JOB", "OWNER"
    events: list[Event] = [
        JobSubmitted(
            job_id=jid,
            owner_id=owner,
            name="shot_010 lighting",
            scene_key="scenes/shot_010/main.blend",
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
    return [(e.event_type, e.model_dump(mode="json")) for e in events]


Record = tuple[uuid.UUID, str, int, str, int, str, str, datetime]


def generate(n_events: int, cohort: int, start: datetime) -> Iterator[Record]:
    """The events in feed order: cohorts of ``cohort`` jobs, interleaved within a cohort."""
    templates = _templates(start)
    meta = orjson.dumps(META).decode()
    n_jobs = n_events // EVENTS_PER_JOB
    seq = 0
    for first in range(0, n_jobs, cohort):
        jobs = [
            (f"job_{j:026d}", f"usr_{j % 5000:026d}")
            for j in range(first, min(n_jobs, first + cohort))
        ]
        for v, (typ, tmpl) in enumerate(templates, start=1):
            for jid, owner in jobs:
                data = {**tmpl, "job_id": jid}
                if v == 1:
                    data["owner_id"] = owner
                yield (
                    uuid.uuid4(),
                    f"job-{jid}",
                    v,
                    typ,
                    1,
                    orjson.dumps(data).decode(),
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


async def run_rebuild(infra: Infra, opts: RebuildOptions) -> list[Figure]:
    n_events = opts.events - opts.events % EVENTS_PER_JOB
    n_jobs = n_events // EVENTS_PER_JOB
    dsn = await infra.create_database("rebuild")
    pool = await create_pool(dsn, max_size=4)
    figures: list[Figure] = []
    try:
        store = EventStore(pool, "job")
        await migrate(pool, "job", declared_plan("job"))
        projection = JobsProjection()
        load_s = await load(dsn, n_events, opts.cohort)
        print(
            f"  loaded {n_events:,} events ({n_jobs:,} jobs x {EVENTS_PER_JOB}, cohorts of"
            f" {opts.cohort} jobs interleaved) with COPY in {load_s:.1f} s"
            f" = {n_events / load_s:,.0f} events/s"
        )
        figures.append(
            Figure(
                "5 rebuild",
                "COPY load (set-up)",
                n_events / load_s,
                "events/s",
                note=f"{n_events:,} events, {n_jobs:,} jobs, cohorts of {opts.cohort}",
            )
        )
        print(f"  read_all plan from the start of the feed: {await _feed_plan(pool, store)}")
        for bs in opts.batch_sizes:
            async with pool.acquire() as conn:  # from zero: empty model, no checkpoint
                await conn.execute(
                    "TRUNCATE job.jobs, job.quarantine;"
                    " DELETE FROM job.checkpoints WHERE name = 'jobs'"
                )
            projector = Projector(store, projection, batch_size=bs)
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
            async with pool.acquire() as conn:
                jobs = await conn.fetchval("SELECT count(*) FROM job.jobs")
                ready = await conn.fetchval("SELECT count(*) FROM job.jobs WHERE status = 'ready'")
            complete = total == n_events
            rate = total / dt if dt > 0 else 0.0
            print(
                f"  batch {bs}: {total:,} of {n_events:,} events in {dt:.1f} s = {rate:,.0f}"
                f" events/s; job.jobs has {jobs:,} rows, {ready:,} ready"
                + ("" if complete else f"  (STOPPED after {opts.max_seconds:.0f} s: partial)")
            )
            print(f"    {cpu_text(cpu)}")
            figures.append(
                Figure(
                    "5 rebuild",
                    f"batch {bs}",
                    rate,
                    "events/s",
                    target=30000.0,
                    note=(
                        ""
                        if complete
                        else f"partial: {total:,} of {n_events:,} events in"
                        f" {opts.max_seconds:.0f} s (time bound)"
                    ),
                    extra={
                        "events_total": n_events,
                        "events_processed": total,
                        "seconds": dt,
                        "complete": complete,
                        "cohort": opts.cohort,
                        "jobs_rows": jobs,
                        "load_seconds": load_s,
                        **cpu,
                    },
                )
            )
    finally:
        with contextlib.suppress(Exception):
            await pool.close()
    return figures
