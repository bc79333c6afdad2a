"""Append, read a stream, read the global feed, snapshots.

Ordering and gap safety: every event row records the id of the transaction that wrote it
(``tx_id xid8``). Readers of the global feed order by ``(tx_id, global_position)`` and only
read rows whose transaction id is below the oldest transaction still running
(``pg_snapshot_xmin``), so a slow transaction that commits late is never skipped. Writers do
not lock each other. The events insert is always the first write of its transaction, so a
later version of a stream always has a larger ``tx_id`` than an earlier one.

Writing costs one round trip: an append (with the command's ``processed_commands`` row and
the snapshots that are due, when a command server commits) is one statement, outside any
explicit transaction unless the caller brings one. Appends without a connection are
group-committed: one that finds nobody writing writes at once, in its caller's task; those
that arrive while a statement is in flight go together in the next one, each still checked
against its own expected versions (a stale one fails alone). See ADR 0016.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

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


class CommandAlreadyProcessed(Exception):
    """The command id has a ``processed_commands`` row already: nothing was written."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"command {command_id} was processed already")
        self.command_id = command_id


class Position(NamedTuple):
    """A point in the global feed: (transaction id, global position)."""

    tx_id: int
    position: int

    @classmethod
    def start(cls) -> Position:
        return cls(0, 0)


def new_event_id() -> uuid.UUID:
    """A time-ordered UUID (version 7: 48-bit Unix milliseconds, then 74 random bits).

    New ids land at the right edge of the ``event_id`` index instead of on a random leaf
    page, which makes the insert several times cheaper for that index once it is large.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    # uuid.UUID(int=...) validates in Python; this value is valid by construction.
    u = _new(_UUID)
    _set(u, "int", (value & _V7_CLEAR) | _V7_SET)
    _set(u, "is_safe", _UNKNOWN)
    return u


_V7_CLEAR = ~((0xF << 76) | (0x3 << 62))
_V7_SET = (0x7 << 76) | (0x2 << 62)
_UUID, _UNKNOWN = uuid.UUID, uuid.SafeUUID.unknown
_new, _set = object.__new__, object.__setattr__


@dataclass(frozen=True, slots=True)
class NewEvent:
    event: Event
    event_id: uuid.UUID = field(default_factory=new_event_id)
    metadata: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamWrite:
    """Events for one stream and the version the writer saw (0 for a new stream)."""

    stream_id: str
    expected_version: int
    events: Sequence[NewEvent]


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The ``processed_commands`` row a command server writes with the command's events."""

    command_id: str
    command_type: str
    reply: JsonDict


@dataclass(frozen=True, slots=True)
class SnapshotWrite:
    """A snapshot saved with an append (it only moves a stream's snapshot forward)."""

    stream_id: str
    version: int
    schema_version: int
    state: JsonDict


class LoadedStream(NamedTuple):
    """What a unit of work needs to rebuild an aggregate: the usable snapshot, if any, as
    ``(version, state)``, and the events after it as ``(type, schema_version, data)``."""

    snapshot: tuple[int, JsonDict] | None
    events: list[tuple[str, int, JsonDict]]


class RecordedEvent(NamedTuple):
    """A stored event (a named tuple: cheap to build for every row read or written)."""

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
    return RecordedEvent(*r)  # the columns of _COLUMNS, in the fields' order


def _bad_sql(s: str, full: bool) -> str:
    """Members refused before anything is written: a stream the writer expects more of than
    it has (always), and, in a group of several writers, a stream already past the expected
    version or a command id already processed, so that a stale writer fails alone instead
    of making the whole statement fail on a unique violation."""
    sql = f"""
    SELECT w.member, 's' AS why FROM w WHERE w.expected > 0 AND NOT EXISTS (
        SELECT 1 FROM {s}.events v WHERE v.stream_id = w.stream_id AND v.version = w.expected)"""
    if full:
        sql += f"""
    UNION ALL
    SELECT w.member, 's' FROM w WHERE EXISTS (
        SELECT 1 FROM {s}.events v WHERE v.stream_id = w.stream_id AND v.version = w.expected + 1)
    UNION ALL
    SELECT c.member, 'c' FROM c WHERE EXISTS (
        SELECT 1 FROM {s}.processed_commands p WHERE p.command_id = c.command_id)"""
    return sql


