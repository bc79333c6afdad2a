"""Projections: effect and checkpoint commit together, so each event has its effect once."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

from libs.config import BaseServiceSettings
from libs.eventstore.feed import FeedWatcher
from libs.eventstore.processor import Projector
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.rebuild import rebuild
from libs.eventstore.store import EventStore, NewEvent, Position, RecordedEvent, create_pool
from tests.libs.conftest import ChunkRequeued, FrameRendered, registry
from tests.waiting import until


class FrameTally(ReadModel):
    """Counts each stream's frames; can crash after its effect, before the commit."""

    name = "frame-tally"
    table = "frame_tally"
    key = ("stream_id",)
    columns = {"stream_id": "text", "n": "integer"}
    registry = registry

    def __init__(self) -> None:
        self.crash_after_effect = False

    @on(FrameRendered, key=lambda e, rec: (rec.stream_id,))
    def counted(self, row: Row | None, e: FrameRendered, rec: RecordedEvent) -> Row | None:
        return {"stream_id": rec.stream_id, "n": (row["n"] if row else 0) + 1}

    async def apply(
        self, conn: asyncpg.Connection, events: list[RecordedEvent], schema: str
    ) -> None:
        await super().apply(conn, events, schema)
        if self.crash_after_effect:
            raise ConnectionResetError("process died after the effect, before the checkpoint")


async def tally(pool: asyncpg.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        return {r["stream_id"]: r["n"] for r in await conn.fetch("SELECT * FROM es.frame_tally")}


async def projector(store: EventStore, projection: FrameTally) -> Projector:
    async with store.pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS es.frame_tally (stream_id text PRIMARY KEY, n int)"
        )
    return Projector(store, projection, batch_size=10)


