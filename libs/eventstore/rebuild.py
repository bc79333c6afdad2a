"""Blue/green rebuild of a read model, and verification against the live one.

:func:`rebuild` builds ``<table>__next`` (``LIKE <table> INCLUDING ALL``: same columns,
constraints and indexes) from the start of the feed up to the head it captured when it
started, while the live projector goes on. Then, in one transaction, it locks the
projection's checkpoint row (the live projector's next batch waits on it) and then the live
table, applies what was appended since, swaps the tables by renaming (and renames the new
indexes to the old names), moves the checkpoint to where it got, and commits. The live
projector resumes from there. Readers see the old table, wait the moment of the swap, then
see the new one: never a partial model.

``verify=True`` builds the same way, up to the live checkpoint, and compares the two tables
row by row instead of swapping (then drops the new one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from libs.eventstore.projection import Key, ReadModel
from libs.eventstore.store import EventStore, Position

NEXT = "__next"
SHADOW = "__rebuild"


@dataclass(frozen=True)
class Difference:
    #: ``missing`` (the events give a row the live table lacks), ``extra`` (a live row the
    #: events do not give) or ``changed``.
    kind: str
    key: Key
    #: For ``changed``: column -> (live value, rebuilt value).
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass
class RebuildResult:
    name: str
    table: str
    events: int
    position: Position
    #: Streams the rebuild had to quarantine (its entries replace the live ones on swap).
    quarantined: int = 0
    #: Only with ``verify``.
    differences: list[Difference] = field(default_factory=list)


async def rebuild(
    store: EventStore, model: ReadModel, *, verify: bool = False, batch_size: int = 2000
) -> RebuildResult:
    s = store.schema
    async with store.pool.acquire() as lock:  # one rebuild of a model at a time
        key = f"rebuild:{s}.{model.name}"
        if not await lock.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            raise RuntimeError(f"a rebuild of {s}.{model.name} is already running")
        try:
            return await _rebuild(store, model, verify, batch_size)
        finally:
            await lock.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _rebuild(
    store: EventStore, model: ReadModel, verify: bool, batch_size: int
) -> RebuildResult:
    s, live = store.schema, model.table
    nxt = f"{live}{NEXT}"
    shadow = model.retarget(table=nxt, name=f"{model.name}{SHADOW}")
    async with store.pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {s}.{nxt}")
        await conn.execute(f"CREATE TABLE {s}.{nxt} (LIKE {s}.{live} INCLUDING ALL)")
        await conn.execute(f"DELETE FROM {s}.quarantine WHERE projection = $1", shadow.name)
    swapped = False
    try:
        target = await store.checkpoint(model.name) if verify else await store.head()
        position, count = await _follow(store, shadow, Position.start(), target, batch_size)
        async with store.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await store.checkpoint(model.name, conn)
                row = await conn.fetchrow(
                    f"SELECT tx_id::text::bigint AS tx_id, position FROM {s}.checkpoints"
                    " WHERE name = $1 FOR UPDATE",
                    model.name,
                )
                live_at = Position(row["tx_id"], row["position"])
                if not verify:
                    await conn.execute(f"LOCK TABLE {s}.{live} IN ACCESS EXCLUSIVE MODE")
                position, more = await _follow(
                    store, shadow, position, live_at if verify else None, batch_size, conn
                )
                count += more
                held = await conn.fetchval(
                    f"SELECT count(DISTINCT stream_id) FROM {s}.quarantine WHERE projection = $1",
                    shadow.name,
                )
                result = RebuildResult(model.name, f"{s}.{live}", count, position, held)
                if verify:
                    result.differences = await _compare(conn, s, model, live, nxt)
                    await tx.rollback()
                    return result
                await _swap(conn, s, live, nxt)
                await conn.execute(
                    f"UPDATE {s}.checkpoints SET tx_id = $2::text::xid8, position = $3,"
                    " updated_at = now() WHERE name = $1",
                    model.name,
                    str(position.tx_id),
                    position.position,
                )
                await conn.execute(f"DELETE FROM {s}.quarantine WHERE projection = $1", model.name)
                await conn.execute(
                    f"UPDATE {s}.quarantine SET projection = $1 WHERE projection = $2",
                    model.name,
                    shadow.name,
                )
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()
            swapped = True
            return result
    finally:
        if not swapped:
            async with store.pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {s}.{nxt}")
                await conn.execute(f"DELETE FROM {s}.quarantine WHERE projection = $1", shadow.name)


async def _follow(
    store: EventStore,
    model: ReadModel,
    position: Position,
    until: Position | None,
    batch_size: int,
    conn: asyncpg.Connection | None = None,
) -> tuple[Position, int]:
    """Apply the feed after ``position`` (up to ``until``, or all that is committed) to
    ``model``: each batch in its own transaction, or all in ``conn``'s."""
    wanted = frozenset(model.types or ())
    count = 0
    while True:
        batch = await store.read_all(position, batch_size, conn)
        events = [e for e in batch if until is None or e.cursor <= until]
        if not events:
            return position, count
        mine = [e for e in events if e.event_type in wanted]
        if mine:
            if conn is not None:
                await model.apply(conn, mine, store.schema)
            else:
                async with store.pool.acquire() as own, own.transaction():
                    await model.apply(own, mine, store.schema)
        position = events[-1].cursor
        count += len(events)
        if len(events) < len(batch):
            return position, count


