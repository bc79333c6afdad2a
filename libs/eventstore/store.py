"""Append, read a stream, read the global feed, snapshots.

Ordering and gap safety: every event row records the id of the transaction that wrote it
(``tx_id xid8``). Readers of the global feed order by ``(tx_id, global_position)`` and only
read rows whose transaction id is below the oldest transaction still running
(``pg_snapshot_xmin``), so a slow transaction that commits late is never skipped. Writers do
not lock each other. The events insert is always the first write of its transaction, so a
later version of a stream always has a larger ``tx_id`` than an earlier one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg
import orjson

from contracts.base import EVENTS, Event, EventRegistry, JsonDict


class ConcurrencyError(Exception):
    """A stream was not at the expected version: someone else appended first."""

    def __init__(self, streams: Sequence[str]) -> None:
        super().__init__(f"stream(s) changed concurrently: {', '.join(streams)}")
        self.streams = list(streams)


class DuplicateEventError(Exception):
    """An event id that is stored already (event ids are unique across the store)."""


class Position(NamedTuple):
    """A point in the global feed: (transaction id, global position)."""

    tx_id: int
    position: int

    @classmethod
    def start(cls) -> Position:
        return cls(0, 0)


@dataclass(frozen=True, slots=True)
class NewEvent:
    event: Event
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    metadata: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamWrite:
    """Events for one stream and the version the writer saw (0 for a new stream)."""

    stream_id: str
    expected_version: int
    events: Sequence[NewEvent]


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    position: int
    tx_id: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    data: JsonDict
    metadata: JsonDict
    recorded_at: datetime

    @property
    def cursor(self) -> Position:
        return Position(self.tx_id, self.position)

    def decode(self, registry: EventRegistry = EVENTS) -> Event:
        """The event as its current model, upcast from an older schema version if needed."""
        return registry.decode(self.event_type, self.schema_version, self.data)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(
    dsn: str, min_size: int = 2, max_size: int = 10, *, read_only: bool = False
) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb with orjson.

    ``read_only`` makes every transaction on its connections read-only (PostgreSQL's
    ``default_transaction_read_only``): a write through it fails, at no cost per query.
    Its connections run plain queries only (no SET, LISTEN or locks), so they are handed
    back without asyncpg's session reset (a round trip per release); an open transaction
    is still rolled back.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        server_settings={"default_transaction_read_only": "on"} if read_only else None,
        reset=_no_session_reset if read_only else None,
    )


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    return None


_COLUMNS = (
    "global_position, tx_id::text::bigint AS tx_id, event_id, stream_id, version, type,"
    " schema_version, data, metadata, recorded_at"
)


def _row(r: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=r["global_position"],
        tx_id=r["tx_id"],
        event_id=r["event_id"],
        stream_id=r["stream_id"],
        version=r["version"],
        event_type=r["type"],
        schema_version=r["schema_version"],
        data=r["data"],
        metadata=r["metadata"],
        recorded_at=r["recorded_at"],
    )


class EventStore:
    """The event store of one service (one PostgreSQL schema)."""

    def __init__(self, pool: asyncpg.Pool, schema: str, registry: EventRegistry = EVENTS):
        if not schema.isidentifier():
            raise ValueError(f"bad schema name {schema!r}")
        self.pool = pool
        self.schema = schema
        self.registry = registry
        self._waiters: set[asyncio.Event] = set()
        s = schema
        self._append_sql = f"""
WITH expected AS (
    SELECT stream_id, expected FROM unnest($8::text[], $9::int[]) AS x(stream_id, expected)
), stale AS (
    SELECT 1 FROM expected e WHERE e.expected > 0 AND NOT EXISTS (
        SELECT 1 FROM {s}.events v WHERE v.stream_id = e.stream_id AND v.version = e.expected)
)
INSERT INTO {s}.events (event_id, stream_id, version, type, schema_version, data, metadata)
SELECT u.event_id, u.stream_id, u.version, u.type, u.schema_version, u.data, u.metadata
FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[])
    WITH ORDINALITY AS u(event_id, stream_id, version, type, schema_version, data, metadata, ord)
WHERE NOT EXISTS (SELECT 1 FROM stale)
ORDER BY u.ord
RETURNING global_position, tx_id::text::bigint AS tx_id, event_id, stream_id, version, type,
    schema_version, data, metadata, recorded_at"""
        self._read_all_sql = f"""
