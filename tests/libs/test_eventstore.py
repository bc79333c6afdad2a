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
    CommandAlreadyProcessed,
    CommandRecord,
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


async def test_a_unit_of_work_handling_several_causes_stamps_each_event_with_its_own(
    any_store: Store,
) -> None:
    await count(any_store, 1)
    uow = UnitOfWork(any_store)
    counter, other = await uow.get(FrameCounter, "x"), await uow.get(FrameCounter, "y")
    uow.stamp({"causation_id": "a"})
    counter.render(2)
    uow.stamp({"causation_id": "b"})
    counter.render(3)
    other.render(1)
    uow.stamp({"causation_id": "c"})
    counter.render(4)
    recorded = await uow.commit()
    assert len(recorded) == 4  # one write: the stream at the version it was loaded at
    x = await any_store.read_stream("counter-x")
    assert [(e.version, e.metadata["causation_id"]) for e in x[1:]] == [
        (2, "a"),
        (3, "b"),
        (4, "c"),
    ]
    [y] = await any_store.read_stream("counter-y")
    assert y.metadata["causation_id"] == "b"


async def test_an_aggregate_created_without_a_load_conflicts_if_its_stream_exists(
    any_store: Store,
) -> None:
    uow = UnitOfWork(any_store)
    uow.create(FrameCounter, "fresh").render(1)
    await uow.commit()
    assert [e.version for e in await any_store.read_stream("counter-fresh")] == [1]
    again = UnitOfWork(any_store)
    again.create(FrameCounter, "fresh").render(2)
    with pytest.raises(ConcurrencyError):
        await again.commit()


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


# -- group commit: appends without a connection that arrive together share one statement --


async def _group(store: EventStore, *appends: tuple[str, int, list[NewEvent]]) -> list[Any]:
    """Start every append at once and return each one's records or exception.

    The first append to arrive while nobody writes goes alone, at once; a pacer append goes
    first here, so the appends under test queue behind it and go together in the next
    statement (asserted)."""
    before = store.group_statements
    pacer, *results = await asyncio.gather(
        store.append(f"pacer-{before}", frames(0), 0),
        *(store.append(stream, events, expected) for stream, expected, events in appends),
        return_exceptions=True,
    )
    assert isinstance(pacer, list)
    assert store.group_statements == before + 2
    return list(results)


async def test_concurrent_appends_to_different_streams_commit_together(store: EventStore) -> None:
    results = await _group(store, *((f"job-g{i}", 0, frames(i, i + 100)) for i in range(20)))
    assert all(isinstance(r, list) and len(r) == 2 for r in results)
    assert len({r[0].tx_id for r in results}) == 1  # one transaction
    positions = [e.position for r in results for e in r]
    assert positions == sorted(positions)  # in arrival order
    for i in range(20):
        stored = await store.read_stream(f"job-g{i}")
        assert [(e.version, e.data["frame"]) for e in stored] == [(1, i), (2, i + 100)]
        assert [e.event_id for e in stored] == [e.event_id for e in results[i]]


async def test_a_stale_writer_in_a_group_fails_alone(store: EventStore) -> None:
    await store.append("job-busy", frames(1), expected_version=0)
    await store.append("job-ahead", frames(1), expected_version=0)
    results = await _group(
        store,
        ("job-n1", 0, frames(1)),
        ("job-busy", 0, frames(2)),  # stale: the stream is at version 1
        ("job-n2", 0, frames(1)),
        ("job-ahead", 3, frames(2)),  # ahead of the stream
        ("job-busy-ok", 0, frames(1)),
    )
    assert isinstance(results[1], ConcurrencyError) and results[1].streams == ["job-busy"]
    assert isinstance(results[3], ConcurrencyError)
    assert all(isinstance(results[i], list) for i in (0, 2, 4))
    assert [e.data["frame"] for e in await store.read_stream("job-busy")] == [1]
    assert len(await store.read_stream("job-ahead")) == 1
    assert len(await store.read_stream("job-n2")) == 1


