"""Blue/green rebuild of a read model, and verification against the live one.

:func:`rebuild` builds ``<table>__next`` from the start of the feed up to the head it
captured when it started, while the live projector goes on, by a path of its own (the bulk
path): it reads only the columns rules need and only the projection's event types, in feed
order by keyset pages (the next page prefetched while one is folded), folds every event in
memory into one dict of rows for the whole feed, then loads the rows with ``COPY`` into a
table created without indexes (``LIKE <table> INCLUDING ALL EXCLUDING INDEXES``) and only
then creates the live table's indexes and index-backed constraints. If the load or an index
is refused (a row the table rejects, a unique index the rows violate), it starts again by the
incremental path instead (per batch, as the live projector writes, which finds the event to
quarantine). Then, in one transaction, it locks the
projection's checkpoint row (the live projector's next batch waits on it) and then the live
table, applies what was appended since, swaps the tables by renaming (and renames the new
indexes to the old names), moves the checkpoint to where it got, and commits. The live
projector resumes from there. Readers see the old table, wait the moment of the swap, then
see the new one: never a partial model.

``verify=True`` builds the same way, up to the live checkpoint, and compares the two tables
row by row instead of swapping (then drops the new one).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from libs.eventstore.projection import Entry, Key, RawJson, ReadModel, Row, _transient
from libs.eventstore.store import EventStore, Position, RecordedEvent
from libs.logging import get_logger

log = get_logger(__name__)

NEXT = "__next"
SHADOW = "__rebuild"
#: Events per page of the bulk path's read (and per fold step).
PAGE = 5000
#: Rows finalized between two yields to the event loop while they are copied.
COPY_ROWS = 1000


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
    #: ``bulk`` or ``incremental`` (the bulk load was refused, see the module docstring).
    path: str = "bulk"


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
    swapped = False
    try:
        target = await store.checkpoint(model.name) if verify else await store.head()
        path = "bulk"
        try:
            count = await _bulk(store, shadow, live, target)
        except Exception as e:
            if _transient(e) or not isinstance(e, asyncpg.PostgresError):
                raise
            # The table refused the rows (or a unique index them): the incremental path
            # writes batch by batch and quarantines the event at fault.
            log.warning("rebuild_bulk_refused", projection=model.name, error=repr(e))
            path = "incremental"
            async with store.pool.acquire() as conn:
                await _fresh(conn, s, live, nxt, shadow.name, "INCLUDING ALL")
            _, count = await _follow(store, shadow, Position.start(), target, batch_size)
        position = target
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
                result = RebuildResult(model.name, f"{s}.{live}", count, position, held, path=path)
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


async def _fresh(
    conn: asyncpg.Connection, s: str, live: str, nxt: str, shadow: str, like: str
) -> None:
    """An empty ``nxt`` shaped like ``live`` (``like``: the LIKE options), no quarantine."""
    await conn.execute(f"DROP TABLE IF EXISTS {s}.{nxt}")
    await conn.execute(f"CREATE TABLE {s}.{nxt} (LIKE {s}.{live} {like})")
    await conn.execute(f"DELETE FROM {s}.quarantine WHERE projection = $1", shadow)


async def _bulk(store: EventStore, model: ReadModel, live: str, until: Position) -> int:
    """Build ``model.table`` from the feed up to ``until`` by the bulk path; returns how many
    events of the model's types it read."""
    s, nxt = store.schema, model.table
    state: dict[Key, Row | None] = {}
    failed: set[str] = set()
    entries: list[Entry] = []
    count = 0
    t0 = time.perf_counter()
    names = list(model.columns)
    # One pause of the collector from the fold to the end of the load: re-enabled between
    # the fold and the COPY, its first pass would walk every folded row (all of them young,
    # none ever collected).
    with _no_gc():
        async for page in _pages(store, model, until):
            entries += model.fold(state, page, failed)
            count += len(page)
        t1 = time.perf_counter()
        async with store.pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            await _fresh(conn, s, live, nxt, model.name, "INCLUDING ALL EXCLUDING INDEXES")
            rows = _finalized(model, state, names)
            await _json_codecs(conn, binary=True)  # COPY sends values in the binary format
            try:
                # One COPY, fed as rows are finalized: PostgreSQL takes them in meanwhile.
                await conn.copy_records_to_table(
                    nxt, schema_name=s, columns=names, records=_streamed(rows)
                )
            finally:
                await _json_codecs(conn, binary=False)
            del state
            t2 = time.perf_counter()
            for statement in await _index_statements(conn, s, live, nxt):
                await conn.execute(statement)
            if entries:
                await model._quarantine(conn, s, entries)
    t3 = time.perf_counter()
    await _analyze(store, s, nxt)
    log.info(
        "rebuild_bulk_loaded",
        projection=model.name,
        events=count,
        read_fold_s=round(t1 - t0, 2),
        copy_s=round(t2 - t1, 2),
        index_s=round(t3 - t2, 2),
        analyze_s=round(time.perf_counter() - t3, 2),
    )
    return count


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: the fold allocates millions of objects that all
    live to the end (and hold no cycles), and the collector's passes over them cost more
    than the fold itself (measured: decoding 4x slower with it on)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


