"""Tailers of the global feed: projections (exactly-once) and anything else that follows it.

A tailer holds a PostgreSQL session advisory lock named after it, so only one process runs
it at a time; others stand by and take over when the holder's connection goes away. It wakes
at once when this process appends, and polls for appends made elsewhere.

A projector stores its checkpoint with every batch it applies. A batch with nothing it
projects only moves its position in memory; the checkpoint follows within
``checkpoint_interval`` (or with the next batch it applies), so the read models of a
service whose events are mostly for other read models write nothing per event. A restart
reads those events again, which changes nothing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import zlib
from collections.abc import Sequence

import asyncpg

from libs.eventstore.store import EventStore, Position, RecordedEvent
from libs.logging import get_logger

log = get_logger(__name__)


class Tailer(abc.ABC):
    """Follows the global feed of one event store from a stored checkpoint."""

    def __init__(
        self,
        store: EventStore,
        name: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        types: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.types = frozenset(types) if types is not None else None
        self.position = Position.start()
        self._loaded = False
        self._progress = asyncio.Condition()
        self._wake = store.waiter()
        self.is_leader = False
        self.last_error: BaseException | None = None

    @property
    def lock_key(self) -> int:
        return zlib.crc32(f"{self.store.schema}:{self.name}".encode())

    def wants(self, event: RecordedEvent) -> bool:
        return self.types is None or event.event_type in self.types

    @abc.abstractmethod
    async def process_batch(self, events: list[RecordedEvent]) -> bool:
        """Handle a batch read after ``self.position`` and advance the checkpoint.

        Returns False if the checkpoint was moved by someone else (then we re-read it).
        """

    async def run_once(self) -> int:
        """Process one batch; returns how many events were read."""
        if not self._loaded:
            self.position = await self._reload()
            self._loaded = True
        events = await self.store.read_all(self.position, self.batch_size)
        if not events:
            return 0
        if not await self.process_batch(events):
            # Moved by someone else (another runner, or a rebuild's swap): go on from there,
            # and wake read-your-writes waiters the new checkpoint may already satisfy.
            await self._advanced(await self._reload())
            return 0
        await self._advanced(events[-1].cursor)
        return len(events)

    async def _reload(self) -> Position:
        """The stored checkpoint, read again."""
        return await self.store.checkpoint(self.name)

    async def store_position(self) -> None:
        """Called when the tailer has caught up: every batch stored its checkpoint."""
        return None

    async def catch_up(self) -> int:
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def _advanced(self, to: Position) -> None:
        self.position = to
        async with self._progress:
            self._progress.notify_all()

    async def wait_for(self, position: Position) -> None:
        """Return once this tailer has processed everything up to ``position``.

        Callers bound the wait with ``asyncio.timeout``; the command server uses 5 s.
        """
        self._wake.set()
        while not self.is_leader:  # another replica runs it: watch the stored checkpoint
            if await self.store.checkpoint(self.name) >= position:
                return
            await asyncio.sleep(0.02)
        async with self._progress:
            await self._progress.wait_for(lambda: self.position >= position)

    async def run(self, stopping: asyncio.Event) -> None:
        """Run until ``stopping`` is set: take the leader lock, then follow the feed."""
        while not stopping.is_set():
            try:
                await self._lead(stopping)
            except Exception as e:
                # Events are handled in order, so a failing batch is retried, not skipped:
                # the tailer stalls there, says so in the log and in readiness, and goes on
                # once the cause (a lost connection, a bug fixed and deployed) is gone. Read
                # models quarantine an event they cannot apply instead (projection.py).
                self.last_error = e
                log.error("tailer_failed", tailer=self.name, error=repr(e), exc_info=True)
                await _sleep_or_stop(stopping, 1.0)

    async def _lead(self, stopping: asyncio.Event) -> None:
        async with self.store.pool.acquire() as lock_conn:
            while not stopping.is_set():
                got = await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key)
                if got:
                    break
                await _sleep_or_stop(stopping, 1.0)
            else:
                return
            self.is_leader = True
            try:
                self.position = await self._reload()
                self._loaded = True
                await self._advanced(self.position)
                while not stopping.is_set():
                    # Cleared before reading, not after: a wake-up that comes while a batch
                    # is processed (an append it did not see) makes the idle wait return at
                    # once instead of being lost until the next poll.
                    self._wake.clear()
                    n = await self.run_once()
                    self.last_error = None
                    if n < self.batch_size:
                        await self.store_position()
                        await self._idle(stopping)
            finally:
                self.is_leader = False
                with contextlib.suppress(Exception):
                    await lock_conn.execute("SELECT pg_advisory_unlock($1)", self.lock_key)

    async def _idle(self, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
        _, pending = await asyncio.wait(
            waits, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        for p in pending:
            p.cancel()


class Projection(abc.ABC):
    """A read model built from events. Effects and checkpoint commit together.

    :class:`libs.eventstore.projection.ReadModel` is the declarative kind every service uses.
    """

    name: str
    #: Event types it needs; None means all.
    types: Sequence[str] | None = None

    @abc.abstractmethod
    async def apply(
        self, conn: asyncpg.Connection, events: list[RecordedEvent], schema: str
    ) -> None:
        """Apply a batch of events (of ``schema``'s store) inside the checkpoint's transaction."""


class Projector(Tailer):
    """Runs a projection with its checkpoint in the same transaction as its effect."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        *,
        checkpoint_interval: float = 1.0,
        **kw: object,
    ) -> None:
        super().__init__(store, projection.name, types=projection.types, **kw)  # type: ignore[arg-type]
        self.projection = projection
        #: Longest a checkpoint stays behind batches with nothing to project.
        self.checkpoint_interval = checkpoint_interval
        #: The checkpoint as stored (``position`` may be ahead of it: see the module).
        self.stored = Position.start()
        self._store_due = 0.0

    async def _reload(self) -> Position:
        self.stored = await super()._reload()
        return self.stored

    async def process_batch(self, events: list[RecordedEvent]) -> bool:
        wanted = [e for e in events if self.wants(e)]
        if not wanted and time.monotonic() < self._store_due:
            return True  # nothing to project: stored with the next batch, or when due
        return await self._commit(wanted, events[-1].cursor)

    async def store_position(self) -> None:
        """Store the position reached by batches with nothing to project, once due."""
        due = self.position > self.stored and time.monotonic() >= self._store_due
        if due and not await self._commit([], self.position):
            await self._advanced(await self._reload())

    async def _commit(self, wanted: list[RecordedEvent], to: Position) -> bool:
        """Apply ``wanted`` and move the checkpoint to ``to`` in one transaction; False if
        someone else moved it (another runner, a rebuild's swap)."""
        async with self.store.session() as conn, conn.transaction():
            if not await self.store.advance_checkpoint(conn, self.name, self.stored, to):
                return False
            if wanted:
                await self.projection.apply(conn, wanted, self.store.schema)
        self.stored = to
        self._store_due = time.monotonic() + self.checkpoint_interval
        return True


async def _sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
