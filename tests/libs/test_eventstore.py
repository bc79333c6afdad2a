"""The event store: optimistic concurrency, gap-free global feed, upcasting, snapshots."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from libs.eventstore.aggregate import Aggregate, Repository
from libs.eventstore.store import ConcurrencyError, EventStore, NewEvent, Position, StreamWrite
from tests.libs.conftest import ChunkRequeued, FrameRendered


def frames(*numbers: int) -> list[NewEvent]:
    return [NewEvent(FrameRendered(frame=n)) for n in numbers]


async def test_append_at_a_stale_version_is_refused_and_changes_nothing(store: EventStore) -> None:
    await store.append("job-a", frames(1, 2), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append("job-a", frames(3), expected_version=1)
    with pytest.raises(ConcurrencyError):
        await store.append("job-a", frames(3), expected_version=0)
    assert [e.version for e in await store.read_stream("job-a")] == [1, 2]


async def test_append_ahead_of_the_stream_is_refused(store: EventStore) -> None:
    await store.append("job-a", frames(1), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append("job-a", frames(2), expected_version=5)
    assert len(await store.read_stream("job-a")) == 1


async def test_of_two_concurrent_writers_exactly_one_wins(store: EventStore) -> None:
    results = await asyncio.gather(
        *(store.append("job-race", frames(i), expected_version=0) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConcurrencyError) for r in results if isinstance(r, Exception))


async def test_a_multi_stream_append_is_all_or_nothing(store: EventStore) -> None:
    await store.append("owner-1", frames(1), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append_streams(
            [
                StreamWrite("job-new", 0, frames(1)),
                StreamWrite("owner-1", 0, frames(2)),  # stale: owner-1 is at version 1
            ]
        )
    assert await store.read_stream("job-new") == []


async def test_the_same_event_id_is_never_stored_twice(store: EventStore) -> None:
    event = NewEvent(FrameRendered(frame=1))
    await store.append("job-a", [event], expected_version=0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await store.append("job-b", [event], expected_version=0)


async def test_the_feed_waits_for_a_slow_transaction_instead_of_skipping_it(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        await store.append("job-slow", frames(1), expected_version=0, conn=slow)
        # A later, fast writer commits first. Its event must not be read yet: reading it
        # would move a tailer past the slow one's position and skip it for ever.
        await store.append("job-fast", frames(2), expected_version=0)
        assert await store.read_all(Position.start()) == []
        await tx.commit()
    feed = await store.read_all(Position.start())
    assert [e.stream_id for e in feed] == ["job-slow", "job-fast"]


async def test_a_tailer_sees_every_event_once_and_in_stream_order_under_concurrent_writers(
    store: EventStore,
) -> None:
    writers, per_writer, streams = 8, 60, [f"job-{i}" for i in range(5)]
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for n in range(per_writer):
            stream = random.choice(streams)
            while True:
                version = len(await store.read_stream(stream))
                try:
                    await store.append(stream, frames(w * 1000 + n), expected_version=version)
                    break
                except ConcurrencyError:
                    await asyncio.sleep(random.random() / 100)

    seen: list[tuple[str, int]] = []

    async def tailer() -> None:
        position = Position.start()
        while True:
            batch = await store.read_all(position, limit=37)
            for e in batch:
                seen.append((e.stream_id, e.version))
                position = e.cursor
            if not batch:
                if done.is_set() and position == await store.head():
                    return
                await asyncio.sleep(0.005)

    tail = asyncio.create_task(tailer())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await asyncio.wait_for(tail, 30)
    assert len(seen) == writers * per_writer == len(set(seen))
    for stream in streams:
        versions = [v for s, v in seen if s == stream]
        assert versions == list(range(1, len(versions) + 1))


async def test_an_old_event_is_upcast_to_the_current_schema(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO es.events (event_id, stream_id, version, type, schema_version, data,"
            " metadata) VALUES (gen_random_uuid(), 'job-old', 1, 'test.ChunkRequeued', 1,"
            """ '{"chunk": 7}', '{}')"""
        )
    [recorded] = await store.read_stream("job-old")
    event = recorded.decode(store.registry)
    assert event == ChunkRequeued(chunk=7, reason="unknown (recorded before v2)")


class FrameCounter(Aggregate):
    frames: list[int] = []

    def apply(self, event: object) -> None:
        assert isinstance(event, FrameRendered)
        self.frames.append(event.frame)


async def test_a_long_stream_loads_from_its_snapshot_with_the_same_state(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    repo = Repository(store, FrameCounter, "counter", snapshot_every=3)
    for n in range(1, 8):
        loaded = await repo.load("x")
        await repo.save(loaded, frames(n))
    snap = await store.load_snapshot("counter-x")
    assert snap is not None and snap[0] == 6
    loaded = await repo.load("x")
    assert (loaded.version, loaded.state.frames) == (7, [1, 2, 3, 4, 5, 6, 7])
    # The snapshot is used: tamper with it and the loaded state shows it.
    async with pool.acquire() as conn:
        await conn.execute("""UPDATE es.snapshots SET state = '{"frames": [99]}'""")
    assert (await repo.load("x")).state.frames == [99, 7]
