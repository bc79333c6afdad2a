"""The action log: an ``ApiCallRecorded`` event for every API call, written in batches.

Calls are queued in memory and appended every ``flush_interval`` seconds (or sooner when
``batch_size`` are waiting), each as its own stream ``apicall-<request id>``. A graceful stop
flushes everything; a crash can lose the last interval's records (at most 50 ms by default).
"""

from __future__ import annotations

import asyncio
import contextlib

from contracts.gateway import ApiCallRecorded
from libs.eventstore.store import ConcurrencyError, EventStore, NewEvent, StreamWrite
from libs.logging import get_logger

log = get_logger(__name__)


class ActionLog:
    def __init__(
        self, store: EventStore, flush_interval: float = 0.05, batch_size: int = 500
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._pending: list[tuple[ApiCallRecorded, dict[str, str]]] = []
        self._full = asyncio.Event()
        # One flush at a time: a flush that returns has seen every earlier record stored,
        # even one a concurrent flush had already taken.
        self._flushing = asyncio.Lock()
        self.written = 0

    def record(self, call: ApiCallRecorded, metadata: dict[str, str]) -> None:
        self._pending.append((call, metadata))
        if len(self._pending) >= self.batch_size:
            self._full.set()

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self.batch_size],
                self._pending[self.batch_size :],
            )
            writes = [
                StreamWrite(f"apicall-{call.request_id}", 0, [NewEvent(call, metadata=meta)])
                for call, meta in batch
            ]
            try:
                await self.store.append_streams(writes)
                self.written += len(batch)
            except ConcurrencyError:
                await self._one_by_one(writes)
            except Exception as e:  # keep serving; the records are retried on the next flush
                log.error("action_log_flush_failed", error=repr(e), pending=len(batch))
                self._pending[:0] = batch
                return

    async def _one_by_one(self, writes: list[StreamWrite]) -> None:
        """A record already stored (a retried flush) must not hold back the others."""
        for write in writes:
            try:
                await self.store.append_streams([write])
                self.written += 1
            except ConcurrencyError:
                log.warning("action_log_duplicate", stream_id=write.stream_id)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_interval)
            self._full.clear()
            await self.flush()
        await self.flush()
