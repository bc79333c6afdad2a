"""The event store: optimistic concurrency, gap-free global feed, upcasting, snapshots.

One suite, two back-ends: every test taking ``any_store`` runs against PostgreSQL and
against the in-memory twin, so unit tests on the twin mean what they say. Tests taking
``store`` are about PostgreSQL itself (transactions, SQL rows).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from contracts.base import Event
from libs.eventstore.aggregate import Aggregate
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.store import (
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    NewEvent,
    Position,
    StreamWrite,
)
from libs.eventstore.uow import UnitOfWork
from tests.libs.conftest import ChunkRequeued, FrameRendered, registry

Store = EventStore | InMemoryEventStore


@pytest.fixture(params=["postgres", "memory"])
def any_store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return InMemoryEventStore("es", registry)
    return request.getfixturevalue("store")


def frames(*numbers: int) -> list[NewEvent]:
    return [NewEvent(FrameRendered(frame=n)) for n in numbers]


async def test_append_at_a_stale_version_is_refused_and_changes_nothing(any_store: Store) -> None:
    await any_store.append("job-a", frames(1, 2), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await any_store.append("job-a", frames(3), expected_version=1)
    with pytest.raises(ConcurrencyError):
        await any_store.append("job-a", frames(3), expected_version=0)
    assert [e.version for e in await any_store.read_stream("job-a")] == [1, 2]


async def test_append_ahead_of_the_stream_is_refused(any_store: Store) -> None:
    await any_store.append("job-a", frames(1), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await any_store.append("job-a", frames(2), expected_version=5)
    assert len(await any_store.read_stream("job-a")) == 1


async def test_of_two_concurrent_writers_exactly_one_wins(any_store: Store) -> None:
    results = await asyncio.gather(
        *(any_store.append("job-race", frames(i), expected_version=0) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConcurrencyError) for r in results if isinstance(r, Exception))


async def test_a_multi_stream_append_is_all_or_nothing(any_store: Store) -> None:
    await any_store.append("owner-1", frames(1), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await any_store.append_streams(
            [
                StreamWrite("job-new", 0, frames(1)),
                StreamWrite("owner-1", 0, frames(2)),  # stale: owner-1 is at version 1
            ]
        )
    assert await any_store.read_stream("job-new") == []


async def test_the_same_event_id_is_never_stored_twice(any_store: Store) -> None:
    event = NewEvent(FrameRendered(frame=1))
    await any_store.append("job-a", [event], expected_version=0)
    with pytest.raises(DuplicateEventError):
        await any_store.append("job-b", [event], expected_version=0)
    assert await any_store.read_stream("job-b") == []


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
    any_store: Store,
) -> None:
    writers, per_writer, streams = 8, 60, [f"job-{i}" for i in range(5)]
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for n in range(per_writer):
            stream = random.choice(streams)
            while True:
                version = len(await any_store.read_stream(stream))
                try:
                    await any_store.append(stream, frames(w * 1000 + n), expected_version=version)
                    break
                except ConcurrencyError:
                    await asyncio.sleep(random.random() / 100)

    seen: list[tuple[str, int]] = []

    async def tailer() -> None:
        position = Position.start()
        while True:
            batch = await any_store.read_all(position, limit=37)
            for e in batch:
                seen.append((e.stream_id, e.version))
                position = e.cursor
            if not batch:
                if done.is_set() and position == await any_store.head():
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
    stream_prefix = "counter"
    frames: list[int] = []

    def apply(self, event: Event) -> None:
        assert isinstance(event, FrameRendered)
        self.frames.append(event.frame)

    def render(self, frame: int) -> None:
        self.record(FrameRendered(frame=frame))


async def count(store: Store, *frames: int, snapshot_every: int = 100) -> FrameCounter:
    """Load the counter in a new unit of work, record ``frames`` and commit."""
    uow = UnitOfWork(store, snapshot_every=snapshot_every)
    counter = await uow.get(FrameCounter, "x")
    for n in frames:
        counter.render(n)
    await uow.commit()
    return counter


async def test_a_unit_of_work_saves_what_its_aggregates_recorded_at_their_versions(
    any_store: Store,
) -> None:
    assert (await count(any_store, 1, 2)).version == 2
    counter = await count(any_store, 3)
    assert (counter.version, counter.frames, counter.pending) == (3, [1, 2, 3], ())
    assert [e.version for e in await any_store.read_stream("counter-x")] == [1, 2, 3]


async def test_two_units_of_work_on_one_stream_cannot_both_commit(any_store: Store) -> None:
    first, second = UnitOfWork(any_store), UnitOfWork(any_store)
    (await first.get(FrameCounter, "x")).render(1)
    (await second.get(FrameCounter, "x")).render(2)
    await first.commit()
    with pytest.raises(ConcurrencyError):
        await second.commit()
    assert (await count(any_store)).frames == [1]


async def test_a_long_stream_loads_from_its_snapshot_with_the_same_state(
    any_store: Store,
) -> None:
    for n in range(1, 8):
        await count(any_store, n, snapshot_every=3)
    snap = await any_store.load_snapshot("counter-x")
    assert snap is not None and snap[0] == 6
    loaded = await count(any_store)
    assert (loaded.version, loaded.frames) == (7, [1, 2, 3, 4, 5, 6, 7])
    # The snapshot is used: change it and the loaded state shows it.
    await any_store.save_snapshot("counter-x", 7, 1, {"frames": [99, 7]})
    assert (await count(any_store)).frames == [99, 7]


async def test_a_snapshot_the_current_class_cannot_read_is_ignored(any_store: Store) -> None:
    await count(any_store, 1, 2)
    await any_store.save_snapshot("counter-x", 2, 1, {"frames": "not a list"})
    assert (await count(any_store)).frames == [1, 2]