async def test_a_multi_stream_writer_in_a_group_is_all_or_nothing(store: EventStore) -> None:
    await store.append("owner-g", frames(1), expected_version=0)
    before = store.group_statements
    _, *results = await asyncio.gather(
        store.append("pacer-x", frames(0), 0),  # the others queue behind it
        store.append_streams(
            [StreamWrite("job-x1", 0, frames(1)), StreamWrite("owner-g", 0, frames(2))]
        ),
        store.append("job-x2", frames(1), 0),
        return_exceptions=True,
    )
    assert store.group_statements == before + 2
    assert isinstance(results[0], ConcurrencyError) and isinstance(results[1], list)
    assert await store.read_stream("job-x1") == []


async def test_appends_to_one_stream_keep_their_order_across_statements(
    store: EventStore,
) -> None:
    # A writer that knows the versions it will reach: the same stream never goes into one
    # statement twice, so each append sees the one before it.
    before = store.group_statements
    results = await asyncio.gather(
        *(store.append("job-seq", frames(n), expected_version=n) for n in range(5)),
        store.append("job-other", frames(1), 0),
    )
    assert store.group_statements == before + 5
    assert [e.data["frame"] for e in await store.read_stream("job-seq")] == [0, 1, 2, 3, 4]
    cursors = [r[0].cursor for r in results[:5]]
    assert cursors == sorted(cursors)  # the feed has them in stream order


async def test_a_repeated_event_id_in_a_group_fails_alone(store: EventStore) -> None:
    twice = NewEvent(FrameRendered(frame=7))
    results = await _group(store, ("job-d1", 0, [twice]), ("job-d2", 0, [twice]))
    assert isinstance(results[0], list) and isinstance(results[1], DuplicateEventError)
    assert await store.read_stream("job-d2") == []


async def test_a_writer_racing_another_transaction_fails_alone(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        await store.append("job-race", frames(1), expected_version=0, conn=other)
        # The group cannot see the uncommitted version 1: its statement waits for it, then
        # fails on the unique index; each writer is then run alone.
        group = asyncio.ensure_future(
            asyncio.gather(
                store.append("job-race", frames(2), 0),
                store.append("job-calm", frames(1), 0),
                return_exceptions=True,
            )
        )
        await asyncio.sleep(0.2)
        await tx.commit()
    race, calm = await group
    assert isinstance(race, ConcurrencyError) and isinstance(calm, list)
    assert [e.data["frame"] for e in await store.read_stream("job-race")] == [1]


async def test_a_command_row_is_written_with_its_events_once(any_store: Store) -> None:
    row = CommandRecord("cmd-1", "test.Render", {"ok": True, "result": {}})
    await any_store.append_streams([StreamWrite("job-c", 0, frames(1))], command=row)
    with pytest.raises(CommandAlreadyProcessed):
        await any_store.append_streams([StreamWrite("job-c2", 0, frames(1))], command=row)
    assert await any_store.read_stream("job-c2") == []
    _, reply = await any_store.load_streams([], command_id="cmd-1")
    assert reply == {"ok": True, "result": {}}


async def test_a_processed_command_in_a_group_fails_alone(store: EventStore) -> None:
    row = CommandRecord("cmd-g", "test.Render", {"ok": True, "result": {}})
    await store.append_streams([], command=row)
    before = store.group_statements
    _, again, other = await asyncio.gather(
        store.append("pacer-p", frames(0), 0),  # the others queue behind it
        store.append_streams([StreamWrite("job-p1", 0, frames(1))], command=row),
        store.append("job-p2", frames(1), 0),
        return_exceptions=True,
    )
    assert store.group_statements == before + 2
    assert isinstance(again, CommandAlreadyProcessed) and isinstance(other, list)
    assert await store.read_stream("job-p1") == []


async def test_one_query_loads_several_streams_from_their_snapshots(any_store: Store) -> None:
    for n in range(1, 6):
        await count(any_store, n, snapshot_every=2)
    await any_store.append("job-plain", frames(1, 2), 0)
    loaded, reply = await any_store.load_streams([("counter-x", 1), ("job-plain", 1), ("nil", 1)])
    assert reply is None
    assert loaded["counter-x"].snapshot == (4, {"frames": [1, 2, 3, 4]})
    assert [d for _, _, d in loaded["counter-x"].events] == [{"frame": 5}]
    assert loaded["job-plain"].snapshot is None and len(loaded["job-plain"].events) == 2
    assert loaded["nil"].snapshot is None and loaded["nil"].events == []