SELECT {_COLUMNS} FROM {s}.events
WHERE (tx_id, global_position) > ($1::text::xid8, $2)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.tx_id, events.global_position LIMIT $3"""

    # -- writing ------------------------------------------------------------------------

    async def setup(self) -> None:
        """Apply the event store's own migrations to this schema (services use
        :func:`libs.migrations.migrate` with their own migrations too)."""
        from libs.migrations import migrate, plan

        await migrate(self.pool, self.schema, plan(self.schema))

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        return await self.append_streams([StreamWrite(stream_id, expected_version, events)], conn)

    async def append_streams(
        self, writes: Sequence[StreamWrite], conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """Append to several streams atomically; each must be at its expected version.

        With ``conn`` the caller owns the transaction (and must make this its first write);
        call :meth:`notify_appended` after committing so local tailers wake at once.
        """
        ids, streams, versions, types, schema_versions, datas, metas = [], [], [], [], [], [], []
        for w in writes:
            for i, ne in enumerate(w.events, start=1):
                ids.append(ne.event_id)
                streams.append(w.stream_id)
                versions.append(w.expected_version + i)
                types.append(ne.event.event_type)
                schema_versions.append(ne.event.schema_version)
                datas.append(ne.event.model_dump(mode="json"))
                metas.append(ne.metadata)
        if not ids:
            return []
        args = (
            ids,
            streams,
            versions,
            types,
            schema_versions,
            datas,
            metas,
            [w.stream_id for w in writes],
            [w.expected_version for w in writes],
        )
        try:
            if conn is None:
                async with self.pool.acquire() as own:
                    rows = await own.fetch(self._append_sql, *args)
            else:
                rows = await conn.fetch(self._append_sql, *args)
        except asyncpg.UniqueViolationError as e:
            if e.constraint_name and "event_id" in e.constraint_name:
                raise DuplicateEventError(str(e)) from e
            raise ConcurrencyError([w.stream_id for w in writes]) from e
        if not rows:
            raise ConcurrencyError([w.stream_id for w in writes])
        if conn is None:
            self.notify_appended()
        return [_row(r) for r in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction whose commit wakes local tailers."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn
        self.notify_appended()

    # -- local wake-ups -----------------------------------------------------------------

    def notify_appended(self) -> None:
        for w in self._waiters:
            w.set()

    def waiter(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.add(ev)
        return ev

    # -- reading ------------------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        limit: int | None = None,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        sql = (
            f"SELECT {_COLUMNS} FROM {self.schema}.events WHERE stream_id = $1 AND version > $2"
            " ORDER BY version" + (f" LIMIT {int(limit)}" if limit else "")
        )
        if conn is not None:
            return [_row(r) for r in await conn.fetch(sql, stream_id, after_version)]
        async with self.pool.acquire() as own:
            return [_row(r) for r in await own.fetch(sql, stream_id, after_version)]

    async def read_all(
        self, after: Position, limit: int = 1000, conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """The global feed after ``after``, in commit-safe order; never skips a late commit."""
        args = (str(after.tx_id), after.position, limit)
        if conn is not None:
            return [_row(r) for r in await conn.fetch(self._read_all_sql, *args)]
        async with self.pool.acquire() as own:
            return [_row(r) for r in await own.fetch(self._read_all_sql, *args)]

    async def read_events(
        self, event_ids: Sequence[uuid.UUID], conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """The events with these ids, by stream and version."""
        sql = (
            f"SELECT {_COLUMNS} FROM {self.schema}.events WHERE event_id = ANY($1)"
            " ORDER BY stream_id, version"
        )
        if conn is not None:
            return [_row(r) for r in await conn.fetch(sql, list(event_ids))]
        async with self.pool.acquire() as own:
            return [_row(r) for r in await own.fetch(sql, list(event_ids))]

    async def read_by_position(self, after: int, limit: int = 1000) -> list[RecordedEvent]:
        """Committed events by global position (for operators; not for tailing live)."""
        sql = (
            f"SELECT {_COLUMNS} FROM {self.schema}.events WHERE global_position > $1"
            " ORDER BY global_position LIMIT $2"
        )
        async with self.pool.acquire() as conn:
            return [_row(r) for r in await conn.fetch(sql, after, limit)]

    async def head(self) -> Position:
        """The last position a tailer can safely have reached right now."""
        sql = (
            f"SELECT tx_id::text::bigint AS tx_id, global_position FROM {self.schema}.events"
            " WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY events.tx_id DESC, events.global_position DESC LIMIT 1"
        )
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(sql)
        return Position(r["tx_id"], r["global_position"]) if r else Position.start()

    # -- snapshots ----------------------------------------------------------------------

    async def load_snapshot(
        self, stream_id: str, *, conn: asyncpg.Connection | None = None
    ) -> tuple[int, int, JsonDict] | None:
        if conn is None:
            async with self.pool.acquire() as own:
                return await self.load_snapshot(stream_id, conn=own)
        r = await conn.fetchrow(
            f"SELECT version, schema_version, state FROM {self.schema}.snapshots"
            " WHERE stream_id = $1",
            stream_id,
        )
        return (r["version"], r["schema_version"], r["state"]) if r else None

    async def save_snapshot(
        self,
        stream_id: str,
        version: int,
        schema_version: int,
        state: JsonDict,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> None:
        if conn is None:
            async with self.pool.acquire() as own:
                return await self.save_snapshot(stream_id, version, schema_version, state, conn=own)
        await conn.execute(
            f"INSERT INTO {self.schema}.snapshots (stream_id, version, schema_version, state)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO UPDATE SET"
            " version = EXCLUDED.version, schema_version = EXCLUDED.schema_version,"
            " state = EXCLUDED.state, taken_at = now()"
            f" WHERE {self.schema}.snapshots.version < EXCLUDED.version",
            stream_id,
            version,
            schema_version,
            state,
        )

    # -- checkpoints --------------------------------------------------------------------

    async def checkpoint(self, name: str, conn: asyncpg.Connection | None = None) -> Position:
        """A named checkpoint, created at the start of the feed if new."""
        if conn is None:
            async with self.pool.acquire() as own:
                return await self.checkpoint(name, own)
        await conn.execute(
            f"INSERT INTO {self.schema}.checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
            name,
        )
        r = await conn.fetchrow(
            f"SELECT tx_id::text::bigint AS tx_id, position FROM {self.schema}.checkpoints"
            " WHERE name = $1",
            name,
        )
        return Position(r["tx_id"], r["position"])

    async def advance_checkpoint(
        self, conn: asyncpg.Connection, name: str, old: Position, new: Position
    ) -> bool:
        """Move a checkpoint from ``old`` to ``new``; False if someone else moved it."""
        status: str = await conn.execute(
            f"UPDATE {self.schema}.checkpoints SET tx_id = $2::text::xid8, position = $3,"
            " updated_at = now() WHERE name = $1 AND tx_id = $4::text::xid8 AND position = $5",
            name,
            str(new.tx_id),
            new.position,
            str(old.tx_id),
            old.position,
        )
        return status == "UPDATE 1"
