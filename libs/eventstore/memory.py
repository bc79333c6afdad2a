"""An in-memory twin of :class:`~libs.eventstore.store.EventStore`, for fast unit tests.

Same contract (the shared suite in ``tests/libs/test_eventstore.py`` runs against both):
optimistic concurrency per stream, all-or-nothing multi-stream appends, one event id stored
once, a global feed in commit order, snapshots. Single-threaded asyncio needs no locks: an
append runs without awaiting, so it is atomic. The ``conn`` parameters exist only so code
written against the PostgreSQL store runs unchanged; they are ignored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.base import EVENTS, EventRegistry, JsonDict
from libs.eventstore.store import (
    CommandAlreadyProcessed,
    CommandRecord,
    ConcurrencyError,
    DuplicateEventError,
    LoadedStream,
    NewEvent,
    Position,
    RecordedEvent,
    SnapshotWrite,
    StreamWrite,
)


class InMemoryEventStore:
    def __init__(self, schema: str = "memory", registry: EventRegistry = EVENTS) -> None:
        self.schema = schema
        self.registry = registry
        self._events: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: set[uuid.UUID] = set()
        self._snapshots: dict[str, tuple[int, int, JsonDict]] = {}
        self._checkpoints: dict[str, Position] = {}
        #: ``processed_commands``: the reply stored under each command id.
        self.processed: dict[str, JsonDict] = {}
        self._waiters: set[asyncio.Event] = set()

    # -- writing ------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int, *, conn: Any = None
    ) -> list[RecordedEvent]:
        return await self.append_streams([StreamWrite(stream_id, expected_version, events)])

    async def append_streams(
        self,
        writes: Sequence[StreamWrite],
        conn: Any = None,
        *,
        command: CommandRecord | None = None,
        snapshots: Sequence[SnapshotWrite] = (),
    ) -> list[RecordedEvent]:
        writes = [w for w in writes if w.events]
        stale = [
            w.stream_id
            for w in writes
            if len(self._streams.get(w.stream_id, ())) != w.expected_version
        ]
        if stale:
            raise ConcurrencyError([w.stream_id for w in writes])
        ids = [ne.event_id for w in writes for ne in w.events]
        if len(set(ids)) != len(ids) or self._ids.intersection(ids):
            raise DuplicateEventError("an event id is stored already")
        if command is not None:
            if command.command_id in self.processed:
                raise CommandAlreadyProcessed(command.command_id)
            self.processed[command.command_id] = command.reply
        tx_id = len(self._events) + 1
        now = datetime.now(UTC)
        recorded: list[RecordedEvent] = []
        for w in writes:
            for i, ne in enumerate(w.events, start=1):
                rec = RecordedEvent(
                    position=len(self._events) + 1,
                    tx_id=tx_id,
                    event_id=ne.event_id,
                    stream_id=w.stream_id,
                    version=w.expected_version + i,
                    event_type=ne.event.event_type,
                    schema_version=ne.event.schema_version,
                    data=ne.event.model_dump(mode="json"),
                    metadata=dict(ne.metadata),
                    recorded_at=now,
                )
                self._events.append(rec)
                self._streams.setdefault(w.stream_id, []).append(rec)
                self._ids.add(ne.event_id)
                recorded.append(rec)
        for snap in snapshots:
            await self.save_snapshot(snap.stream_id, snap.version, snap.schema_version, snap.state)
        if recorded:
            self.notify_appended()
        return recorded

    def notify_appended(self) -> None:
        for w in self._waiters:
            w.set()

    def waiter(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.add(ev)
        return ev

    # -- reading ------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None, *, conn: Any = None
    ) -> list[RecordedEvent]:
        events = self._streams.get(stream_id, [])[after_version:]
        return list(events[:limit] if limit else events)

    async def load_streams(
        self,
        streams: Sequence[tuple[str, int]],
        *,
        conn: Any = None,
        command_id: str | None = None,
    ) -> tuple[dict[str, LoadedStream], JsonDict | None]:
        out = {}
        for stream_id, snapshot_version in streams:
            snap = self._snapshots.get(stream_id)
            usable = (snap[0], snap[2]) if snap and snap[1] == snapshot_version else None
            after = usable[0] if usable else 0
            out[stream_id] = LoadedStream(
                usable,
                [
                    (r.event_type, r.schema_version, r.data)
                    for r in self._streams.get(stream_id, [])[after:]
                ],
            )
        return out, (self.processed.get(command_id) if command_id is not None else None)

    async def read_all(
        self, after: Position, limit: int = 1000, conn: Any = None
    ) -> list[RecordedEvent]:
        return [e for e in self._events if e.cursor > after][:limit]

    async def read_by_position(self, after: int, limit: int = 1000) -> list[RecordedEvent]:
        return [e for e in self._events if e.position > after][:limit]

    async def head(self) -> Position:
        return self._events[-1].cursor if self._events else Position.start()

    # -- snapshots ----------------------------------------------------------------------

    async def load_snapshot(
        self, stream_id: str, *, conn: Any = None
    ) -> tuple[int, int, JsonDict] | None:
        return self._snapshots.get(stream_id)

    async def save_snapshot(
        self,
        stream_id: str,
        version: int,
        schema_version: int,
        state: JsonDict,
        *,
        conn: Any = None,
    ) -> None:
        current = self._snapshots.get(stream_id)
        if current is None or current[0] < version:
            self._snapshots[stream_id] = (version, schema_version, state)

    # -- checkpoints --------------------------------------------------------------------

    async def checkpoint(self, name: str, conn: Any = None) -> Position:
        return self._checkpoints.setdefault(name, Position.start())

    async def advance_checkpoint(self, conn: Any, name: str, old: Position, new: Position) -> bool:
        if self._checkpoints.get(name, Position.start()) != old:
            return False
        self._checkpoints[name] = new
        return True