def _append_sql(s: str, full: bool) -> str:
    """One statement for any number of writers (members): their events, their commands'
    ``processed_commands`` rows and their due snapshots; a refused member writes nothing.

    The rows travel as JSON text (one parameter each: events, metadata, writes, commands,
    snapshots), parsed once into jsonb; an event's ``data`` and metadata are jsonb values
    taken out of it, never parsed again. (asyncpg's array parameters check every element
    against collections.abc in Python, which cost more than the insert.)
    """
    return f"""
WITH w AS (
    SELECT (x->>0)::int AS member, x->>1 AS stream_id, (x->>2)::int AS expected
    FROM jsonb_array_elements($3::text::jsonb) AS x
), c AS (
    SELECT (x->>0)::int AS member, x->>1 AS command_id, x->>2 AS command_type, x->3 AS reply
    FROM jsonb_array_elements($4::text::jsonb) AS x
), bad AS ({_bad_sql(s, full)}
), ins AS (
    INSERT INTO {s}.events (event_id, stream_id, version, type, schema_version, data, metadata)
    SELECT (e->>0)::uuid, e->>1, (e->>2)::int, e->>3, (e->>4)::int, e->5,
        m.meta->((e->>6)::int)
    FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS u(e, ord),
        (SELECT $2::text::jsonb AS meta OFFSET 0) AS m
    WHERE (e->>7)::int NOT IN (SELECT member FROM bad)
    ORDER BY u.ord
    RETURNING global_position, tx_id, recorded_at
), cmd AS (
    INSERT INTO {s}.processed_commands (command_id, command_type, reply)
    SELECT c.command_id, c.command_type, c.reply FROM c
    WHERE c.member NOT IN (SELECT member FROM bad)
), snap AS (
    INSERT INTO {s}.snapshots AS sn (stream_id, version, schema_version, state)
    SELECT x->>1, (x->>2)::int, (x->>3)::int, x->4
    FROM jsonb_array_elements($5::text::jsonb) AS x
    WHERE (x->>0)::int NOT IN (SELECT member FROM bad)
    ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version,
        schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, taken_at = now()
    WHERE sn.version < EXCLUDED.version
)
SELECT (SELECT tx_id::text::bigint FROM ins LIMIT 1),
    ARRAY(SELECT global_position FROM ins ORDER BY global_position),
    ARRAY(SELECT recorded_at FROM ins ORDER BY global_position),
    ARRAY(SELECT member FROM bad WHERE why = 's'),
    ARRAY(SELECT member FROM bad WHERE why = 'c')"""


def _append_new_sql(s: str) -> str:
    """The statement of one writer that only starts streams (every expected version 0) and
    writes no command row and no snapshot: the unique ``(stream_id, version)`` index is the
    whole check, as for a single event on a new stream, so it is the insert alone."""
    return f"""
WITH ins AS (
    INSERT INTO {s}.events (event_id, stream_id, version, type, schema_version, data, metadata)
    SELECT (e->>0)::uuid, e->>1, (e->>2)::int, e->>3, (e->>4)::int, e->5,
        m.meta->((e->>6)::int)
    FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS u(e, ord),
        (SELECT $2::text::jsonb AS meta OFFSET 0) AS m
    ORDER BY u.ord
    RETURNING global_position, tx_id, recorded_at
)
SELECT (SELECT tx_id::text::bigint FROM ins LIMIT 1),
    ARRAY(SELECT global_position FROM ins ORDER BY global_position),
    ARRAY(SELECT recorded_at FROM ins ORDER BY global_position)"""


