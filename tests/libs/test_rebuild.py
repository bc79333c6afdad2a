"""The rebuild's bulk path (in-memory fold, COPY, indexes after) and its fallback."""

from __future__ import annotations

import asyncpg

from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.rebuild import rebuild
from libs.eventstore.store import EventStore, NewEvent, RecordedEvent
from tests.libs.conftest import FrameRendered, registry


class Frames(ReadModel):
    """Each stream's frame count and the last actor; frame 13 makes the rule fail."""

    name = "frames-seen"
    table = "frames_seen"
    key = ("stream_id",)
    columns = {"stream_id": "text", "n": "integer", "actor": "text"}
    registry = registry
    reads_metadata = True

    @on(FrameRendered, key=lambda e, rec: (rec.stream_id,))
    def rendered(self, row: Row | None, e: FrameRendered, rec: RecordedEvent) -> Row | None:
        if e.frame == 13:
            raise ValueError("unlucky frame")
        n = (row["n"] if row else 0) + 1
        return {"stream_id": rec.stream_id, "n": n, "actor": rec.metadata.get("actor")}


class FramesNoMetadata(Frames):
    reads_metadata = False


async def table(pool: asyncpg.Pool, check: str = "") -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE es.frames_seen (stream_id text PRIMARY KEY, n int NOT NULL"
            f" {check}, actor text);"
            " CREATE INDEX frames_seen_n ON es.frames_seen (n DESC, stream_id)"
        )


async def rows(pool: asyncpg.Pool) -> dict[str, tuple[int, str | None]]:
    async with pool.acquire() as conn:
        got = await conn.fetch("SELECT * FROM es.frames_seen")
    return {r["stream_id"]: (r["n"], r["actor"]) for r in got}


async def history(store: EventStore) -> None:
    for i in range(30):
        event = NewEvent(FrameRendered(frame=i), metadata={"actor": f"a{i}"})
        await store.append(f"s-{i % 4}", [event], i // 4)


async def test_the_bulk_path_folds_copies_indexes_and_quarantines_a_failing_stream(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await table(pool)
    await history(store)
    done = await rebuild(store, Frames())
    assert (done.path, done.events, done.quarantined) == ("bulk", 30, 1)
    # frame 13 is s-1's fourth event: s-1 stops at three, its later events are held.
    assert await rows(pool) == {"s-0": (8, "a28"), "s-1": (3, "a9"), "s-2": (7, "a26"),
                                "s-3": (7, "a27")}  # fmt: skip
    async with pool.acquire() as conn:
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = $1", "frames_seen"
        )
        held = await conn.fetch(
            "SELECT version, error FROM es.quarantine WHERE projection = 'frames-seen'"
            " ORDER BY version"
        )
    assert {r["indexname"] for r in indexes} == {"frames_seen_pkey", "frames_seen_n"}
    assert held[0]["version"] == 4 and "unlucky frame" in held[0]["error"]
    assert [r["error"] for r in held[1:]] == [None] * 4
    assert (await rebuild(store, Frames(), verify=True)).differences == []


async def test_a_rule_reading_metadata_it_did_not_declare_fails_instead_of_misreading(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await table(pool)
    await history(store)
    done = await rebuild(store, FramesNoMetadata())
    assert done.quarantined == 4 and await rows(pool) == {}


async def test_rows_the_table_refuses_send_the_rebuild_down_the_incremental_path(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await table(pool, "CHECK (n < 8)")  # s-0 reaches 8: that write fails
    await history(store)
    done = await rebuild(store, Frames())
    assert done.path == "incremental"
    got = await rows(pool)
    assert got["s-0"][0] == 7 and got["s-2"] == (7, "a26")
    assert done.quarantined == 2  # s-1 (the rule) and s-0 (the table)