async def _json_codecs(conn: asyncpg.Connection, *, binary: bool) -> None:
    """json/jsonb through orjson, in the binary format (jsonb's is a version byte, 1, then
    the text) or back in the text format the store's pools use."""
    for typ in ("jsonb", "json"):
        prefix = b"\x01" if binary and typ == "jsonb" else b""
        if binary:
            await conn.set_type_codec(
                typ,
                encoder=lambda v, p=prefix: (
                    p + (v.encode() if isinstance(v, RawJson) else orjson.dumps(v))
                ),
                decoder=lambda b, n=len(prefix): orjson.loads(b[n:]),
                schema="pg_catalog",
                format="binary",
            )
        else:
            await conn.set_type_codec(
                typ,
                encoder=lambda v: orjson.dumps(v).decode(),
                decoder=orjson.loads,
                schema="pg_catalog",
            )


async def _streamed(rows: Iterator[tuple[Any, ...]]) -> AsyncIterator[tuple[Any, ...]]:
    for n, row in enumerate(rows, start=1):
        yield row
        if n % COPY_ROWS == 0:
            await asyncio.sleep(0)


def _finalized(
    model: ReadModel, state: dict[Key, Row | None], names: list[str]
) -> Iterator[tuple[Any, ...]]:
    """The rows as COPY records, each finalized once (rows are taken out of ``state`` as
    they go, so the finalized ones and the folded ones are not all held at once)."""
    while state:
        _, row = state.popitem()
        if row is not None:
            row = model.finalize(row)
            yield tuple(row[c] for c in names)


async def _analyze(store: EventStore, s: str, table: str) -> None:
    async with store.pool.acquire() as conn:
        await conn.execute(f"ANALYZE {s}.{table}")


_SELECT = (
    "SELECT global_position, tx_id::text::bigint AS tx, event_id, stream_id, version, type,"
    " schema_version, data, recorded_at{metadata} FROM {s}.events"
    " WHERE (events.tx_id, events.global_position) > ($1::text::xid8, $2)"
    " AND (events.tx_id, events.global_position) <= ($3::text::xid8, $4)"
    " AND type = ANY($5::text[])"
    " ORDER BY events.tx_id, events.global_position LIMIT $6"
)


class _Unread(dict[str, Any]):
    """The metadata of an event read without it: any use fails loudly (set
    ``ReadModel.reads_metadata``) rather than reading as empty."""

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError("the rebuild did not read metadata: set reads_metadata = True")

    __getitem__ = get = keys = items = values = __iter__ = __len__ = __contains__ = _refuse


_UNREAD = _Unread()


async def _pages(
    store: EventStore, model: ReadModel, until: Position
) -> AsyncIterator[list[RecordedEvent]]:
    """The model's events up to ``until`` in feed order, a page at a time; the next page is
    read (by a task, on its own connection) while the caller folds this one."""
    if until <= Position.start():
        return
    types = sorted(model.types or ())
    sql = _SELECT.format(s=store.schema, metadata=", metadata" if model.reads_metadata else "")
    queue: asyncio.Queue[list[RecordedEvent] | BaseException | None] = asyncio.Queue(2)

    async def read() -> None:
        try:
            after = Position.start()
            async with store.pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute("SET LOCAL enable_seqscan = off")  # the feed index, in order
                while True:
                    rows = await conn.fetch(
                        sql,
                        str(after.tx_id),
                        after.position,
                        str(until.tx_id),
                        until.position,
                        types,
                        PAGE,
                    )
                    if rows:
                        page = [_event(r, model.reads_metadata) for r in rows]
                        after = page[-1].cursor
                        await queue.put(page)
                    if len(rows) < PAGE:
                        break
            await queue.put(None)
        except BaseException as e:
            await queue.put(e)
            raise

    reader = asyncio.create_task(read())
    try:
        while (got := await queue.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


def _event(r: asyncpg.Record, metadata: bool) -> RecordedEvent:
    event_id: uuid.UUID = r["event_id"]
    recorded_at: datetime = r["recorded_at"]
    return RecordedEvent(
        position=r["global_position"],
        tx_id=r["tx"],
        event_id=event_id,
        stream_id=r["stream_id"],
        version=r["version"],
        event_type=r["type"],
        schema_version=r["schema_version"],
        data=r["data"],
        metadata=r["metadata"] if metadata else _UNREAD,
        recorded_at=recorded_at,
    )


async def _index_statements(conn: asyncpg.Connection, s: str, live: str, nxt: str) -> list[str]:
    """Statements giving ``nxt`` the indexes and index-backed constraints (primary key,
    unique, exclusion) of ``live``, under temporary names (:func:`_swap` renames them)."""
    rows = await conn.fetch(
        "SELECT pg_get_indexdef(i.indexrelid) AS indexdef, c.contype,"
        " pg_get_constraintdef(c.oid) AS condef"
        " FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " WHERE n.nspname = $1 AND t.relname = $2 ORDER BY i.indisprimary DESC, i.indexrelid",
        s,
        live,
    )
    out = []
    for n, r in enumerate(rows):
        name = f"{nxt}_{n}"
        if r["contype"] is not None:
            out.append(f"ALTER TABLE {s}.{nxt} ADD CONSTRAINT {name} {r['condef']}")
        else:
            head = _INDEX_HEAD.match(r["indexdef"])
            assert head is not None, r["indexdef"]
            rest = r["indexdef"][head.end() :]
            out.append(f"CREATE {head.group(1) or ''}INDEX {name} ON {s}.{nxt} {rest}")
    return out


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
