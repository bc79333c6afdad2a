"""3. Event store appends (single and batched) vs plain INSERTs on one connection.
4. Relay lag: append at a steady rate, publish with the Relay, receive on a NATS subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import nats
import orjson
from nats.aio.msg import Msg

from bench.cpu import CpuMeter, cpu_text
from bench.infra import Infra, Servers
from bench.report import Figure, percentile
from contracts.jobs import JobRenamed
from libs.bus.nats import connect, ensure_streams
from libs.bus.relay import Relay
from libs.config import BaseServiceSettings
from libs.eventstore.store import EventStore, NewEvent, StreamWrite, create_pool

#: Metadata like a command handler stamps on every event.
META = {
    "actor": {"kind": "user", "id": "usr_01JBENCH0000000000000000000"},
    "command_id": "create_job:0b5e1a5e-7d1c-4c43-9a55-3f1e0d1c2b3a",
    "command_type": "job.UpdateJob",
    "correlation_id": "5f0c3c1f6d2b4e8e9d7a6b5c4d3e2f1a",
    "causation_id": "create_job:0b5e1a5e-7d1c-4c43-9a55-3f1e0d1c2b3a",
}


@dataclass
class StoreOptions:
    append_seconds: float = 4.0
    append_warmup: float = 0.5
    append_max: int = 400_000
    batch_size: int = 100
    relay_rate: float = 2000.0
    relay_seconds: float = 5.0
    relay_tick: float = 0.005


def _event(i: int) -> JobRenamed:
    return JobRenamed(job_id=f"job_{i:026d}", name=f"shot_{i % 1000:03d} lighting pass {i}")


async def _timed(
    label: str,
    step: Callable[[int], Awaitable[None]],
    per_call: int,
    opts: StoreOptions,
) -> tuple[float, int, float, dict[str, float]]:
    """Run ``step(i)`` back to back: warm-up, then a fixed time; returns (items/s, n, s, cpu)."""
    i = 0
    warm_end = time.perf_counter() + opts.append_warmup
    while time.perf_counter() < warm_end:
        await step(i)
        i += 1
    n = 0
    meter = CpuMeter()
    meter.start()
    t0 = time.perf_counter()
    end = t0 + opts.append_seconds
    while time.perf_counter() < end and n * per_call < opts.append_max:
        await step(i)
        i += 1
        n += 1
    dt = time.perf_counter() - t0
    cpu = meter.stop()
    rate = n * per_call / dt
    print(f"  {label}: {rate:,.0f}/s ({n * per_call} in {dt:.1f} s, {dt / n * 1e6:.0f} us/call)")
    print(f"    {cpu_text(cpu)}")
    return rate, n * per_call, dt, cpu


async def run_appends(infra: Infra, opts: StoreOptions) -> list[Figure]:
    dsn = await infra.create_database("store")
    pool = await create_pool(dsn, min_size=1, max_size=1)
    plain = await asyncpg.connect(dsn)
    try:
        store = EventStore(pool, "bench")
        await store.setup()
        await plain.execute(
            "CREATE TABLE bench.plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " payload text NOT NULL)"
        )
        settings = await plain.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('fsync', 'synchronous_commit', 'wal_sync_method', 'shared_buffers',"
            " 'server_version')"
        )
        print("  server: " + ", ".join(f"{r['name']}={r['setting']}" for r in settings))
        tag = uuid.uuid4().hex[:8]
        payload = "x" * 100
        bs = opts.batch_size

        async def plain_one(i: int) -> None:
            await plain.execute("INSERT INTO bench.plain (payload) VALUES ($1)", payload)

        async def plain_batch(i: int) -> None:
            await plain.execute(
                "INSERT INTO bench.plain (payload) SELECT unnest($1::text[])", [payload] * bs
            )

        async def append_one(i: int) -> None:
            await store.append(f"s1-{tag}-{i}", [NewEvent(_event(i), metadata=META)], 0)

        async def append_batch(i: int) -> None:
            await store.append_streams(
                [
                    StreamWrite(f"sb-{tag}-{i}-{k}", 0, [NewEvent(_event(k), metadata=META)])
                    for k in range(bs)
                ]
            )

        base1, _, _, _ = await _timed("plain INSERT, 1 row per statement", plain_one, 1, opts)
        one, n1, s1, cpu1 = await _timed(
            "EventStore.append, 1 event, new stream", append_one, 1, opts
        )
        base_b, _, _, _ = await _timed(
            f"plain INSERT ... unnest, {bs} rows per statement", plain_batch, bs, opts
        )
        batch, nb, sb, cpub = await _timed(
            f"EventStore.append_streams, {bs} new streams x 1 event", append_batch, bs, opts
        )
    finally:
        await plain.close()
        await pool.close()
    section = "3 append"
    return [
        Figure(
            section,
            "single",
            one,
            "events/s",
            baseline=base1,
            baseline_name="plain asyncpg INSERT of one row, same connection settings",
            target=0.8,
            target_on_ratio=True,
            note=(
                f"one pooled connection (pool size 1), {opts.append_seconds:.0f} s; durable"
                f" commits (see server settings); small JobRenamed event + command metadata"
            ),
            extra={"events": n1, "seconds": s1, **cpu1},
        ),
        Figure(
            section,
            f"batched x{bs}",
            batch,
            "events/s",
            baseline=base_b,
            baseline_name=f"plain INSERT ... SELECT unnest of {bs} rows",
            target=0.5,
            target_on_ratio=True,
            extra={"events": nb, "seconds": sb, **cpub},
        ),
    ]


async def run_relay_lag(infra: Infra, servers: Servers, opts: StoreOptions) -> list[Figure]:
    dsn = await infra.create_database("relay")
    prefix = f"b{infra.tag}r"
    settings = BaseServiceSettings(
        service_name="bench-relay", database_url=dsn, nats_url=servers.nats_url, nats_prefix=prefix
    )
    pool = await create_pool(dsn, max_size=settings.db_pool_size)
    nc = await connect(settings, "bench-relay")
    sub_nc = await nats.connect(servers.nats_url, name="bench-relay-subscriber")
    stopping = asyncio.Event()
    relay_task: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream(timeout=5)
        await ensure_streams(js, settings)
        store = EventStore(pool, "relay")
        await store.setup()
        relay = Relay(store, js, settings)

        appended_at: dict[str, float] = {}
        lag_recorded: list[float] = []
        lag_returned: list[float] = []
        seen: set[str] = set()
        duplicates = 0
        all_received = asyncio.Event()
        expected = -1

        async def on_msg(msg: Msg) -> None:
            nonlocal duplicates
            now = time.time()
            body = orjson.loads(msg.data)
            eid = body["event_id"]
            if eid in seen:
                duplicates += 1
                return
            seen.add(eid)
            lag_recorded.append(now - datetime.fromisoformat(body["recorded_at"]).timestamp())
            returned = appended_at.get(eid)
            if returned is not None:
                lag_returned.append(now - returned)
            if len(seen) == expected:
                all_received.set()

        await sub_nc.subscribe(settings.subject("events.>"), cb=on_msg)
        await sub_nc.flush()
        relay_task = asyncio.ensure_future(relay.run(stopping))
        async with asyncio.timeout(10):
            while not relay.is_leader:
                await asyncio.sleep(0.01)

        per_tick = max(1, round(opts.relay_rate * opts.relay_tick))
        ticks = int(opts.relay_seconds / opts.relay_tick)
        tag = uuid.uuid4().hex[:8]
        late_ticks = 0
        loop = asyncio.get_running_loop()
        meter = CpuMeter()
        meter.start()
        t_start = loop.time()
        for k in range(ticks):
            due = t_start + k * opts.relay_tick
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -opts.relay_tick:
                late_ticks += 1
            writes = [
                StreamWrite(f"r-{tag}-{k}-{j}", 0, [NewEvent(_event(j), metadata=META)])
                for j in range(per_tick)
            ]
            recorded = await store.append_streams(writes)
            t = time.time()
            for r in recorded:
                appended_at[str(r.event_id)] = t
        written_s = loop.time() - t_start
        cpu = meter.stop()
        expected = ticks * per_tick
        if len(seen) >= expected:
            all_received.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_received.wait(), 15)
        missing = expected - len(seen)
    finally:
        stopping.set()
        if relay_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay_task, 10)
        with contextlib.suppress(Exception):
            await sub_nc.drain()
        with contextlib.suppress(Exception):
            js = nc.jetstream(timeout=5)
            await js.delete_stream(settings.events_stream)
            await js.delete_stream(settings.dlq_stream)
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()
    lag_recorded.sort()
    lag_returned.sort()
    rate = expected / written_s
    p50, p99 = percentile(lag_recorded, 50) * 1000, percentile(lag_recorded, 99) * 1000
    r50, r99 = percentile(lag_returned, 50) * 1000, percentile(lag_returned, 99) * 1000
    print(
        f"  wrote {expected} events in {written_s:.1f} s = {rate:,.0f} events/s"
        f" ({per_tick} events per append every {opts.relay_tick * 1000:.0f} ms;"
        f" {late_ticks} ticks late); received {len(seen)}, missing {missing},"
        f" duplicates {duplicates}; relay published {relay.published}"
    )
    print(
        f"  lag now - recorded_at: p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
        f" max {percentile(lag_recorded, 100) * 1000:.1f} ms"
    )
    print(f"  lag from append return: p50 {r50:.1f} ms, p99 {r99:.1f} ms")
    print(f"    {cpu_text(cpu)}")
    section = "4 relay lag"
    extra = {
        "events": expected,
        "write_rate": rate,
        "missing": missing,
        "duplicates": duplicates,
        "from_append_return_p50_ms": r50,
        "from_append_return_p99_ms": r99,
        **cpu,
    }
    return [
        Figure(section, "p50 (now - recorded_at)", p50, "ms", direction="max", extra=extra),
        Figure(
            section,
            "p99 (now - recorded_at)",
            p99,
            "ms",
            target=50.0,
            direction="max",
            note=(
                f"{rate:,.0f} events/s for {written_s:.0f} s, {per_tick} per append every"
                f" {opts.relay_tick * 1000:.0f} ms; relay and subscriber in this process;"
                f" from append return: p50 {r50:.1f} ms, p99 {r99:.1f} ms"
            ),
        ),
        Figure(section, "events missing", float(missing), "events", target=0.0, direction="max"),
    ]