class _Member:
    """One writer's part of a statement: its streams, its command row, its snapshots."""

    __slots__ = ("command", "future", "new_streams_only", "snapshots", "streams", "writes")

    def __init__(
        self,
        writes: Sequence[StreamWrite],
        command: CommandRecord | None,
        snapshots: Sequence[SnapshotWrite],
        future: asyncio.Future[list[RecordedEvent]] | None = None,
    ) -> None:
        self.writes = writes
        self.command = command
        self.snapshots = snapshots
        self.future = future
        self.streams = {w.stream_id for w in writes}
        self.new_streams_only = all(w.expected_version == 0 for w in writes)

    def stream_ids(self) -> list[str]:
        return [w.stream_id for w in self.writes]


class _Encoded:
    """A group's parameters, built once: every event's data is dumped here (the records
    keep the dicts), and metadata shared by several events (a command stamps one dict on
    all of its events) is sent once."""

    __slots__ = ("args", "pending")

    def __init__(self, members: Sequence[_Member]) -> None:
        events: list[list[Any]] = []
        metas: list[JsonDict] = []
        meta_index: dict[int, int] = {}
        writes: list[tuple[int, str, int]] = []
        commands: list[tuple[int, str, str, JsonDict]] = []
        snapshots: list[tuple[int, str, int, int, JsonDict]] = []
        # Per member: (stream, version, NewEvent, data) of each event, to build the records.
        self.pending: list[list[tuple[str, int, NewEvent, JsonDict]]] = []
        for m, member in enumerate(members, start=1):
            rows: list[tuple[str, int, NewEvent, JsonDict]] = []
            for w in member.writes:
                stream_id = w.stream_id
                version = w.expected_version
                writes.append((m, stream_id, version))
                for ne in w.events:
                    version += 1
                    event = ne.event
                    data = event.model_dump(mode="json")
                    key = id(ne.metadata)
                    j = meta_index.get(key)
                    if j is None:
                        j = meta_index[key] = len(metas)
                        metas.append(ne.metadata)
                    events.append(
                        [
                            ne.event_id,
                            stream_id,
                            version,
                            event.event_type,
                            event.schema_version,
                            data,
                            j,
                            m,
                        ]
                    )
                    rows.append((stream_id, version, ne, data))
            self.pending.append(rows)
            if member.command is not None:
                c = member.command
                commands.append((m, c.command_id, c.command_type, c.reply))
            for snap in member.snapshots:
                snapshots.append((m, snap.stream_id, snap.version, snap.schema_version, snap.state))
        dumps = orjson.dumps
        self.args = (
            dumps(events).decode(),
            dumps(metas).decode(),
            dumps(writes).decode(),
            dumps(commands).decode(),
            dumps(snapshots).decode(),
        )


def _records(
    rows: Sequence[tuple[str, int, NewEvent, JsonDict]],
    tx_id: int,
    positions: Sequence[int],
    recorded: Sequence[datetime],
) -> list[RecordedEvent]:
    """Records built from what was sent and the three columns the insert returned."""
    return [
        RecordedEvent(
            pos,
            tx_id,
            ne.event_id,
            stream_id,
            version,
            ne.event.event_type,
            ne.event.schema_version,
            data,
            ne.metadata,
            at,
        )
        for (stream_id, version, ne, data), pos, at in zip(rows, positions, recorded, strict=True)
    ]


def _refusal(e: asyncpg.UniqueViolationError, member: _Member) -> Exception:
    """The exception a writer gets for a unique violation of its own statement."""
    if e.constraint_name and "event_id" in e.constraint_name:
        return DuplicateEventError(str(e))
    if "processed_commands" in (e.table_name or "") and member.command is not None:
        return CommandAlreadyProcessed(member.command.command_id)
    return ConcurrencyError(member.stream_ids())


def _settle(
    member: _Member,
    *,
    result: list[RecordedEvent] | None = None,
    exc: BaseException | None = None,
) -> None:
    fut = member.future
    if fut is None or fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result or [])


