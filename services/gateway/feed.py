"""The live feed (``GET /v1/events/stream``): each user's feed items as Server-Sent Events.

Every gateway process follows ``notifier.feed`` (``NotificationsQuery.feed_since``): one
query every ``sse_poll_seconds`` takes the items of every user committed since the last, in
the order the notifier's projector committed them, and hands each to the connections of its
user held by this process. So an item reaches whichever process holds the connection
within the poll interval of being projected, with no fan-out between processes.

A connection first sends what its user's feed holds after its cursor (``Last-Event-ID``,
the ``seq`` of the last item it got), from the table, then the items the follower hands it.
``seq`` is 1, 2, 3, ... per user with no gaps: an item that does not follow the last one
sent (the follower started later, or a connection's backlog was dropped) makes the
connection read the table from its cursor again, so nothing is lost or sent twice.

Connections per user are counted in Redis across processes (:class:`ConnectionLimiter`): a
sorted set of connection ids scored by when their lease ends, renewed with each heartbeat,
so a process that dies frees its connections' places within ``3 x sse_heartbeat_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import asyncpg
import orjson
import redis.asyncio as aioredis
from sse_starlette.event import ServerSentEvent

from contracts.notifications import FEED_PAGE
from libs.leader import sleep_or_stop
from libs.readmodels.notifications import FeedRow, NotificationsQuery

#: Items waiting for one slow connection before it drops them and reads the table instead.
MAX_WAITING = 1000

_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""

_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZADD', KEYS[1], 'XX', t + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return 1
"""


class ConnectionLimiter:
    """At most ``limit`` live feed connections per user, across every gateway process."""

    def __init__(self, redis: aioredis.Redis, prefix: str, limit: int, lease: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limit = limit
        self.lease = lease
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}:sse:{user_id}"

    async def acquire(self, user_id: str) -> str | None:
        """A connection id, or None when the user holds ``limit`` already."""
        conn_id = uuid.uuid4().hex
        won = await self._acquire(keys=[self._key(user_id)], args=[self.limit, self.lease, conn_id])
        return conn_id if int(won) == 1 else None

    async def renew(self, user_id: str, conn_id: str) -> None:
        await self._renew(keys=[self._key(user_id)], args=[self.lease, conn_id])

    async def release(self, user_id: str, conn_id: str) -> None:
        await self.redis.zrem(self._key(user_id), conn_id)


@dataclass(eq=False)
class Subscriber:
    """One connection's inbox of items from the follower."""

    user_id: str
    waiting: list[FeedRow] = field(default_factory=list)
    #: Items were dropped (too many waiting): read the table from the cursor.
    dropped: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, row: FeedRow) -> None:
        if len(self.waiting) >= MAX_WAITING:
            self.waiting.clear()
            self.dropped = True
        else:
            self.waiting.append(row)
        self.wake.set()

    def take(self) -> tuple[list[FeedRow], bool]:
        rows, dropped = self.waiting, self.dropped
        self.waiting, self.dropped = [], False
        self.wake.clear()
        return rows, dropped


class FeedHub:
    """This process's follower of ``notifier.feed`` and its connections."""

    def __init__(self, query: NotificationsQuery, poll_seconds: float) -> None:
        self.query = query
        self.poll_seconds = poll_seconds
        self.subscribers: dict[str, set[Subscriber]] = {}
        #: Set when the gateway stops: every stream ends.
        self.closing = asyncio.Event()
        self.polls = 0

    def subscribe(self, user_id: str) -> Subscriber:
        sub = Subscriber(user_id)
        self.subscribers.setdefault(user_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.subscribers.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.user_id]

    def close(self) -> None:
        self.closing.set()
        for subs in self.subscribers.values():
            for sub in subs:
                sub.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Background task: hand every new feed item to its user's connections here."""
        while True:  # the notifier may not have made its tables yet
            try:
                cursor = await self.query.feed_end()
                break
            except asyncpg.UndefinedTableError:
                if await sleep_or_stop(stopping, 1.0):
                    return
        while not stopping.is_set():
            rows = await self.query.feed_since(*cursor, FEED_PAGE)
            self.polls += 1
            for row in rows:
                for sub in self.subscribers.get(row.user_id, ()):
                    sub.put(row)
            if rows:
                cursor = (rows[-1].tx_id, rows[-1].position)
            if len(rows) < FEED_PAGE:
                await sleep_or_stop(stopping, self.poll_seconds)


def feed_event(row: FeedRow) -> ServerSentEvent:
    body = {"seq": row.seq, "type": row.item_type, "at": row.at.isoformat(), "data": row.data}
    return ServerSentEvent(orjson.dumps(body).decode(), event=row.item_type, id=str(row.seq))


async def stream(
    hub: FeedHub,
    limiter: ConnectionLimiter,
    user_id: str,
    conn_id: str,
    after: int,
    heartbeat_seconds: float,
) -> AsyncIterator[ServerSentEvent]:
    """The user's feed items after ``after``, then each new one, with a comment line every
    ``heartbeat_seconds`` of quiet; frees the connection's place when it ends."""
    sub = hub.subscribe(user_id)
    last = after
    loop = asyncio.get_running_loop()
    renewed = loop.time()

    async def from_table() -> AsyncIterator[ServerSentEvent]:
        nonlocal last
        while True:
            rows = await hub.query.feed_after(user_id, last, FEED_PAGE)
            for row in rows:
                last = row.seq
                yield feed_event(row)
            if len(rows) < FEED_PAGE:
                return

    try:
        async for event in from_table():
            yield event
        while not hub.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), heartbeat_seconds)
            if hub.closing.is_set():
                return
            rows, dropped = sub.take()
            if not rows and not dropped:
                yield ServerSentEvent(comment="heartbeat")
            gap = dropped
            for row in rows:
                if row.seq <= last:
                    continue  # sent from the table already
                if row.seq != last + 1:
                    gap = True
                    break
                last = row.seq
                yield feed_event(row)
            if gap:
                async for event in from_table():
                    yield event
            if loop.time() - renewed >= heartbeat_seconds:
                await limiter.renew(user_id, conn_id)
                renewed = loop.time()
    finally:
        hub.unsubscribe(sub)
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await limiter.release(user_id, conn_id)
