"""The unit of work: what a command handler or a process step works through.

A handler loads aggregates with :meth:`UnitOfWork.get`, calls their decide methods (which
record events), and returns; whoever opened the unit of work then calls
:meth:`UnitOfWork.commit`, which appends every aggregate's pending events in one atomic
multi-stream write (each stream at the version it was loaded at) and takes the snapshots
that are due. Nothing else writes. A handler never sees a connection.

The same class runs over the PostgreSQL store (loads and the append go through the
command's connection) and over :class:`~libs.eventstore.memory.InMemoryEventStore`
(``conn=None``), so handler tests need no server.

Round trips: loading an aggregate is one query (its snapshot and the events after it), and
:meth:`UnitOfWork.prefetch` loads several in that one query; the first load can also look up
a stored reply (``replay_of``), so a repeated command stops there. The commit is one
statement: the events, the command's reply row and the due snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from contracts.base import Event, EventRegistry, JsonDict
from libs.eventstore.aggregate import Aggregate, RecordingRefused
from libs.eventstore.store import (
    CommandRecord,
    LoadedStream,
    NewEvent,
    RecordedEvent,
    SnapshotWrite,
    StreamWrite,
)

A = TypeVar("A", bound=Aggregate)


class StorePort(Protocol):
    """What a unit of work needs of an event store (PostgreSQL or in memory)."""

    registry: EventRegistry

    async def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None, *, conn: Any = None
    ) -> list[RecordedEvent]: ...

    async def append_streams(
        self,
        writes: Sequence[StreamWrite],
        conn: Any = None,
        *,
        command: CommandRecord | None = None,
        snapshots: Sequence[SnapshotWrite] = (),
    ) -> list[RecordedEvent]: ...

    async def load_streams(
        self,
        streams: Sequence[tuple[str, int]],
        *,
        conn: Any = None,
        command_id: str | None = None,
    ) -> tuple[dict[str, LoadedStream], JsonDict | None]: ...

    async def load_snapshot(
        self, stream_id: str, *, conn: Any = None
    ) -> tuple[int, int, JsonDict] | None: ...

    async def save_snapshot(
        self,
        stream_id: str,
        version: int,
        schema_version: int,
        state: JsonDict,
        *,
        conn: Any = None,
    ) -> None: ...


class AlreadyProcessed(Exception):
    """The command this unit of work runs for has a stored reply: it ran before."""

    def __init__(self, reply: JsonDict) -> None:
        super().__init__("the command was processed already")
        self.reply = reply


class UnitOfWork:
    """Loads aggregates (one instance per stream), then saves what they recorded, once."""

    def __init__(
        self,
        store: StorePort,
        *,
        conn: Any = None,
        metadata: JsonDict | None = None,
        snapshot_every: int = 100,
        replay_of: str | None = None,
    ) -> None:
        self.store = store
        self.conn = conn
        #: A command id whose stored reply the first load looks up (and raises
        #: :class:`AlreadyProcessed` with); None once looked up.
        self.replay_of = replay_of
        #: Stamped on every event: actor, command id, correlation and causation ids, trace.
        self.metadata: JsonDict = metadata or {}
        self.snapshot_every = snapshot_every
        self._loaded: dict[str, Aggregate] = {}
        #: Events taken from the aggregates by :meth:`stamp`, under the metadata they were
        #: recorded with, per stream: (the stream's stored version, the events).
        self._stamped: dict[str, tuple[int, list[NewEvent]]] = {}
        #: The aggregates that recorded since the last :meth:`stamp` (each as often as it did).
        self._recorders: list[Aggregate] = []
        #: Everything this unit of work appended, in order.
        self.recorded: list[RecordedEvent] = []

    @property
    def actor_id(self) -> str:
        return str((self.metadata.get("actor") or {}).get("id", "unknown"))

    async def get(self, cls: type[A], key: str) -> A:
        """The aggregate ``cls`` at ``key`` (a new, empty one if its stream is empty)."""
        stream_id = cls.stream_id_for(key)
        if stream_id not in self._loaded:
            await self.prefetch((cls, key))
        return self._loaded_as(cls, stream_id)

    def create(self, cls: type[A], key: str) -> A:
        """The aggregate ``cls`` at a key made fresh for it (say, with the time in it): empty,
        without a load. If its stream exists after all, the commit fails with
        :class:`~libs.eventstore.store.ConcurrencyError`, as a stale load would."""
        stream_id = cls.stream_id_for(key)
        if stream_id in self._loaded:
            return self._loaded_as(cls, stream_id)
        aggregate = cls.rehydrate(key, [])
        aggregate._journal = self._recorders
        self._loaded[stream_id] = aggregate
        return aggregate

    def _loaded_as(self, cls: type[A], stream_id: str) -> A:
        known = self._loaded[stream_id]
        if not isinstance(known, cls):
            raise TypeError(f"{stream_id} is loaded as {type(known).__name__}")
        return known

    async def prefetch(self, *refs: tuple[type[Aggregate], str]) -> None:
        """Load these aggregates in one query (``get`` then returns them as loaded)."""
        to_load: dict[str, tuple[type[Aggregate], str]] = {}
        for cls, key in refs:
            stream_id = cls.stream_id_for(key)
            if stream_id not in self._loaded:
                to_load.setdefault(stream_id, (cls, key))
        if not to_load and self.replay_of is None:
            return
        command_id, self.replay_of = self.replay_of, None
        loaded, reply = await self.store.load_streams(
            [(stream_id, cls.snapshot_version) for stream_id, (cls, _) in to_load.items()],
            conn=self.conn,
            command_id=command_id,
        )
        if reply is not None:
            raise AlreadyProcessed(reply)
        registry = self.store.registry
        for stream_id, (cls, key) in to_load.items():
            snapshot, events = loaded[stream_id]
            base: Aggregate | None = None
            base_version = 0
            if snapshot is not None:
                try:
                    base, base_version = cls.model_validate(snapshot[1]), snapshot[0]
                except ValidationError:  # a snapshot the current class cannot read: replay
                    (_, events), _ = await self._reload(stream_id)
            aggregate = cls.rehydrate(
                key,
                [registry.decode(t, v, data) for t, v, data in events],
                base=base,
                base_version=base_version,
            )
            aggregate._journal = self._recorders
            self._loaded[stream_id] = aggregate

    async def _reload(self, stream_id: str) -> tuple[LoadedStream, JsonDict | None]:
        """The whole stream, without a snapshot (no snapshot has schema version -1)."""
        loaded, reply = await self.store.load_streams([(stream_id, -1)], conn=self.conn)
        return loaded[stream_id], reply

    def new_events(self, events: Sequence[Event]) -> list[NewEvent]:
        return [NewEvent(e, metadata=self.metadata) for e in events]

    def stamp(self, metadata: JsonDict) -> None:
        """Stamp what has been recorded so far with the current metadata and use ``metadata``
        from now on: one unit of work handling several causes (a consumer's batch of events)
        keeps each event's own causation. The commit still writes everything at once."""
        recorders = list(self._recorders)
        self._recorders.clear()  # in place: the aggregates hold this list
        for aggregate in {id(a): a for a in recorders if a.pending}.values():
            stored = aggregate.stored_version
            _, events = self._stamped.setdefault(aggregate.stream_id, (stored, []))
            events.extend(self.new_events(aggregate.collect()))
        self.metadata = metadata

    def _writes(self) -> tuple[list[StreamWrite], list[Aggregate]]:
        writes, changed = [], []
        self._recorders.clear()
        for aggregate in self._loaded.values():
            stamped = self._stamped.pop(aggregate.stream_id, None)
            if aggregate.pending or stamped is not None:
                expected, events = stamped or (aggregate.stored_version, [])
                events = [*events, *self.new_events(aggregate.collect())]
                writes.append(StreamWrite(aggregate.stream_id, expected, events))
                changed.append(aggregate)
        return writes, changed

    async def commit(self, command: CommandRecord | None = None) -> list[RecordedEvent]:
        """Append every pending event, with ``command``'s reply row and the snapshots that
        are due, in one atomic write."""
        writes, changed = self._writes()
        if not writes and command is None:
            return []
        recorded = await self.store.append_streams(
            writes, self.conn, command=command, snapshots=self._due_snapshots(writes, changed)
        )
        self.recorded.extend(recorded)
        return recorded

    async def commit_alone(self) -> list[RecordedEvent]:
        """Append what is pending now in its own transaction, so it stays even if the
        command then fails (e.g. a reused refresh token revokes its session, then refuses)."""
        writes, _ = self._writes()
        if not writes:
            return []
        recorded = await self.store.append_streams(writes)
        self.recorded.extend(recorded)
        return recorded

    def _due_snapshots(
        self, writes: Sequence[StreamWrite], changed: Sequence[Aggregate]
    ) -> list[SnapshotWrite]:
        return [
            SnapshotWrite(
                aggregate.stream_id,
                aggregate.version,
                type(aggregate).snapshot_version,
                aggregate.snapshot(),
            )
            for write, aggregate in zip(writes, changed, strict=True)
            if aggregate.version // self._every(aggregate)
            > write.expected_version // self._every(aggregate)
        ]

    def _every(self, aggregate: Aggregate) -> int:
        return type(aggregate).snapshot_every or self.snapshot_every


class ReadOnlyUnitOfWork(UnitOfWork):
    """A query's unit of work: it loads aggregates, sealed, so any ``record`` on them raises
    :class:`RecordingRefused`, and it commits nothing (``commit`` raises too).

    No connection is held between loads: each load takes one of the store's for its one
    query, at most ``loads`` (a semaphore) of them at once when given."""

    def __init__(
        self,
        store: StorePort,
        *,
        metadata: JsonDict | None = None,
        loads: asyncio.Semaphore | None = None,
    ) -> None:
        super().__init__(store, metadata=metadata)
        self._loads = loads

    async def prefetch(self, *refs: tuple[type[Aggregate], str]) -> None:
        async with self._loads or contextlib.nullcontext():
            await super().prefetch(*refs)
        for aggregate in self._loaded.values():
            aggregate.seal()

    async def commit(self, command: CommandRecord | None = None) -> list[RecordedEvent]:
        raise RecordingRefused("a read-only unit of work commits nothing")

    async def commit_alone(self) -> list[RecordedEvent]:
        raise RecordingRefused("a read-only unit of work commits nothing")
