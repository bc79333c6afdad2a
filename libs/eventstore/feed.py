"""One watcher of a store's global feed per process, instead of one polling loop per tailer.

Tailers (projections, the relay) wake at once on appends made in their own process. For
appends made elsewhere (another replica), and for events that become readable only when an
older transaction ends, the watcher asks PostgreSQL for the feed's head every
``interval`` seconds (one indexed query) and wakes every tailer of the store when it moved.
Tailers keep a slow poll of their own only as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib

from libs.eventstore.store import EventStore, Position


class FeedWatcher:
    def __init__(self, store: EventStore, interval: float = 0.05) -> None:
        self.store = store
        self.interval = interval
        self.head = Position.start()
        self.polls = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            head = await self.store.head()
            self.polls += 1
            if head != self.head:
                self.head = head
                self.store.notify_appended()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
