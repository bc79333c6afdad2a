"""Aggregates rebuilt from their stream (and a snapshot), saved with optimistic concurrency."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from contracts.base import Event
from libs.eventstore.store import EventStore, NewEvent, RecordedEvent, StreamWrite


class Aggregate(BaseModel):
    """State of one aggregate, evolved by its events. Pure: no I/O, no clock, no randomness."""

    model_config = ConfigDict(extra="forbid")

    #: Bump when the shape of the state changes; older snapshots are then ignored.
    snapshot_version: ClassVar[int] = 1

    @abc.abstractmethod
    def apply(self, event: Event) -> None:
        """Evolve the state by one event."""


A = TypeVar("A", bound=Aggregate)


@dataclass
class Loaded(Generic[A]):
    stream_id: str
    state: A
    version: int

    def write(self, events: Sequence[NewEvent]) -> StreamWrite:
        return StreamWrite(self.stream_id, self.version, events)


class Repository(Generic[A]):
    """Loads aggregates from snapshot + newer events; snapshots every ``snapshot_every``."""

    def __init__(
        self, store: EventStore, cls: type[A], prefix: str, snapshot_every: int = 100
    ) -> None:
        self.store = store
        self.cls = cls
        self.prefix = prefix
        self.snapshot_every = snapshot_every

    def stream_id(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    async def load(self, key: str) -> Loaded[A]:
        stream_id = self.stream_id(key)
        state, version = self.cls(), 0
        snap = await self.store.load_snapshot(stream_id)
        if snap is not None and snap[1] == self.cls.snapshot_version:
            version = snap[0]
            state = self.cls.model_validate(snap[2])
        for rec in await self.store.read_stream(stream_id, after_version=version):
            state.apply(rec.decode(self.store.registry))
            version = rec.version
        return Loaded(stream_id, state, version)

    async def after_save(self, loaded: Loaded[A], recorded: Sequence[RecordedEvent]) -> None:
        """Take a snapshot if this save crossed a multiple of ``snapshot_every``."""
        mine = [r for r in recorded if r.stream_id == loaded.stream_id]
        if not mine:
            return
        new_version = mine[-1].version
        if new_version // self.snapshot_every > loaded.version // self.snapshot_every:
            state = loaded.state.model_copy(deep=True)
            for r in mine:
                state.apply(r.decode(self.store.registry))
            await self.store.save_snapshot(
                loaded.stream_id,
                new_version,
                self.cls.snapshot_version,
                state.model_dump(mode="json"),
            )

    async def save(self, loaded: Loaded[A], events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append in its own transaction. Inside a caller's transaction, append through the
        store and call :meth:`after_save` once committed."""
        recorded = await self.store.append(loaded.stream_id, events, loaded.version)
        await self.after_save(loaded, recorded)
        return recorded
