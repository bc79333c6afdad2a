"""Declarative read models: a table, its key, its columns, and how each event changes rows.

A read model is a :class:`ReadModel` subclass. It names its table, key columns and columns
(name -> PostgreSQL type), and declares, for each event type it reads, a pure function from
the current row (``None`` if there is none) to the new row (``None`` deletes it)::

    class Renders(ReadModel):
        name = "renders"
        table = "renders"
        key = ("render_id",)
        columns = {"render_id": "text", "job_id": "text", "status": "text"}

        @on(RenderOrdered, key=lambda e: (e.render_id,))
        def ordered(self, row: Row | None, e: RenderOrdered, rec: RecordedEvent) -> Row | None:
            return row or {"render_id": e.render_id, "job_id": e.job_id, "status": "ordered"}

        @on(RenderCompleted, key=lambda e: (e.render_id,))
        def completed(self, row: Row | None, e: RenderCompleted, rec: RecordedEvent) -> Row | None:
            return row and {**row, "status": "completed"}

``key=`` gives the one row an event touches; ``each=`` gives several, as a mapping from each
row's key to an item passed to the function as a fourth argument (one event, many frames).
The event types the projection reads are those of its rules, nothing else.

I/O is the library's, one style for all: per batch, one SELECT of every row the batch
touches, the events folded in memory in order, then one ``INSERT ... SELECT FROM unnest(...)
ON CONFLICT DO UPDATE`` of the changed rows and one ``DELETE`` of the removed ones.

**Quarantine.** An event a projection cannot apply (it does not decode, a rule raises, or
the write fails) is recorded in ``<schema>.quarantine`` with the error, in the transaction
that moves the checkpoint; the later events of its stream are recorded there as held (error
NULL) and skipped, and every other stream goes on. A write that fails is retried stream by
stream, then event by event, each in a savepoint, to find the event. :meth:`ReadModel.retry`
re-applies a stream's quarantined events in order once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import asyncpg
import orjson

from contracts.base import EVENTS, Event, EventRegistry
from libs.eventstore.processor import Projection
from libs.eventstore.store import EventStore, RecordedEvent
from libs.logging import get_logger

log = get_logger(__name__)

Key = tuple[Any, ...]
Row = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
Entry = tuple[RecordedEvent, str | None]
Prepared = tuple[RecordedEvent, Event | None, list[tuple["Rule", Key, Any]], str | None]

_MARK = "__read_model_on__"
_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Rule:
    """How one event type changes rows: which rows (``key`` or ``each``) and by which method."""

    event_type: str
    method: str
    key: Callable[[Any, RecordedEvent], Key] | None
    each: Callable[[Any, RecordedEvent], Mapping[Key, Any]] | None


def on(
    *events: type[Event],
    key: Callable[..., Key] | None = None,
    each: Callable[..., Mapping[Key, Any]] | None = None,
) -> Callable[[F], F]:
    """Declare a method of a :class:`ReadModel` as the rule for ``events``.

    ``key`` and ``each`` take the event, or the event and its :class:`RecordedEvent` (for
    rows keyed by stream id: ``key=lambda e, rec: (rec.stream_id,)``).

    With ``key=`` the method is ``(row, event, recorded) -> row``, for the row ``key(event)``;
    with ``each=`` it is ``(row, event, recorded, item) -> row``, once for every
    ``(row key, item)`` of ``each(event)``. Rows are dicts of every column; ``None`` means no
    row (as input) and delete it (as output). The method must not mutate ``row``'s values.
    """
    if not events:
        raise TypeError("on() needs at least one event class")
    if (key is None) == (each is None):
        raise TypeError("on() takes exactly one of key= and each=")

    def mark(fn: F) -> F:
        k, ea = _with_recorded(key), _with_recorded(each)
        marks = [*getattr(fn, _MARK, ()), *((e.event_type, k, ea) for e in events)]
        setattr(fn, _MARK, marks)
        return fn

    return mark


@dataclass(frozen=True)
class QuarantineEntry:
    projection: str
    stream_id: str
    event_id: str
    version: int
    position: int
    event_type: str
    error: str | None
    quarantined_at: datetime


class ReadModel(Projection):
    """A projection into one table, declared by its key, columns and ``@on`` rules."""

    #: Checkpoint and quarantine name (unique within the schema).
    name: str
    #: Table within the service's schema; a rebuild passes another (``<table>__next``).
    table: str
    #: Key columns (the primary key).
    key: tuple[str, ...]
    #: Every column (keys included): name -> PostgreSQL type, e.g. ``"text"``, ``"text[]"``.
    columns: Mapping[str, str]
    registry: EventRegistry = EVENTS
    #: Whether a rule reads ``rec.metadata``. The rebuild reads the metadata column only
    #: then; otherwise a rule touching it fails (and quarantines) instead of misreading.
    reads_metadata: ClassVar[bool] = False
    rules: ClassVar[dict[str, list[Rule]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        rules: dict[str, list[Rule]] = {}
        seen: set[tuple[str, str]] = set()
        for klass in reversed(cls.__mro__):
            for attr, fn in vars(klass).items():
                for event_type, key, each in getattr(fn, _MARK, ()):
                    if (event_type, attr) not in seen:
                        seen.add((event_type, attr))
                        rules.setdefault(event_type, []).append(Rule(event_type, attr, key, each))
        cls.rules = rules
        cls.types = tuple(sorted(rules))
        if "columns" in vars(cls) or "key" in vars(cls):
            missing = [k for k in cls.key if k not in cls.columns]
            if missing:
                raise TypeError(f"{cls.__name__}: key columns {missing} are not in columns")
            if any(cls.columns[k].endswith("[]") for k in cls.key):
                raise TypeError(f"{cls.__name__}: a key column cannot be an array")

    def retarget(self, *, table: str, name: str) -> ReadModel:
        """The same read model writing into ``table``, checkpointed and quarantined as ``name``."""
        clone = copy.copy(self)
        clone.table, clone.name = table, name
        return clone

    # -- the batch --------------------------------------------------------------------

    async def apply(
        self, conn: asyncpg.Connection, events: list[RecordedEvent], schema: str
    ) -> None:
        streams = list({e.stream_id for e in events})
        held = {
            r["stream_id"]
            for r in await conn.fetch(
                f"SELECT DISTINCT stream_id FROM {schema}.quarantine"
                " WHERE projection = $1 AND stream_id = ANY($2)",
                self.name,
                streams,
            )
        }
        entries: list[Entry] = [(e, None) for e in events if e.stream_id in held]
        rest = [e for e in events if e.stream_id not in held]
        if rest:
            entries += await self._apply_isolated(conn, schema, rest)
        if entries:
            await self._quarantine(conn, schema, entries)

    async def _apply_isolated(
        self, conn: asyncpg.Connection, schema: str, events: list[RecordedEvent]
    ) -> list[Entry]:
        """Apply ``events``; returns the quarantine entries. A failing write is retried per
        stream, then per event, each in a savepoint, so only the failing stream stops."""
        try:
            async with conn.transaction():
                return await self._fold_write(conn, schema, events)
        except Exception as e:
            if _transient(e):
                raise
        by_stream: dict[str, list[RecordedEvent]] = {}
        for rec in events:
            by_stream.setdefault(rec.stream_id, []).append(rec)
        entries: list[Entry] = []
        for stream_events in by_stream.values():
            try:
                async with conn.transaction():
                    entries += await self._fold_write(conn, schema, stream_events)
                continue
            except Exception as e:
                if _transient(e):
                    raise
            for i, rec in enumerate(stream_events):
                try:
                    async with conn.transaction():
                        got = await self._fold_write(conn, schema, [rec])
                except Exception as e:
                    if _transient(e):
                        raise
                    got = [(rec, _describe(e))]
                if got:
                    entries += got + [(r, None) for r in stream_events[i + 1 :]]
                    break
        return entries

    async def _fold_write(
        self, conn: asyncpg.Connection, schema: str, events: list[RecordedEvent]
    ) -> list[Entry]:
        """One SELECT, an in-memory fold in order, one upsert and one delete."""
        prepared = [self._prepare(rec) for rec in events]
        keys = list(dict.fromkeys(k for _, _, touches, _ in prepared for _, k, _ in touches))
        original = await self._fetch(conn, schema, keys)
        state: dict[Key, Row | None] = dict(original)
        entries = self._fold(state, prepared, set())
        upserts = []
        for k, r in state.items():
            if r is not None and r is not original.get(k):
                r = self.finalize(r)
                if r != original.get(k):
                    upserts.append(r)
        deletes = [k for k, r in state.items() if r is None and original.get(k) is not None]
        await self._write(conn, schema, upserts, deletes)
        return entries

    def fold(
        self, state: dict[Key, Row | None], events: Iterable[RecordedEvent], failed: set[str]
    ) -> list[Entry]:
        """Fold ``events`` into ``state`` (row key -> row, or None once deleted) in memory,
        with no I/O: the rebuild keeps one ``state`` for the whole feed. Streams in
        ``failed`` are skipped (held); a stream whose event fails is added to it. Returns
        the quarantine entries. Rows are not finalized here (see :meth:`finalize`)."""
        return self._fold(state, [self._prepare(rec) for rec in events], failed)

    def _prepare(self, rec: RecordedEvent) -> Prepared:
        """The event decoded (upcast, then validated) and the rows it touches, or the error."""
        try:
            event = rec.decode(self.registry)
            touches: list[tuple[Rule, Key, Any]] = []
            for rule in self.rules.get(rec.event_type, ()):
                if rule.key is not None:
                    touches.append((rule, tuple(rule.key(event, rec)), None))
                else:
                    assert rule.each is not None
                    touches += [(rule, tuple(k), v) for k, v in rule.each(event, rec).items()]
            return rec, event, touches, None
        except Exception as e:
            return rec, None, [], _describe(e)

    def _fold(
        self, state: dict[Key, Row | None], prepared: Iterable[Prepared], failed: set[str]
    ) -> list[Entry]:
        entries: list[Entry] = []
        for rec, decoded, touches, error in prepared:
            if rec.stream_id in failed:
                entries.append((rec, None))
                continue
            if error is None and len(touches) == 1:  # the usual case, without staging
                rule, k, item = touches[0]
                current = state.get(k)
                try:
                    new = getattr(self, rule.method)(
                        None if current is None else dict(current),
                        decoded,
                        rec,
                        *(() if rule.key else (item,)),
                    )
                    state[k] = None if new is None else self._checked(k, new)
                    continue
                except Exception as e:
                    error = _describe(e)
            elif error is None:
                try:
                    staged: dict[Key, Row | None] = {}
                    for rule, k, item in touches:
                        current = staged[k] if k in staged else state.get(k)
                        args: tuple[Any, ...] = (
                            None if current is None else dict(current),
                            decoded,
                            rec,
                        )
                        new = getattr(self, rule.method)(*args, *(() if rule.key else (item,)))
                        staged[k] = None if new is None else self._checked(k, new)
                except Exception as e:
                    error = _describe(e)
                else:
                    state.update(staged)
                    continue
            failed.add(rec.stream_id)
            entries.append((rec, error))
        return entries

    def _checked(self, key: Key, row: Row) -> Row:
        if row.keys() != self.columns.keys():
            missing = sorted(self.columns.keys() - row.keys())
            extra = sorted(row.keys() - self.columns.keys())
            raise ValueError(f"{self.name}: row has missing columns {missing}, extra {extra}")
        if tuple(row[c] for c in self.key) != key:
            raise ValueError(f"{self.name}: rule returned the row of another key for {key}")
        return row

    def finalize(self, row: Row) -> Row:
        """Called once per changed row after the batch is folded, before it is written: a
        read model whose rows hold an object while folding turns it into column values here
        (so a costly rendering is done once per row per batch, not once per event)."""
        return row

    # -- SQL ----------------------------------------------------------------------------

    def _as_json(self, column: str) -> bool:
        """Arrays and jsonb go through unnest as JSON text: asyncpg would take a list of
        lists for a two-dimensional array."""
        t = self.columns[column]
        return t.endswith("[]") or t in ("json", "jsonb")

    def _unnest(self, names: Sequence[str], first: int = 1) -> str:
        types = ["text[]" if self._as_json(c) else f"{self.columns[c]}[]" for c in names]
        return ", ".join(f"${i}::{t}" for i, t in enumerate(types, start=first))

    async def _fetch(
        self, conn: asyncpg.Connection, schema: str, keys: list[Key]
    ) -> dict[Key, Row | None]:
        if not keys:
            return {}
        cols = ", ".join(self.columns)
        sql = (
            f"SELECT {cols} FROM {schema}.{self.table} WHERE ({', '.join(self.key)})"
            f" IN (SELECT * FROM unnest({self._unnest(self.key)}))"
        )
        rows = await conn.fetch(sql, *_columns(keys, range(len(self.key))))
        return {tuple(r[c] for c in self.key): dict(r) for r in rows}

    async def _write(
        self, conn: asyncpg.Connection, schema: str, upserts: list[Row], deletes: list[Key]
    ) -> None:
        target = f"{schema}.{self.table}"
        if deletes:
            await conn.execute(
                f"DELETE FROM {target} WHERE ({', '.join(self.key)})"
                f" IN (SELECT * FROM unnest({self._unnest(self.key)}))",
                *_columns(deletes, range(len(self.key))),
            )
        if not upserts:
            return
        names = list(self.columns)
        select = ", ".join(
            (
                f"CASE WHEN u.{c} IS NULL THEN NULL"
                f" ELSE ARRAY(SELECT jsonb_array_elements_text(u.{c}::jsonb))::{t} END"
            )
            if t.endswith("[]")
            else (f"u.{c}::{t}" if self._as_json(c) else f"u.{c}")
            for c, t in self.columns.items()
        )
        rest = [c for c in names if c not in self.key]
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)
            if rest
            else "DO NOTHING"
        )
        await conn.execute(
            f"INSERT INTO {target} ({', '.join(names)})"
            f" SELECT {select} FROM unnest({self._unnest(names)}) AS u({', '.join(names)})"
            f" ON CONFLICT ({', '.join(self.key)}) {conflict}",
            *(
                [_json(r[c]) for r in upserts] if self._as_json(c) else [r[c] for r in upserts]
                for c in names
            ),
        )

    async def _quarantine(
        self, conn: asyncpg.Connection, schema: str, entries: list[Entry]
    ) -> None:
        for rec, error in entries:
            if error is not None:
                log.error(
                    "event_quarantined",
                    projection=self.name,
                    stream_id=rec.stream_id,
                    event_id=str(rec.event_id),
                    event_type=rec.event_type,
                    error=error,
                )
        await conn.execute(
            f"INSERT INTO {schema}.quarantine (projection, stream_id, event_id, version,"
            " global_position, event_type, error)"
            " SELECT $1, * FROM unnest($2::text[], $3::uuid[], $4::int[], $5::bigint[],"
            " $6::text[], $7::text[])"
            " ON CONFLICT (projection, event_id) DO UPDATE SET error = EXCLUDED.error,"
            " quarantined_at = now()",
            self.name,
            [r.stream_id for r, _ in entries],
            [r.event_id for r, _ in entries],
            [r.version for r, _ in entries],
            [r.position for r, _ in entries],
            [r.event_type for r, _ in entries],
            [e for _, e in entries],
        )

    # -- operators ----------------------------------------------------------------------

    async def retry(self, store: EventStore, stream_id: str) -> tuple[int, str | None]:
        """Re-apply the stream's quarantined events in order, in one transaction.

        Returns (events applied, the new error or None). Events up to a failing one are
        applied and leave the quarantine; the failing one keeps the new error and the rest
        stay held. The projection's checkpoint row is locked meanwhile, so the live
        projector does not hold a new event of the stream behind our back.
        """
        s = store.schema
        async with store.pool.acquire() as conn, conn.transaction():
            await store.checkpoint(self.name, conn)
            await conn.execute(
                f"SELECT 1 FROM {s}.checkpoints WHERE name = $1 FOR UPDATE", self.name
            )
            rows = await conn.fetch(
                f"SELECT event_id FROM {s}.quarantine WHERE projection = $1 AND stream_id = $2"
                " ORDER BY version FOR UPDATE",
                self.name,
                stream_id,
            )
            ids = [r["event_id"] for r in rows]
            if not ids:
                return 0, None
            events = await store.read_events(ids, conn)
            await conn.execute(
                f"DELETE FROM {s}.quarantine WHERE projection = $1 AND event_id = ANY($2)",
                self.name,
                ids,
            )
            entries = await self._apply_isolated(conn, s, events)
            if entries:
                await self._quarantine(conn, s, entries)
        error = next((e for _, e in entries if e is not None), None)
        return len(events) - len(entries), error


async def quarantined(
    conn: asyncpg.Connection, schema: str, projection: str | None = None
) -> list[QuarantineEntry]:
    """Every quarantined event of ``schema`` (optionally one projection's), in stream order."""
    rows = await conn.fetch(
        "SELECT projection, stream_id, event_id::text AS event_id, version, global_position,"
        f" event_type, error, quarantined_at FROM {schema}.quarantine"
        " WHERE $1::text IS NULL OR projection = $1 ORDER BY projection, stream_id, version",
        projection,
    )
    return [
        QuarantineEntry(
            r["projection"],
            r["stream_id"],
            r["event_id"],
            r["version"],
            r["global_position"],
            r["event_type"],
            r["error"],
            r["quarantined_at"],
        )
        for r in rows
    ]


async def quarantined_streams(conn: asyncpg.Connection, schema: str) -> dict[str, int]:
    """Projection name -> how many of its streams are quarantined."""
    rows = await conn.fetch(
        f"SELECT projection, count(DISTINCT stream_id) AS n FROM {schema}.quarantine"
        " GROUP BY projection ORDER BY projection"
    )
    return {r["projection"]: r["n"] for r in rows}


def _with_recorded(fn: Callable[..., Any] | None) -> Callable[[Any, RecordedEvent], Any] | None:
    """``fn`` as a function of (event, recorded), whether it takes one argument or two."""
    if fn is None:
        return None
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return lambda e, rec: fn(e)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn
    return lambda e, rec: fn(e)


class RawJson(str):
    """JSON text rendered already, as the value of a json/jsonb column (``finalize`` may
    return one instead of the object, saving a conversion to Python values and back)."""

    __slots__ = ()


def _json(value: Any) -> str | None:
    if isinstance(value, RawJson):
        return str(value)
    return None if value is None else orjson.dumps(value).decode()


def _columns(rows: Iterable[Sequence[Any]], indexes: Iterable[int]) -> list[list[Any]]:
    rows = list(rows)
    return [[r[i] for r in rows] for i in indexes]


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:_ERROR_CHARS]


_TRANSIENT = (
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.OperatorInterventionError,  # query cancelled, admin shutdown
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)


def _transient(e: BaseException) -> bool:
    """Errors that say nothing about the event: the batch is retried, nothing quarantined."""
    if isinstance(e, asyncpg.DataError):
        return False  # a value the row cannot hold: the event's fault
    return isinstance(e, (*_TRANSIENT, asyncpg.InterfaceError))
