"""Group commit under load, on PostgreSQL: appends without a connection that arrive while a
statement is in flight go together in the next one, each with its own optimistic-concurrency
result; nothing is lost, doubled or skipped by a tailer."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from libs.eventstore.store import (
    ConcurrencyError,
    EventStore,
    NewEvent,
    Position,
    RecordedEvent,
    StreamWrite,
)
from tests.libs.conftest import FrameRendered


def frames(*numbers: int) -> list[NewEvent]:
    return [NewEvent(FrameRendered(frame=n)) for n in numbers]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for ``check()`` to hold (polled), at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.005)


async def test_concurrent_appenders_to_different_streams_all_commit_with_their_versions(
    store: EventStore,
) -> None:
    writers, appends = 30, 10
    statements, members = store.group_statements, store.group_members

    async def writer(w: int) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        for n in range(appends):  # one event, then two, alternately
            events = frames(n) if n % 2 == 0 else frames(n, n + 1000)
            version = out[-1].version if out else 0
            out += await store.append(f"job-w{w}", events, expected_version=version)
        return out

    results = await asyncio.gather(*(writer(w) for w in range(writers)))
    for w, recorded in enumerate(results):
        stored = await store.read_stream(f"job-w{w}")
        assert [e.version for e in stored] == list(range(1, len(stored) + 1))
        assert len(stored) == appends // 2 * 3
        assert [(e.event_id, e.position, e.tx_id) for e in stored] == [
            (e.event_id, e.position, e.tx_id) for e in recorded
        ]
    assert store.group_members - members == writers * appends
    # They shared statements: far fewer statements than appends.
    assert store.group_statements - statements < writers * appends / 3


async def test_a_conflict_in_a_group_fails_only_that_append(store: EventStore) -> None:
    for stream in ("job-stale", "job-ahead", "job-stale-leader"):
        await store.append(stream, frames(1), 0)
    for leader_stale in (False, True):
        tag = uuid.uuid4().hex[:6]
        before = store.group_statements
        # The first append writes alone, or (once appends came in company) waits one turn
        # for the others; the rest share one statement either way.
        leader = ("job-stale-leader", 0) if leader_stale else (f"job-lead-{tag}", 0)
        appends = [leader] + [(f"job-{tag}-{i}", 0) for i in range(10)]
        appends[5] = ("job-stale", 0)  # stale: the stream is at version 1
        appends[8] = ("job-ahead", 7)  # ahead of the stream
        results = await asyncio.gather(
            *(store.append(s, frames(i), v) for i, (s, v) in enumerate(appends)),
            return_exceptions=True,
        )
        assert store.group_statements - before == (1 if leader_stale else 2)
        refused = {5, 8} | ({0} if leader_stale else set())
        for i, ((stream, _), result) in enumerate(zip(appends, results, strict=True)):
            if i in refused:
                assert isinstance(result, ConcurrencyError), i
                assert result.streams == [stream]
            else:
                assert isinstance(result, list) and [e.version for e in result] == [1], i
                assert [e.data["frame"] for e in await store.read_stream(stream)] == [i]
        group_tx = {r[0].tx_id for r in results[1:] if isinstance(r, list)}
        assert len(group_tx) == 1  # the group's writers committed in one transaction
    for stream in ("job-stale", "job-ahead", "job-stale-leader"):
        assert [e.data["frame"] for e in await store.read_stream(stream)] == [1]


async def test_a_cancelled_leader_does_not_strand_the_appends_queued_behind_it(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        # Version 1 of job-held is written but not committed: the leader's insert waits on it.
        await store.append("job-held", frames(1), 0, conn=other)
        leader = asyncio.ensure_future(store.append("job-held", frames(2), 0))
        await until(lambda: _waiting_on_a_lock(pool))
        queued = asyncio.ensure_future(
            asyncio.gather(*(store.append(f"job-queued-{i}", frames(i), 0) for i in range(3)))
        )
        await asyncio.sleep(0)  # they join the queue behind the leader
        leader.cancel()
        results = await asyncio.wait_for(queued, 10)
        assert [[e.version for e in r] for r in results] == [[1], [1], [1]]
        await tx.rollback()
    assert leader.cancelled()
    assert await store.read_stream("job-held") == []


async def _waiting_on_a_lock(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    return n > 0


async def test_no_event_is_lost_doubled_or_skipped_by_a_tailer_under_contention(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    streams = [f"job-c{i}" for i in range(6)]
    writers, per_writer = 12, 25
    acknowledged: dict[uuid.UUID, tuple[str, int]] = {}
    refused: set[uuid.UUID] = set()
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for n in range(per_writer):
            while True:
                # Two streams at once, sometimes: a multi-stream member of a group.
                picked = random.sample(streams, random.choice((1, 1, 2)))
                writes = []
                for stream in picked:
                    version = len(await store.read_stream(stream))
                    writes.append(StreamWrite(stream, version, frames(w * 1000 + n)))
                try:
                    recorded = await store.append_streams(writes)
                except ConcurrencyError:
                    refused.update(e.event_id for wr in writes for e in wr.events)
                    continue
                acknowledged.update({e.event_id: (e.stream_id, e.version) for e in recorded})
                break

    async def slow_writer() -> None:
        # A transaction of its own that stays open a while: the tailer must wait for it,
        # never pass it.
        for k in range(3):
            async with pool.acquire() as conn, conn.transaction():
                recorded = await store.append(f"job-slow-{k}", frames(k), 0, conn=conn)
                await asyncio.sleep(0.05)
            acknowledged.update({e.event_id: (e.stream_id, e.version) for e in recorded})

    seen: list[RecordedEvent] = []

    async def tailer() -> None:
        position = Position.start()
        while True:
            batch = await store.read_all(position, limit=29)
            for e in batch:
                assert e.cursor > position  # the feed only moves forward
                seen.append(e)
                position = e.cursor
            if not batch:
                if done.is_set() and position == await store.head():
                    return
                await asyncio.sleep(0.002)

    tail = asyncio.create_task(tailer())
    await asyncio.gather(*(writer(w) for w in range(writers)), slow_writer())
    done.set()
    await asyncio.wait_for(tail, 30)

    stored = await store.read_by_position(0, limit=100_000)
    seen_ids = [e.event_id for e in seen]
    assert len(seen_ids) == len(set(seen_ids))  # nothing twice
    assert set(seen_ids) == {e.event_id for e in stored}  # nothing skipped
    assert {e.event_id: (e.stream_id, e.version) for e in stored} == acknowledged
    assert not refused & set(seen_ids)  # a refused append wrote nothing
    for stream in streams:
        versions = [e.version for e in seen if e.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))  # per stream, in order