_INDEX_HEAD = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+ ")


async def _swap(conn: asyncpg.Connection, s: str, live: str, nxt: str) -> None:
    """Put ``nxt`` in ``live``'s place, its indexes (and constraints) under the old names."""

    async def indexes(table: str) -> list[tuple[str, str]]:
        rows = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1"
            " AND tablename = $2 ORDER BY indexname",
            s,
            table,
        )
        return [(r["indexname"], _INDEX_HEAD.sub(r"\1", r["indexdef"])) for r in rows]

    new = await indexes(nxt)
    renames: list[tuple[str, str]] = []
    for old_name, definition in await indexes(live):
        match = next((n for n, d in new if d == definition), None)
        if match is not None:
            new.remove((match, definition))
            renames.append((match, old_name))
    await conn.execute(f"ALTER TABLE {s}.{live} RENAME TO {live}__old")
    await conn.execute(f"ALTER TABLE {s}.{nxt} RENAME TO {live}")
    await conn.execute(f"DROP TABLE {s}.{live}__old")
    for new_name, old_name in renames:
        await conn.execute(f"ALTER INDEX {s}.{new_name} RENAME TO {old_name}")


async def _compare(
    conn: asyncpg.Connection, s: str, model: ReadModel, live: str, nxt: str
) -> list[Difference]:
    keys = ", ".join(model.key)
    first = model.key[0]
    rows = await conn.fetch(
        f"SELECT to_jsonb(live__) AS live, to_jsonb(next__) AS rebuilt,"
        f" live__.{first} IS NULL AS missing, next__.{first} IS NULL AS extra"
        f" FROM {s}.{live} live__ FULL JOIN {s}.{nxt} next__ USING ({keys})"
        " WHERE to_jsonb(live__) IS DISTINCT FROM to_jsonb(next__) ORDER BY 1, 2"
    )
    out: list[Difference] = []
    for r in rows:
        if r["missing"]:
            out.append(Difference("missing", tuple(r["rebuilt"][k] for k in model.key)))
        elif r["extra"]:
            out.append(Difference("extra", tuple(r["live"][k] for k in model.key)))
        else:
            a, b = r["live"], r["rebuilt"]
            changed = {c: (a.get(c), b.get(c)) for c in model.columns if a.get(c) != b.get(c)}
            out.append(Difference("changed", tuple(a[k] for k in model.key), changed))
    return out
