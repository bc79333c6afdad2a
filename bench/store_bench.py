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
from libs.eventstore.store import EventStore, NewEvent, StreamWrite, create_pool, new_event_id

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


class _Rate:
    """Items and seconds of one measured step, summed over its rounds."""

    def __init__(self, label: str, step: Callable[[int], Awaitable[None]], per_call: int) -> None:
        self.label = label
        self.step = step
        self.per_call = per_call
        self.calls = 0
        self.seconds = 0.0
        self.cpu: dict[str, float] = {}

    @property
    def rate(self) -> float:
        return self.calls * self.per_call / self.seconds if self.seconds else 0.0

    def show(self) -> None:
        n = self.calls * self.per_call
        us = self.seconds / max(1, self.calls) * 1e6
        print(f"  {self.label}: {self.rate:,.0f}/s ({n} in {self.seconds:.1f} s, {us:.0f} us/call)")
        print(f"    {cpu_text(self.cpu)}")


async def _compare(base: _Rate, subject: _Rate, opts: StoreOptions, start: list[int]) -> None:
    """Run the baseline and the subject in alternating rounds (4 each, ``append_seconds`` in
    all per step, after a warm-up of each), so that load from other processes on a shared
    machine weighs on both alike; ``start`` is the next call index (shared, so every call
    writes new streams and rows)."""
    rounds = 4
    for r in (base, subject):
        warm_end = time.perf_counter() + opts.append_warmup
        while time.perf_counter() < warm_end:
            await r.step(start[0])
            start[0] += 1
    meters = {id(base): CpuMeter(), id(subject): CpuMeter()}
    cpu_sum: dict[int, dict[str, float]] = {id(base): {}, id(subject): {}}
    for _ in range(rounds):
        for r in (base, subject):
            meter = meters[id(r)]
            meter.start()
            t0 = time.perf_counter()
            end = t0 + opts.append_seconds / rounds
            cap = opts.append_max / rounds
            n = 0
            while time.perf_counter() < end and n * r.per_call < cap:
                await r.step(start[0])
                start[0] += 1
                n += 1
            dt = time.perf_counter() - t0
            r.calls += n
            r.seconds += dt
            for k, v in meter.stop().items():
                cpu_sum[id(r)][k] = cpu_sum[id(r)].get(k, 0.0) + v * dt
    for r in (base, subject):
        r.cpu = {k: v / r.seconds for k, v in cpu_sum[id(r)].items()}
        r.show()