def _pool_has_waiters(pool: asyncpg.Pool) -> bool:
    """Whether a task waits in ``pool.acquire()`` (asyncpg has no public way to ask; if its
    internals change, this says no and kept connections still go back after ``linger``)."""
    getters = getattr(getattr(pool, "_queue", None), "_getters", None)
    return bool(getters)


class _Kept:
    """Connections taken from the pool and kept between the store's own statements for
    ``linger`` seconds, so back-to-back appends and commands do not pay the pool's reset
    query (one round trip) on every release. Only the store's statements run on them (no
    session state is set but generic plans); one that fails or is left in a transaction goes
    back to the pool at once, and so reset there."""

    def __init__(self, pool: asyncpg.Pool, linger: float) -> None:
        self.pool = pool
        self.linger = linger
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def take(self) -> asyncpg.Connection:
        if self._idle:
            return self._idle.pop()[0]
        conn: asyncpg.Connection = await self.pool.acquire()
        try:
            # The store's statements take arrays; PostgreSQL would plan them again on every
            # run (a custom plan knows the arrays' lengths), which costs more than running
            # them. The pool's reset (RESET ALL) undoes this when the connection goes back.
            await conn.execute("SET plan_cache_mode = force_generic_plan")
        except BaseException:
            self._release(conn)
            raise
        return conn

    def give_back(self, conn: asyncpg.Connection, clean: bool) -> None:
        if (
            not clean
            or conn.is_closed()
            or conn.is_in_transaction()
            or self.linger <= 0
            or _pool_has_waiters(self.pool)  # someone waits for a connection: give it now
        ):
            self._release(conn)
            return
        loop = asyncio.get_running_loop()
        self._idle.append((conn, loop.time()))
        if self._timer is None:
            self._timer = loop.call_later(self.linger, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.linger
        keep = [(c, t) for c, t in self._idle if t > cutoff]
        for conn, t in self._idle:
            if t <= cutoff:
                self._release(conn)
        self._idle = keep
        if keep:
            self._timer = loop.call_later(max(0.001, keep[0][1] - cutoff), self._sweep)

    def _release(self, conn: asyncpg.Connection) -> None:
        task = asyncio.ensure_future(self._release_now(conn))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_now(self, conn: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def close(self) -> None:
        """Give every kept connection back to the pool now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._release(conn)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


class EventStore:
    """The event store of one service (one PostgreSQL schema)."""

    #: Most events one group commit takes (more wait for the next statement).
    group_max_events = 5000

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        registry: EventRegistry = EVENTS,
        *,
        keep_connections_for: float = 0.05,
    ):
        if not schema.isidentifier():
            raise ValueError(f"bad schema name {schema!r}")
        self.pool = pool
        self.schema = schema
        self.registry = registry
        self._waiters: set[asyncio.Event] = set()
        self._kept = _Kept(pool, keep_connections_for)
        self._queue: deque[_Member] = deque()
        self._drainer: asyncio.Task[None] | None = None
        #: An append is writing alone in its own task (appends queue until it returns).
        self._writing = False
        #: Appends arrived while another was writing, lately: a leader waits one turn of
        #: the loop for company before it writes.
        self._company = False
        #: Statements the group committer ran, and the appends they carried (for tests and
        #: benchmarks).
        self.group_statements = 0
        self.group_members = 0
        s = schema
        self._new_sql = f"""
INSERT INTO {s}.events (event_id, stream_id, version, type, schema_version, data, metadata)
VALUES ($1, $2, 1, $3, $4, $5::text::jsonb, $6::text::jsonb)
RETURNING global_position, tx_id::text::bigint, recorded_at"""
        self._one_sql = f"""
INSERT INTO {s}.events (event_id, stream_id, version, type, schema_version, data, metadata)
SELECT $1, $2, $3 + 1, $4, $5, $6::text::jsonb, $7::text::jsonb
WHERE EXISTS (SELECT 1 FROM {s}.events v WHERE v.stream_id = $2 AND v.version = $3)
RETURNING global_position, tx_id::text::bigint, recorded_at"""
        self._new_many_sql = _append_new_sql(s)
        self._many_sql = _append_sql(s, full=False)
        self._group_sql = _append_sql(s, full=True)
        self._load_sql = f"""
WITH q AS (
    SELECT * FROM unnest($1::text[], $2::int[]) AS q(stream_id, snapshot_version)
), s AS (
    SELECT n.stream_id, n.version, n.state FROM q JOIN {s}.snapshots n
        ON n.stream_id = q.stream_id AND n.schema_version = q.snapshot_version
)
SELECT 0 AS kind, s.stream_id, s.version, NULL::text AS type, 0 AS schema_version,
    s.state AS data FROM s
UNION ALL
SELECT 1, e.stream_id, e.version, e.type, e.schema_version, e.data
FROM q JOIN {s}.events e ON e.stream_id = q.stream_id
    AND e.version > coalesce((SELECT s.version FROM s WHERE s.stream_id = q.stream_id), 0)
UNION ALL
SELECT 2, NULL, NULL, NULL, 0, p.reply FROM {s}.processed_commands p WHERE p.command_id = $3
ORDER BY 1, 2, 3"""
        self._marks_sql = f"""
SELECT h.tx_id::text::bigint, h.global_position,
    (SELECT global_position FROM {s}.events ORDER BY global_position DESC LIMIT 1)
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT tx_id, global_position FROM {s}.events
    WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY events.tx_id DESC, events.global_position DESC LIMIT 1
) AS h ON true"""
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

        await migrate(self.pool, self.schema, plan())

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
        self,
        writes: Sequence[StreamWrite],
        conn: asyncpg.Connection | None = None,
        *,
        command: CommandRecord | None = None,
        snapshots: Sequence[SnapshotWrite] = (),
    ) -> list[RecordedEvent]:
        """Append to several streams atomically; each must be at its expected version.

        ``command`` is the ``processed_commands`` row to write in the same statement (a
        repeated command id raises :class:`CommandAlreadyProcessed`, writing nothing);
        ``snapshots`` are saved in it too. One statement, one round trip.

        With ``conn`` the statement runs there: in the caller's transaction, if it has one
        (the append must then be that transaction's first write), else on its own; call
        :meth:`notify_appended` afterwards so local tailers wake at once. Without ``conn``
        the append writes at once if no statement of this store is in flight, else it joins
        the next group commit.
        """
        writes = [w for w in writes if w.events]
        if not writes and command is None:
            return []
        member = _Member(writes, command, snapshots)
        if conn is not None:
            return await self._run_one(conn, member)
        if self._drainer is None and not self._writing:
            # Nobody is writing: this append leads. It writes at once, alone, in its own
            # task (no writer task, no hand-over of the result); appends that arrive
            # meanwhile queue up and go together in the next statement, started when this
            # one returns. When appends came in company lately, it first lets those started
            # together with it queue up (one turn of the loop), and they all go together.
            self._writing = True
            try:
                if self._company:
                    await asyncio.sleep(0)
                    if self._queue:
                        member.future = asyncio.get_running_loop().create_future()
                        self._queue.appendleft(member)  # it arrived first
                    else:
                        self._company = False
                if member.future is None:
                    recorded = await self._write_alone(member)
            finally:
                self._writing = False
                if self._queue:
                    self._company = True
                    if self._drainer is None:
                        self._drainer = asyncio.ensure_future(self._drain())
            if member.future is None:
                self.notify_appended()
                return recorded
        else:
            member.future = asyncio.get_running_loop().create_future()
            self._queue.append(member)
        recorded = await member.future
        self.notify_appended()
        return recorded

    async def _write_alone(self, member: _Member) -> list[RecordedEvent]:
        """One append's statement on a kept connection, in the caller's task. Appends that
        arrive meanwhile queue up for the next group (started when this one returns)."""
        self.group_statements += 1
        self.group_members += 1
        conn = await self._kept.take()
        clean = False
        try:
            recorded = await self._run_one(conn, member)
            clean = True
            return recorded
        except (
            ConcurrencyError,
            DuplicateEventError,
            CommandAlreadyProcessed,
            asyncpg.PostgresError,
        ):
            clean = True  # the statement was refused or failed; the connection is fine
            raise
        finally:
            self._kept.give_back(conn, clean)

    async def _run_one(self, conn: asyncpg.Connection, member: _Member) -> list[RecordedEvent]:
        """One member's statement on ``conn``; its refusal is raised."""
        w = member.writes
        try:
            if (
                len(w) == 1
                and len(w[0].events) == 1
                and member.command is None
                and not member.snapshots
            ):
                ne, write = w[0].events[0], w[0]
                event = ne.event
                data = event.model_dump(mode="json")
                expected = write.expected_version
                if expected == 0:
                    # A new stream: the unique (stream, version) index is the whole check.
                    row = await conn.fetchrow(
                        self._new_sql,
                        ne.event_id,
                        write.stream_id,
                        event.event_type,
                        event.schema_version,
                        orjson.dumps(data).decode(),
                        orjson.dumps(ne.metadata).decode(),
                    )
                else:
                    row = await conn.fetchrow(
                        self._one_sql,
                        ne.event_id,
                        write.stream_id,
                        expected,
                        event.event_type,
                        event.schema_version,
                        orjson.dumps(data).decode(),
                        orjson.dumps(ne.metadata).decode(),
                    )
                if row is None:
                    raise ConcurrencyError([write.stream_id])
                position, tx_id, at = row
                return [
                    RecordedEvent(
                        position,
                        tx_id,
                        ne.event_id,
                        write.stream_id,
                        expected + 1,
                        event.event_type,
                        event.schema_version,
                        data,
                        ne.metadata,
                        at,
                    )
                ]
            enc = _Encoded([member])
            if member.command is None and not member.snapshots and member.new_streams_only:
                r = await conn.fetchrow(self._new_many_sql, *enc.args[:2])
            else:
                r = await conn.fetchrow(self._many_sql, *enc.args)
        except asyncpg.UniqueViolationError as e:
            raise _refusal(e, member) from e
        assert r is not None
        if len(r) > 3 and r[3]:
            raise ConcurrencyError(member.stream_ids())
        return _records(enc.pending[0], r[0] or 0, r[1], r[2])

    def _take_group(self) -> list[_Member]:
        """The queued members for the next statement, in arrival order: a member touching a
        stream an earlier queued member touches waits for a later statement, so each stream
        is written in the order its appends arrived."""
        group: list[_Member] = []
        taken: set[str] = set()
        blocked: set[str] = set()
        waiting: deque[_Member] = deque()
        events = 0
        while self._queue:
            member = self._queue.popleft()
            assert member.future is not None
            if member.future.done():  # its caller gave up before it was written
                continue
            size = sum(len(w.events) for w in member.writes)
            if member.streams & (taken | blocked) or (
                group and events + size > self.group_max_events
            ):
                blocked |= member.streams
                waiting.append(member)
                continue
            taken |= member.streams
            events += size
            group.append(member)
        self._queue = waiting
        return group

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._take_group()
                if not group:
                    continue
                conn = await self._kept.take()
                clean = False
                try:
                    await self._run_group(conn, group)
                    clean = True
                except Exception as e:  # the connection failed: every writer hears it
                    for member in group:
                        _settle(member, exc=e)
                finally:
                    self._kept.give_back(conn, clean)
        finally:
            self._drainer = None

    async def _run_group(self, conn: asyncpg.Connection, group: list[_Member]) -> None:
        self.group_statements += 1
        self.group_members += len(group)
        if len(group) == 1:
            try:
                _settle(group[0], result=await self._run_one(conn, group[0]))
            except (ConcurrencyError, DuplicateEventError, CommandAlreadyProcessed) as e:
                _settle(group[0], exc=e)
            except asyncpg.PostgresError as e:
                _settle(group[0], exc=e)
            return
        enc = _Encoded(group)
        try:
            r = await conn.fetchrow(self._group_sql, *enc.args)
        except asyncpg.PostgresError:
            # A writer the checks could not refuse in advance (a race with another
            # transaction, a repeated event id, a bad value) failed the whole statement:
            # nothing was written. Run each alone, so only that one fails.
            for member in group:
                try:
                    _settle(member, result=await self._run_one(conn, member))
                except (ConcurrencyError, DuplicateEventError, CommandAlreadyProcessed) as e:
                    _settle(member, exc=e)
                except asyncpg.PostgresError as e:
                    _settle(member, exc=e)
            return
        assert r is not None
        tx_id, positions, recorded, stale, processed = r
        stale_set, processed_set = set(stale), set(processed)
        at = 0
        for m, (member, rows) in enumerate(zip(group, enc.pending, strict=True), start=1):
            if m in stale_set:
                _settle(member, exc=ConcurrencyError(member.stream_ids()))
            elif m in processed_set:
                assert member.command is not None
                _settle(member, exc=CommandAlreadyProcessed(member.command.command_id))
            else:
                n = len(rows)
                _settle(
                    member,
                    result=_records(
                        rows, tx_id or 0, positions[at : at + n], recorded[at : at + n]
                    ),
                )
                at += n

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for statements of the store's kind (loads, appends, no session
        state), outside any transaction; kept out of the pool for a moment afterwards so
        the next one skips the pool's reset round trip."""
        conn = await self._kept.take()
        clean = False
        try:
            yield conn
            clean = True
        finally:
            self._kept.give_back(conn, clean)

    async def close(self) -> None:
        """Give the connections kept between statements back to the pool (before closing
        it; they go back by themselves ``keep_connections_for`` seconds after their last use)."""
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        await self._kept.close()

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

    async def load_streams(
        self,
        streams: Sequence[tuple[str, int]],
        *,
        conn: asyncpg.Connection | None = None,
        command_id: str | None = None,
    ) -> tuple[dict[str, LoadedStream], JsonDict | None]:
        """Each ``(stream, snapshot_version)``: its snapshot if stored at that schema version,
        and the events after it; with ``command_id``, also the reply stored under it (or
        None). One query for all of it."""
        args = ([s for s, _ in streams], [v for _, v in streams], command_id)
        if conn is None:
            async with self.session() as own:
                rows = await own.fetch(self._load_sql, *args)
        else:
            rows = await conn.fetch(self._load_sql, *args)
        out = {stream: LoadedStream(None, []) for stream, _ in streams}
        reply: JsonDict | None = None
        for kind, stream_id, version, type_, schema_version, data in rows:
            if kind == 1:
                out[stream_id].events.append((type_, schema_version, data))
            elif kind == 0:
                out[stream_id] = LoadedStream((version, data), out[stream_id].events)
            else:
                reply = data
        return out, reply

    async def read_all(
        self, after: Position, limit: int = 1000, conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """The global feed after ``after``, in commit-safe order; never skips a late commit."""
        args = (str(after.tx_id), after.position, limit)
        if conn is not None:
            return [_row(r) for r in await conn.fetch(self._read_all_sql, *args)]
        async with self.session() as own:
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
        async with self.session() as conn:
            r = await conn.fetchrow(sql)
        return Position(r["tx_id"], r["global_position"]) if r else Position.start()

    async def marks(self) -> tuple[Position, int]:
        """The feed's head (as :meth:`head`) and the last committed position, readable or
        not yet (held back by an older transaction still running), in one query: the
        second moves at every commit, even while the head cannot."""
        async with self.session() as conn:
            r = await conn.fetchrow(self._marks_sql)
        assert r is not None
        head = Position(r[0], r[1]) if r[1] is not None else Position.start()
        return head, r[2] or 0

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
