"""13. Live cost lag: a finished farm task to the job's cost so far.

Real processes on one fresh database (a local farm with one worker and slow frames, job,
scheduler, upload, wallet, billing, deadline-bridge, gateway); the farm's machine is priced
high so every task costs credits. A funded user renders ``jobs`` jobs of ``frames`` one-frame
tasks at once, so tasks finish one by one. Per task, from the stored events (every
``recorded_at`` is the database's clock):

- ``render.RenderTaskCompleted`` (bridge) -> ``billing.TaskCharged`` of the same render and
  task: the relay, the ``billing`` manager and ``billing.ChargeTask``;
- -> the job's first ``job.JobCostRecorded`` with ``cost_version`` at least the charge's
  stream version (the one it caused, or a later one when it was overtaken): the relay, the
  manager and ``job.RecordJobCost``;
- each event's time on JetStream (the stream's timestamp of its message) splits both hops
  into the relay's part (append, commit, publish) and the consumer's (fetch, the manager,
  the command and its commit);
- -> the jobs read model: the first time a poll here (every ``poll_seconds``) saw the job's
  envelope with ``cost.so_far_credits`` at least the charge's so far.

The bridge's farm poll (``RF_POLL_INTERVAL_SECONDS``) comes before ``RenderTaskCompleted``
and is not part of the figure (section 6 measures it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import httpx
import nats
import orjson

from bench.infra import Infra, Servers
from bench.render_bench import start_farm, start_render_path
from bench.report import Figure, percentile
from bench.scenes import upload_scene
from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import JobPriority

SECTION = "13"
USER = "usr_costlag"
#: 100,000 credits a machine-hour: a 0.2 s task costs several credits.
RATE = Decimal("100000")


@dataclass(frozen=True)
class CostLagOptions:
    jobs: int = 5
    frames: int = 20
    frame_seconds: float = 0.2
    poll_seconds: float = 0.01


def _prices() -> str:
    prices = PriceList(
        instances=[
            InstancePrice(
                instance_type="local-cpu",
                cores=8,
                ghz=Decimal("3.00"),
                unit=PriceUnit.instance_hour,
                rates=dict.fromkeys(JobPriority, RATE),
            )
        ],
        default_instance_type="local-cpu",
        storage_per_gb_month=Decimal("0"),
        egress_per_gb=Decimal("0"),
    )
    return prices.model_dump_json()


@dataclass
class TaskLag:
    """One task's hops, in seconds."""

    to_charge: float
    to_recorded: float
    to_read_model: float | None
    #: RenderTaskCompleted and TaskCharged: recorded -> on JetStream (None: not found).
    done_relay: float | None
    charge_relay: float | None

    @property
    def total(self) -> float:
        return self.to_charge + self.to_recorded


async def run_cost_lag(infra: Infra, servers: Servers, opts: CostLagOptions) -> list[Figure]:
    _, farm_url = await start_farm(infra, "farm-costlag", 1, opts.frame_seconds)
    dsn = await infra.create_database("costlag")
    prefix = f"b{infra.tag}c"
    path = await start_render_path(
        infra,
        servers,
        label="costlag",
        dsn=dsn,
        prefix=prefix,
        farm_url=farm_url,
        farm_name="farm-costlag",
        scenes="scenes-costlag",
        extra_env={
            "RF_ACTIVE_JOB_LIMIT": "1000000",
            "RF_BILLING_DEFAULT_PRICES": _prices(),
        },
    )
    user = path.bearer(USER, "user")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with httpx.AsyncClient(base_url=path.gateway_url, timeout=30) as api:
            await path.fund(api, USER)
            scene_id = await upload_scene(api, user, b"RFSCENE-costlag" * 1000)
            job_ids = []
            for i in range(opts.jobs):
                spec = {
                    "name": f"costlag {i}",
                    "scene_id": scene_id,
                    "frame_range": {"start": 1, "end": opts.frames},
                    "chunk_size": 1,
                    "resolution": {"width": 320, "height": 180},
                }
                r = await api.post("/v1/jobs", json=spec, headers=user)
                r.raise_for_status()
                job_ids.append(r.json()["job_id"])
            seen = await _watch_until_settled(pool, job_ids, opts)
        published = await _published(servers.nats_url, prefix)
        lags = await _task_lags(pool, job_ids, seen, published)
    finally:
        await pool.close()
    return _figures(lags, opts)