async def run_appends(infra: Infra, opts: StoreOptions) -> list[Figure]:
    dsn = await infra.create_database("store")
    pool = await create_pool(dsn, min_size=1, max_size=1)
    # The baseline's connection comes from a pool made the same way as the store's (same
    # command timeout, codecs), held for the run.
    plain_pool = await create_pool(dsn, min_size=1, max_size=1)
    plain: asyncpg.Connection = await plain_pool.acquire()
    store = EventStore(pool, "bench")
    try:
        await store.setup()
        # The store's own table shape (indexes, defaults), for a plain INSERT of the same
        # rows: what the rows cost without the store.
        await plain.execute("CREATE TABLE bench.events_plain (LIKE bench.events INCLUDING ALL)")
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
        # The events are built once, like the plain INSERT's payload: building the pydantic
        # models is the caller's work, not the store's. Each append still gets new
        # NewEvents (new event ids) on new streams.
        events = [_event(k) for k in range(1000)]

        async def plain_one(i: int) -> None:
            await plain.execute("INSERT INTO bench.plain (payload) VALUES ($1)", payload)

        async def plain_batch(i: int) -> None:
            await plain.execute(
                "INSERT INTO bench.plain (payload) SELECT unnest($1::text[])", [payload] * bs
            )

        async def append_one(i: int) -> None:
            await store.append(f"s1-{tag}-{i}", [NewEvent(events[i % 1000], metadata=META)], 0)

        async def append_batch(i: int) -> None:
            await store.append_streams(
                [
                    StreamWrite(
                        f"sb-{tag}-{i}-{k}", 0, [NewEvent(events[(i + k) % 1000], metadata=META)]
                    )
                    for k in range(bs)
                ]
            )

        same_rows_sql = (
            "INSERT INTO bench.events_plain (event_id, stream_id, version, type,"
            " schema_version, data, metadata) SELECT (e->>0)::uuid, e->>1, 1, e->>2,"
            " (e->>3)::int, e->4, e->5 FROM jsonb_array_elements($1::text::jsonb) AS e"
        )

        async def plain_same_rows(i: int) -> None:
            rows = [
                [
                    new_event_id(),
                    f"sp-{tag}-{i}-{k}",
                    ev.event_type,
                    ev.schema_version,
                    ev.model_dump(mode="json"),
                    META,
                ]
                for k in range(bs)
                for ev in (events[(i + k) % 1000],)
            ]
            await plain.execute(same_rows_sql, orjson.dumps(rows).decode())

        concurrent = 16

        async def append_concurrent(i: int) -> None:
            await asyncio.gather(
                *(
                    store.append(
                        f"sc-{tag}-{i}-{k}", [NewEvent(events[(i + k) % 1000], metadata=META)], 0
                    )
                    for k in range(concurrent)
                )
            )

        start = [0]
        p1 = _Rate("plain INSERT, 1 row per statement", plain_one, 1)
        s1 = _Rate("EventStore.append, 1 event, new stream", append_one, 1)
        await _compare(p1, s1, opts, start)
        ps = _Rate(
            f"plain INSERT of the same {bs} event rows, events' table shape", plain_same_rows, bs
        )
        sb = _Rate(f"EventStore.append_streams, {bs} new streams x 1 event", append_batch, bs)
        await _compare(ps, sb, opts, start)
        pb = _Rate(f"plain INSERT ... unnest, {bs} bare rows per statement", plain_batch, bs)
        sb2 = _Rate(f"EventStore.append_streams, {bs} new streams x 1 event", append_batch, bs)
        await _compare(pb, sb2, opts, start)
        p1c = _Rate("plain INSERT, 1 row per statement", plain_one, 1)
        sc = _Rate(
            f"EventStore.append, {concurrent} concurrent appenders, 1 event each",
            append_concurrent,
            concurrent,
        )
        statements, members = store.group_statements, store.group_members
        await _compare(p1c, sc, opts, start)
        grouped = (store.group_members - members) / max(1, store.group_statements - statements)
        print(f"  concurrent appenders: {grouped:.1f} appends per statement")
        print(
            f"  statements of the store: {store.group_statements} for {store.group_members} appends"
        )
    finally:
        await plain_pool.release(plain)
        await plain_pool.close()
        await store.close()
        await pool.close()
    section = "3 append"
    return [
        Figure(
            section,
            "single",
            s1.rate,
            "events/s",
            baseline=p1.rate,
            baseline_name="plain asyncpg INSERT of one row, same connection settings",
            target=0.8,
            target_on_ratio=True,
            note=(
                f"one pooled connection (pool size 1), {opts.append_seconds:.0f} s; durable"
                f" commits (see server settings); small JobRenamed event + command metadata;"
                f" baseline and store in 4 alternating rounds each"
            ),
            extra={"events": s1.calls, "seconds": s1.seconds, **s1.cpu},
        ),
        Figure(
            section,
            f"batched x{bs}",
            sb.rate,
            "events/s",
            baseline=ps.rate,
            baseline_name=(
                f"plain INSERT of the same {bs} event rows (same columns and values, one JSON"
                " parameter: faster than unnest of typed arrays) into a table shaped like the"
                " store's (its indexes and defaults), same connection settings"
            ),
            target=0.5,
            target_on_ratio=True,
            note="the store's own overhead: the rows and their indexes cost both sides alike",
            extra={"events": sb.calls * bs, "seconds": sb.seconds, **sb.cpu},
        ),
        Figure(
            section,
            f"batched x{bs} vs bare rows",
            sb2.rate,
            "events/s",
            baseline=pb.rate,
            baseline_name=(
                f"plain INSERT ... SELECT unnest of {bs} rows of 100 bytes of text into a"
                " table of an id and a text column"
            ),
            note=(
                "no target: what an event row costs (jsonb, four indexes) over a bare row;"
                " before 2026-12 this was the batched figure's baseline"
            ),
            extra={"events": sb2.calls * bs, "seconds": sb2.seconds, **sb2.cpu},
        ),
        Figure(
            section,
            f"{concurrent} concurrent single appends",
            sc.rate,
            "events/s",
            baseline=p1c.rate,
            baseline_name="plain INSERT of one row per statement, one connection",
            note=(
                f"no target: {concurrent} tasks each appending one event, one pooled"
                f" connection; group commit put {grouped:.1f} appends in a statement"
            ),
            extra={"appends_per_statement": grouped},
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