async def test_a_crash_between_effect_and_checkpoint_applies_each_event_exactly_once(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    for i in range(25):
        await store.append(f"job-{i % 3}", [NewEvent(FrameRendered(frame=i))], i // 3)
    projection = FrameTally()
    first = await projector(store, projection)
    await first.run_once()  # 10 events applied and checkpointed
    assert sum((await tally(pool)).values()) == 10
    projection.crash_after_effect = True
    with pytest.raises(ConnectionResetError):
        await first.run_once()
    assert sum((await tally(pool)).values()) == 10  # the effect went with the checkpoint
    projection.crash_after_effect = False
    # A fresh runner (the restarted process) resumes from the stored checkpoint.
    restarted = await projector(store, projection)
    await restarted.catch_up()
    assert await tally(pool) == {"job-0": 9, "job-1": 8, "job-2": 8}


async def test_a_zombie_runner_cannot_apply_a_batch_twice(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    for i in range(5):
        await store.append(f"job-{i}", [NewEvent(FrameRendered(frame=i))], 0)
    projection = FrameTally()
    a, b = await projector(store, projection), await projector(store, projection)
    await asyncio.gather(a.run_once(), b.run_once())
    await a.catch_up()
    await b.catch_up()
    assert sum((await tally(pool)).values()) == 5


async def test_rebuilding_a_projection_from_zero_gives_the_same_read_model(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    for i in range(40):
        await store.append(f"job-{i % 7}", [NewEvent(FrameRendered(frame=i))], i // 7)
    p = await projector(store, FrameTally())
    await p.catch_up()
    before = await tally(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE es.frame_tally SET n = 0 WHERE stream_id = 'job-3'")
    check = await rebuild(store, FrameTally(), verify=True)
    assert [(d.kind, d.key, d.columns) for d in check.differences] == [
        ("changed", ("job-3",), {"n": (0, before["job-3"])})
    ]
    done = await rebuild(store, FrameTally())
    assert done.events == 40
    assert await tally(pool) == before
    assert (await rebuild(store, FrameTally(), verify=True)).differences == []


async def test_a_running_projector_wakes_at_once_on_a_local_append(store: EventStore) -> None:
    p = await projector(store, FrameTally())
    p.poll_interval = 30  # only the local wake-up can make this test pass in time
    stopping = asyncio.Event()
    task = asyncio.create_task(p.run(stopping))
    try:
        [recorded] = await store.append("job-w", [NewEvent(FrameRendered(frame=1))], 0)
        await asyncio.wait_for(p.wait_for(recorded.cursor), 2)
    finally:
        stopping.set()
        await task


_APPEND_ELSEWHERE = """
import asyncio, sys
from libs.eventstore.store import EventStore, NewEvent, create_pool
from tests.libs.conftest import FrameRendered, registry

async def main() -> None:
    pool = await create_pool(sys.argv[1], min_size=1, max_size=1)
    store = EventStore(pool, "es", registry)
    [r] = await store.append("job-elsewhere", [NewEvent(FrameRendered(frame=7))], 0)
    print(r.tx_id, r.position)
    await store.close()
    await pool.close()

asyncio.run(main())
"""


async def test_the_feed_watcher_wakes_a_projector_on_an_append_made_by_another_process(
    store: EventStore, settings: BaseServiceSettings
) -> None:
    p = await projector(store, FrameTally())
    p.poll_interval = 30  # only the feed watcher can make this test pass in time
    watcher = FeedWatcher(store, 0.02)
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stopping)), asyncio.create_task(watcher.run(stopping))]
    try:
        await until(lambda: asyncio.sleep(0, p.is_leader), "the projector to lead")
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _APPEND_ELSEWHERE,
            settings.database_url,
            cwd=Path(__file__).resolve().parents[2],
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await child.communicate()
        assert child.returncode == 0
        tx_id, position = map(int, out.split())
        await asyncio.wait_for(p.wait_for(Position(tx_id, position)), 5)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


async def test_the_feed_watcher_wakes_tailers_while_an_older_transaction_holds_the_head(
    store: EventStore, settings: BaseServiceSettings
) -> None:
    """An append committed while an older transaction runs is not readable yet, but the
    watcher sees its commit and wakes the tailers (which read nothing); when the older one
    ends, the head moves and wakes them again, and the event is applied."""
    p = await projector(store, FrameTally())
    p.poll_interval = 30
    watcher = FeedWatcher(store, 0.02)
    other_pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    elsewhere = EventStore(other_pool, "es", registry)  # its appends do not wake `p`
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stopping)), asyncio.create_task(watcher.run(stopping))]
    try:
        await until(lambda: asyncio.sleep(0, p.is_leader), "the projector to lead")
        async with store.pool.acquire() as older:
            tx = older.transaction()
            await tx.start()
            await older.fetchval("SELECT pg_current_xact_id()")  # has an id: holds the head
            [recorded] = await elsewhere.append("job-held", [NewEvent(FrameRendered(frame=1))], 0)
            wakes = watcher.wakes
            await until(
                lambda: asyncio.sleep(0, watcher.latest == recorded.position),
                "the watcher to see the commit",
            )
            assert watcher.head < recorded.cursor  # not readable yet ...
            assert watcher.wakes > wakes  # ... but the tailers were woken
            assert p.position < recorded.cursor
            await tx.commit()
        await asyncio.wait_for(p.wait_for(recorded.cursor), 5)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
        await elsewhere.close()
        await other_pool.close()


async def test_batches_with_nothing_to_project_store_the_checkpoint_only_when_due(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    """Events for other read models move the projector in memory; its checkpoint follows
    within the interval, and at once with a batch it applies."""
    p = await projector(store, FrameTally())
    p.checkpoint_interval = 0.3
    p.poll_interval = 0.05
    stopping = asyncio.Event()
    task = asyncio.create_task(p.run(stopping))
    try:
        [first] = await store.append("job-c", [NewEvent(FrameRendered(frame=1))], 0)
        await asyncio.wait_for(p.wait_for(first.cursor), 2)
        assert await store.checkpoint(p.name) == first.cursor  # applied: stored at once
        [other] = await store.append(
            "job-c", [NewEvent(ChunkRequeued(chunk=1, reason="worker lost"))], 1
        )
        await asyncio.wait_for(p.wait_for(other.cursor), 2)
        assert await store.checkpoint(p.name) == first.cursor  # not this one's
        await until(
            lambda: _stored_at(store, p.name, other.cursor), "the checkpoint stored when due"
        )
        [second] = await store.append("job-c", [NewEvent(FrameRendered(frame=2))], 2)
        await asyncio.wait_for(p.wait_for(second.cursor), 2)
        assert await store.checkpoint(p.name) == second.cursor
        assert await tally(pool) == {"job-c": 2}
    finally:
        stopping.set()
        await task


async def _stored_at(store: EventStore, name: str, cursor: Position) -> bool:
    return await store.checkpoint(name) == cursor
