"""One watcher of a store's global feed per process, instead of one polling loop per tailer.

Tailers (projections, the relay) wake at once on appends made in their own process. For
appends made elsewhere (another replica or service process), and for events that become
readable only when an older transaction ends, the watcher asks PostgreSQL every
``interval`` seconds, in one query of two index probes, for the feed's head and for the
last committed position, and wakes every tailer of the store when either moved.

The second is what makes appends made elsewhere wake tailers at the first poll after their
commit. The head alone stands still while any older transaction runs (a tailer's own batch,
a transaction in another database of the server): a poll that fell in such a moment saw no
change, and the wake-up waited for a later poll. A tailer woken for events it cannot read
yet reads nothing; the head moves when the older transaction ends, and that wakes it again.

Tailers keep a slow poll of their own only as a fallback. LISTEN/NOTIFY is not used: see
docs/adr/0020-event-store-speed.md.
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
        #: The last committed position seen (readable or not yet).
        self.latest = 0
        self.polls = 0
        #: Polls that woke the tailers.
        self.wakes = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            head, latest = await self.store.marks()
            self.polls += 1
            if head != self.head or latest != self.latest:
                self.head, self.latest = head, latest
                self.wakes += 1
                self.store.notify_appended()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
