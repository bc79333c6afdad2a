"""Aggregates: decide, then record; state evolves only through recorded events.

A decide method checks the rules against the current state and, if the command is allowed,
calls :meth:`Aggregate.record` once with the events that follow. ``record`` applies each
event, queues it for the unit of work and moves the version: there is no other way to
change an aggregate. :meth:`Aggregate.apply` is total: it never refuses a known event, so a
rule tightened later can never make stored history unloadable.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, PrivateAttr

from contracts.base import Event


class RecordingRefused(RuntimeError):
    """An aggregate loaded for a query (read-only) was asked to record: a handler bug."""


class Aggregate(BaseModel):
    """State of one aggregate, evolved by its events. Pure: no I/O, no clock, no randomness."""

    # Snapshots are loaded with the current class: a field dropped since is ignored, a field
    # added since takes its default (and a bumped snapshot_version discards old snapshots).
    model_config = ConfigDict(extra="ignore")

    #: Stream ids are ``<stream_prefix>-<key>``.
    stream_prefix: ClassVar[str]
    #: Bump when the shape of the state changes; older snapshots are then ignored.
    snapshot_version: ClassVar[int] = 1
    #: Snapshot every this many events instead of the unit of work's default: a stream
    #: that grows fast and whose state is small (a feed whose state is its version).
    snapshot_every: ClassVar[int | None] = None

    _key: str = PrivateAttr(default="")
    _version: int = PrivateAttr(default=0)
    _pending: list[Event] = PrivateAttr(default_factory=list)
    _refusals: list[Exception] = PrivateAttr(default_factory=list)
    _sealed: bool = PrivateAttr(default=False)
    #: Where :meth:`record` reports that this aggregate recorded (its unit of work's list).
    _journal: list[Aggregate] | None = PrivateAttr(default=None)

    @abc.abstractmethod
    def apply(self, event: Event) -> None:
        """Evolve the state by one event. Must accept every event this aggregate records."""

    # -- recording ----------------------------------------------------------------------

    def record(self, *events: Event) -> list[Event]:
        """Apply ``events``, queue them for saving and move the version; returns them.

        A rule that :meth:`apply` notes with :meth:`violates` (say, a status change the state
        machine does not allow) refuses the recording: its error is raised, nothing is queued,
        and the aggregate, half-changed, must be dropped (the unit of work is). The same event
        replayed from the store is applied all the same.

        A sealed aggregate (loaded for a read-only command) refuses with
        :class:`RecordingRefused` before applying anything.
        """
        if self._sealed:
            raise RecordingRefused(
                f"{self.stream_id} was loaded for a read-only command, which records nothing"
            )
        for event in events:
            self.apply(event)
            if self._refusals:
                error, self._refusals = self._refusals[0], []
                raise error
        self._pending.extend(events)
        self._version += len(events)
        if self._journal is not None:
            self._journal.append(self)
        return list(events)

    def seal(self) -> None:
        """Refuse every recording from now on (a query's aggregate, or one kept in memory)."""
        self._sealed = True

    def violates(self, error: Exception) -> None:
        """Called by :meth:`apply` for an event that breaks a rule: ``error`` is raised when
        it is recorded; when it is replayed it is applied (history is what happened, whatever
        the rules are now)."""
        self._refusals.append(error)

    @property
    def pending(self) -> tuple[Event, ...]:
        """Events recorded since the aggregate was loaded or last saved."""
        return tuple(self._pending)

    def collect(self) -> list[Event]:
        """Take the pending events (the unit of work saves them)."""
        events, self._pending = self._pending, []
        return events

    # -- identity and version -----------------------------------------------------------

    @classmethod
    def stream_id_for(cls, key: str) -> str:
        return f"{cls.stream_prefix}-{key}"

    @property
    def key(self) -> str:
        return self._key

    @property
    def stream_id(self) -> str:
        return self.stream_id_for(self._key)

    @property
    def version(self) -> int:
        """The stream version including pending events."""
        return self._version

    @property
    def stored_version(self) -> int:
        """The stream version in the store (the expected version when saving)."""
        return self._version - len(self._pending)

    @classmethod
    def rehydrate(
        cls, key: str, events: Sequence[Event], *, base: Self | None = None, base_version: int = 0
    ) -> Self:
        """The aggregate at ``key`` from a snapshot (``base``) and the events after it."""
        state = base if base is not None else cls()
        state._key = key
        for event in events:
            state.apply(event)
        state._version = base_version + len(events)
        state._pending, state._refusals = [], []
        return state

    def snapshot(self) -> dict[str, object]:
        return self.model_dump(mode="json")
