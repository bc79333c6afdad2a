"""The unit of work: what a command handler or a process step works through.

A handler loads aggregates with :meth:`UnitOfWork.get`, calls their decide methods (which
record events), and returns; whoever opened the unit of work then calls
:meth:`UnitOfWork.commit`, which appends every aggregate's pending events in one atomic
multi-stream write (each stream at the version it was loaded at) and takes the snapshots
that are due. Nothing else writes. A handler never sees a connection.

The same class runs over the PostgreSQL store (loads and the append go through the
command's transaction connection) and over :class:`~libs.eventstore.memory.InMemoryEventStore`
(``conn=None``), so handler tests need no server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from contracts.base import Event, EventRegistry, JsonDict
from libs.eventstore.aggregate import Aggregate
from libs.eventstore.store import NewEvent, RecordedEvent, StreamWrite

A = TypeVar("A", bound=Aggregate)


class StorePort(Protocol):
    """What a unit of work needs of an event store (PostgreSQL or in memory)."""

    registry: EventRegistry

    async def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None, *, conn: Any = None
    ) -> list[RecordedEvent]: ...

    async def append_streams(
        self, writes: Sequence[StreamWrite], conn: Any = None
    ) -> list[RecordedEvent]: ...

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


class UnitOfWork:
    """Loads aggregates (one instance per stream), then saves what they recorded, once."""

    def __init__(
        self,
        store: StorePort,
        *,
        conn: Any = None,
        metadata: JsonDict | None = None,
        snapshot_every: int = 100,
    ) -> None:
        self.store = store
        self.conn = conn
        #: Stamped on every event: actor, command id, correlation and causation ids, trace.
        self.metadata: JsonDict = metadata or {}
        self.snapshot_every = snapshot_every
        self._loaded: dict[str, Aggregate] = {}
        #: Everything this unit of work appended, in order.
        self.recorded: list[RecordedEvent] = []

    @property
    def actor_id(self) -> str:
        return str((self.metadata.get("actor") or {}).get("id", "unknown"))

    async def get(self, cls: type[A], key: str) -> A:
        """The aggregate ``cls`` at ``key`` (a new, empty one if its stream is empty)."""
        stream_id = cls.stream_id_for(key)
        known = self._loaded.get(stream_id)
        if known is not None:
            if not isinstance(known, cls):
                raise TypeError(f"{stream_id} is loaded as {type(known).__name__}")
            return known
        base: A | None = None
        base_version = 0
        snap = await self.store.load_snapshot(stream_id, conn=self.conn)
        if snap is not None and snap[1] == cls.snapshot_version:
            try:
                base, base_version = cls.model_validate(snap[2]), snap[0]
            except ValidationError:
                base = None  # a snapshot the current class cannot read: replay it all
        records = await self.store.read_stream(stream_id, base_version, conn=self.conn)
        events = [r.decode(self.store.registry) for r in records]
        aggregate = cls.rehydrate(key, events, base=base, base_version=base_version)
        self._loaded[stream_id] = aggregate
        return aggregate

    def new_events(self, events: Sequence[Event]) -> list[NewEvent]:
        return [NewEvent(e, metadata=self.metadata) for e in events]

    def _writes(self) -> tuple[list[StreamWrite], list[Aggregate]]:
        writes, changed = [], []
        for aggregate in self._loaded.values():
            if aggregate.pending:
                expected = aggregate.stored_version
                writes.append(
                    StreamWrite(aggregate.stream_id, expected, self.new_events(aggregate.collect()))
                )
                changed.append(aggregate)
        return writes, changed

    async def commit(self) -> list[RecordedEvent]:
        """Append every pending event in one atomic write; snapshot what is due."""
        writes, changed = self._writes()
        if not writes:
            return []
        recorded = await self.store.append_streams(writes, self.conn)
        self.recorded.extend(recorded)
        await self._snapshot(writes, changed)
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

    async def _snapshot(self, writes: Sequence[StreamWrite], changed: Sequence[Aggregate]) -> None:
        every = self.snapshot_every
        for write, aggregate in zip(writes, changed, strict=True):
            if aggregate.version // every > write.expected_version // every:
                await self.store.save_snapshot(
                    aggregate.stream_id,
                    aggregate.version,
                    type(aggregate).snapshot_version,
                    aggregate.snapshot(),
                    conn=self.conn,
                )