#: (time seen here, so far) of each change of a job's envelope's cost so far.
Seen = dict[str, list[tuple[float, Decimal]]]


async def _watch_until_settled(
    pool: asyncpg.Pool, job_ids: list[str], opts: CostLagOptions
) -> Seen:
    """Poll the jobs read model until every job's cost is settled, noting each so-far change."""
    seen: Seen = {j: [] for j in job_ids}
    timeout = 120 + opts.jobs * opts.frames * opts.frame_seconds * 3
    async with asyncio.timeout(timeout):
        while True:
            rows = await pool.fetch(
                "SELECT job_id, envelope FROM job.jobs WHERE job_id = ANY($1::text[])", job_ids
            )
            now = time.time()
            settled = 0
            for row in rows:
                envelope = orjson.loads(row["envelope"])
                cost = envelope.get("cost") or {}
                if envelope["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"bench job ended {envelope['status']}: {envelope}")
                so_far = Decimal(cost.get("so_far_credits") or "0")
                changes = seen[row["job_id"]]
                if not changes or changes[-1][1] != so_far:
                    changes.append((now, so_far))
                settled += cost.get("status") == "settled"
            if settled == len(job_ids):
                return seen
            await asyncio.sleep(opts.poll_seconds)


async def _published(nats_url: str, prefix: str) -> dict[str, float]:
    """When each task event reached JetStream (by event id): the stream's timestamps."""
    nc = await nats.connect(nats_url)
    found: dict[str, float] = {}
    try:
        js = nc.jetstream()
        for event_type in ("render.RenderTaskCompleted", "billing.TaskCharged"):
            sub = await js.subscribe(f"{prefix}.events.{event_type}", ordered_consumer=True)
            try:
                while True:
                    msg = await sub.next_msg(timeout=5)
                    found[(msg.headers or {})["Nats-Msg-Id"]] = msg.metadata.timestamp.timestamp()
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def _task_lags(
    pool: asyncpg.Pool, job_ids: list[str], seen: Seen, published: dict[str, float]
) -> list[TaskLag]:
    done = await pool.fetch(
        "SELECT DISTINCT ON (data->>'job_id', data->>'render_id', data->>'task_id')"
        " event_id::text, data->>'job_id' AS job_id,"
        " data->>'render_id' AS render_id, (data->>'task_id')::int AS task_id,"
        " recorded_at AS at FROM bridge.events WHERE type = 'render.RenderTaskCompleted'"
        " AND data->>'job_id' = ANY($1::text[])"
        " ORDER BY data->>'job_id', data->>'render_id', data->>'task_id', recorded_at",
        job_ids,
    )
    charged = await pool.fetch(
        "SELECT event_id::text, data->>'job_id' AS job_id,"
        " data->'line'->>'render_id' AS render_id,"
        " (data->'line'->>'task_id')::int AS task_id, version,"
        " (data->'totals'->>'so_far_credits')::numeric AS so_far,"
        " (data->'line'->>'amount_credits')::numeric AS amount, recorded_at AS at"
        " FROM billing.events WHERE type = 'billing.TaskCharged'"
        " AND data->>'job_id' = ANY($1::text[])",
        job_ids,
    )
    recorded = await pool.fetch(
        "SELECT data->>'job_id' AS job_id, (data->>'cost_version')::int AS cost_version,"
        " recorded_at AS at FROM job.events WHERE type = 'job.JobCostRecorded'"
        " AND data->>'job_id' = ANY($1::text[]) ORDER BY global_position",
        job_ids,
    )
    completed = {(r["job_id"], r["render_id"], r["task_id"]): r for r in done}
    by_job: dict[str, list[asyncpg.Record]] = {}
    for r in recorded:
        by_job.setdefault(r["job_id"], []).append(r)
    lags = []
    for c in charged:
        if c["amount"] <= 0:
            raise RuntimeError(f"a task charged {c['amount']}: the so far cannot tell it apart")
        task = completed[(c["job_id"], c["render_id"], c["task_id"])]
        start = task["at"]
        done_out = published.get(task["event_id"])
        charge_out = published.get(c["event_id"])
        shown = next(r["at"] for r in by_job[c["job_id"]] if r["cost_version"] >= c["version"])
        read = next((t for t, so_far in seen[c["job_id"]] if so_far >= c["so_far"]), None)
        lags.append(
            TaskLag(
                to_charge=(c["at"] - start).total_seconds(),
                to_recorded=(shown - c["at"]).total_seconds(),
                to_read_model=read - start.timestamp() if read is not None else None,
                done_relay=done_out - start.timestamp() if done_out is not None else None,
                charge_relay=charge_out - c["at"].timestamp() if charge_out is not None else None,
            )
        )
    if len(lags) != len(completed):
        raise RuntimeError(f"{len(completed)} tasks completed but {len(lags)} charged")
    return lags


def _figures(lags: list[TaskLag], opts: CostLagOptions) -> list[Figure]:
    def stats(values: list[float]) -> tuple[float, float, float, float]:
        values = sorted(values)
        return (
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            values[-1],
        )

    total = stats([t.total for t in lags])
    charge = stats([t.to_charge for t in lags])
    record = stats([t.to_recorded for t in lags])
    reads = [t.to_read_model for t in lags if t.to_read_model is not None]
    read = stats(reads) if reads else None

    def ms(s: tuple[float, float, float, float]) -> str:
        return " / ".join(f"{v * 1000:.0f}" for v in s) + " ms"

    print(f"  {len(lags)} tasks of {opts.jobs} jobs, p50 / p95 / p99 / max:")
    print(f"    RenderTaskCompleted -> TaskCharged      {ms(charge)}")
    print(f"    TaskCharged -> JobCostRecorded          {ms(record)}")
    print(f"    RenderTaskCompleted -> JobCostRecorded  {ms(total)}")
    if read is not None:
        print(f"    RenderTaskCompleted -> jobs read model  {ms(read)} ({len(reads)} seen)")
    relayed = [t for t in lags if t.done_relay is not None and t.charge_relay is not None]
    if relayed:
        print(f"  the hops split at JetStream ({len(relayed)} tasks with both messages found):")
        done_relay = stats([t.done_relay for t in relayed if t.done_relay is not None])
        charge_relay = stats([t.charge_relay for t in relayed if t.charge_relay is not None])
        billing = stats([t.to_charge - (t.done_relay or 0) for t in relayed])
        job = stats([t.to_recorded - (t.charge_relay or 0) for t in relayed])
        print(f"    bridge relay: RenderTaskCompleted -> JetStream   {ms(done_relay)}")
        print(f"    billing manager + ChargeTask -> TaskCharged     {ms(billing)}")
        print(f"    billing relay: TaskCharged -> JetStream          {ms(charge_relay)}")
        print(f"    billing manager + RecordJobCost -> recorded     {ms(job)}")
    note = (
        f"{len(lags)} tasks: {opts.jobs} jobs x {opts.frames} frames, chunk 1, one farm worker,"
        f" {opts.frame_seconds} s frames; split p50/p99: ->TaskCharged"
        f" {charge[0] * 1000:.0f}/{charge[2] * 1000:.0f} ms, ->JobCostRecorded"
        f" {record[0] * 1000:.0f}/{record[2] * 1000:.0f} ms"
    )
    name = "RenderTaskCompleted -> JobCostRecorded"
    figures = [
        Figure(SECTION, f"{name}, p50", total[0], "s", note=note),
        Figure(SECTION, f"{name}, p95", total[1], "s"),
        Figure(SECTION, f"{name}, p99", total[2], "s", target=1.0, direction="max"),
        Figure(SECTION, f"{name}, max", total[3], "s"),
    ]
    if read is not None:
        figures.append(
            Figure(
                SECTION,
                "RenderTaskCompleted -> jobs read model, p99",
                read[2],
                "s",
                target=1.0,
                direction="max",
                note=f"p50 {read[0] * 1000:.0f} ms, max {read[3] * 1000:.0f} ms; the envelope"
                f" polled every {opts.poll_seconds * 1000:.0f} ms",
            )
        )
    return figures
