"""Poison events: a projection that cannot apply an event quarantines that stream only, the
rest of the batch and every other stream go on, and a retry applies the held events in order
once the cause is fixed."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest

from libs.eventstore.processor import Projector
from libs.eventstore.projection import ReadModel, Row, on, quarantined, quarantined_streams
from libs.eventstore.store import EventStore, NewEvent, RecordedEvent
from tests.libs.conftest import FrameRendered, registry


class Tally(ReadModel):
    """Frames per stream; raises for the streams in ``broken`` from frame ``broken_from``."""

    name = "tally"
    table = "tally"
    key = ("stream_id",)
    columns = {"stream_id": "text", "n": "integer", "last_frame": "integer"}
    registry = registry

    def __init__(self, table: str = "tally") -> None:
        self.table = table
        self.broken: set[str] = set()
        self.broken_from = 0

    @on(FrameRendered, key=lambda e, rec: (rec.stream_id,))
    def counted(self, row: Row | None, e: FrameRendered, rec: RecordedEvent) -> Row | None:
        if rec.stream_id in self.broken and e.frame >= self.broken_from:
            raise ValueError(f"cannot count frame {e.frame} of {rec.stream_id}")
        n = (row["n"] if row else 0) + 1
        return {"stream_id": rec.stream_id, "n": n, "last_frame": e.frame}


@pytest.fixture
async def tables(pool: asyncpg.Pool, store: EventStore) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE es.tally (stream_id text PRIMARY KEY, n int NOT NULL,"
            " last_frame int NOT NULL);"
            "CREATE TABLE es.tally_small (stream_id text PRIMARY KEY, n int NOT NULL"
            " CHECK (n <= 3), last_frame int NOT NULL)"
        )


async def counts(pool: asyncpg.Pool, table: str = "tally") -> dict[str, int]:
    async with pool.acquire() as conn:
        return {r["stream_id"]: r["n"] for r in await conn.fetch(f"SELECT * FROM es.{table}")}


async def append_round_robin(store: EventStore, streams: int, per_stream: int) -> None:
    for v in range(per_stream):
        for s in range(streams):
            await store.append(f"job-{s}", [NewEvent(FrameRendered(frame=v))], v)


async def test_a_failing_rule_quarantines_its_stream_and_every_other_stream_goes_on(
    store: EventStore, pool: asyncpg.Pool, tables: None
) -> None:
    await append_round_robin(store, streams=4, per_stream=6)
    model = Tally()
    model.broken, model.broken_from = {"job-2"}, 3
    projector = Projector(store, model, batch_size=7)  # the failure lands inside a batch
    await projector.catch_up()
    assert await counts(pool) == {"job-0": 6, "job-1": 6, "job-2": 3, "job-3": 6}
    async with pool.acquire() as conn:
        entries = await quarantined(conn, "es")
        assert await quarantined_streams(conn, "es") == {"tally": 1}
    assert [(e.stream_id, e.version) for e in entries] == [("job-2", v) for v in (4, 5, 6)]
    assert entries[0].error == "ValueError: cannot count frame 3 of job-2"
    assert [e.error for e in entries[1:]] == [None, None]  # held behind it, in order

    # Later events of the stream are held too; the other streams keep updating.
    await store.append("job-2", [NewEvent(FrameRendered(frame=6))], 6)
    await store.append("job-0", [NewEvent(FrameRendered(frame=6))], 6)
    await projector.catch_up()
    assert await counts(pool) == {"job-0": 7, "job-1": 6, "job-2": 3, "job-3": 6}

    # Still broken: the retry stores the new error and changes nothing.
    assert await model.retry(store, "job-2") == (0, "ValueError: cannot count frame 3 of job-2")
    # Fixed: the held events are applied in order and leave the quarantine.
    model.broken = set()
    assert await model.retry(store, "job-2") == (4, None)
    assert (await counts(pool))["job-2"] == 7
    async with pool.acquire() as conn:
        assert await quarantined(conn, "es") == []
        assert await conn.fetchval("SELECT last_frame FROM es.tally WHERE stream_id = 'job-2'") == 6
    await store.append("job-2", [NewEvent(FrameRendered(frame=7))], 7)
    await projector.catch_up()
    assert (await counts(pool))["job-2"] == 8


async def test_a_write_the_table_refuses_is_traced_to_its_event_and_the_batch_commits(
    store: EventStore, pool: asyncpg.Pool, tables: None
) -> None:
    """The table allows n <= 3: the 4th event of each stream fails in the one upsert, so the
    batch is retried per stream and then per event, in savepoints."""
    await store.append("job-a", [NewEvent(FrameRendered(frame=i)) for i in range(5)], 0)
    await store.append("job-b", [NewEvent(FrameRendered(frame=i)) for i in range(2)], 0)
    projector = Projector(store, Tally("tally_small"), batch_size=100)
    await projector.catch_up()
    assert await counts(pool, "tally_small") == {"job-a": 3, "job-b": 2}
    async with pool.acquire() as conn:
        entries = await quarantined(conn, "es")
    assert [(e.stream_id, e.version, e.error is None) for e in entries] == [
        ("job-a", 4, False),
        ("job-a", 5, True),
    ]
    assert entries[0].error is not None and "CheckViolationError" in entries[0].error


async def test_an_event_that_does_not_decode_is_quarantined(
    store: EventStore, pool: asyncpg.Pool, tables: None
) -> None:
    await store.append("job-0", [NewEvent(FrameRendered(frame=1))], 0)
    async with pool.acquire() as conn:  # written straight into the store: a bad payload
        await conn.execute(
            "INSERT INTO es.events (event_id, stream_id, version, type, schema_version, data,"
            " metadata) VALUES ($1, 'job-1', 1, 'test.FrameRendered', 1, $2::text::jsonb, '{}')",
            uuid.uuid4(),
            orjson.dumps({"frame": "not a number"}).decode(),
        )
    await store.append("job-0", [NewEvent(FrameRendered(frame=2))], 1)
    await Projector(store, Tally()).catch_up()
    assert await counts(pool) == {"job-0": 2}
    async with pool.acquire() as conn:
        [entry] = await quarantined(conn, "es")
    assert entry.stream_id == "job-1" and entry.event_type == "test.FrameRendered"
    assert entry.error is not None and entry.error.startswith("ValidationError")
