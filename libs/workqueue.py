"""A Redis work queue with priorities, a visibility timeout, bounded retries and dead letters.

The scene workers (scene check, repathing, render settings) take their work from here
(ADR 0013). Delivery is at least once: a handler must be idempotent, because an item whose
holder stops heartbeating is given to another worker, and the first may still finish.

Keys, for ``WorkQueue(redis, name, prefix=p)`` (every script runs on one Redis node; on Redis
Cluster the keys would need a hash tag):

* ``p:name:<priority>``: one stream per priority, read by the consumer group ``workers``.
  An entry is ``item`` (its id) and ``payload`` (JSON). It is deleted when acked or dead.
* ``p:name:<priority>:dead``: the dead letters of that priority: ``item``, ``payload``,
  ``error``, ``deliveries`` and ``consumer`` (the last holder).
* ``p:name:errors``: a hash, item id -> why its last delivery ended, while it is queued.
* ``p:name:item:<item id>``: the de-duplication key, value = the item's priority. It has no
  expiry while the item is anywhere in the queue (waiting, held, waiting for a retry, dead)
  and expires ``dedupe_ttl_seconds`` (7 days) after the item finished (acked, or a dead
  letter discarded). Until then enqueueing the same id again does nothing: to run finished
  work again, queue it under a new id (e.g. with an attempt number in it).

An item's life: ``enqueue`` adds it; ``take`` gives it to a consumer (delivery 1), which
``heartbeat``s it at least once per visibility timeout while it works and finally ``ack``s
it. ``release`` ends a failed attempt: the item is taken again after a back-off.
``dead_letter`` ends it for good. An item whose holder neither acks nor heartbeats within the
visibility timeout is taken again by the next ``take`` (delivery 2, ...). An item that has
been delivered ``max_deliveries`` times is not delivered again: it goes to the dead letters
with its last error, where an operator retries (``retry_dead_letter``) or discards it.

Requires Redis >= 6.2 (``XPENDING ... IDLE``, exclusive ranges); tested on Valkey 9.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from contracts.errors.base import DomainError
from libs.logging import get_logger

log = get_logger(__name__)

#: The consumer group every worker of a queue reads through.
GROUP = "workers"
#: The pseudo consumer that holds released items until their back-off has passed.
RETRY_CONSUMER = "~retry"
#: An idle ``take`` looks for reclaimable items at least this often.
RECLAIM_POLL_MAX_SECONDS = 1.0
#: Errors are stored up to this many characters.
MAX_ERROR_CHARS = 2000
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_RESERVED = frozenset({"errors", "item", "dead"})

# Lua helpers shared by the scripts. ``held`` is the check every call on a taken item makes:
# the entry is still pending, held by this consumer, at this delivery count.
_PRELUDE = """
local function fields(flat)
  local f = {}
  for j = 1, #flat, 2 do f[flat[j]] = flat[j + 1] end
  return f
end
local function held(stream, group, id, consumer, delivery)
  local ok, p = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  return ok and #p == 1 and p[1][2] == consumer and p[1][4] == tonumber(delivery)
end
local function bury(stream, dead, errors, group, id, item, err, deliveries, holder)
  local e = redis.call('XRANGE', stream, id, id)[1]
  local payload = '{}'
  if e then payload = fields(e[2]).payload end
  redis.call('XADD', dead, '*', 'item', item, 'payload', payload, 'error', err,
             'deliveries', deliveries, 'consumer', holder)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('HDEL', errors, item)
end
"""

# KEYS: stream, item key. ARGV: item id, payload, priority. Returns the entry id, or nil if
# the id is known already.
_ENQUEUE = """
if not redis.call('SET', KEYS[2], ARGV[3], 'NX') then return false end
return redis.call('XADD', KEYS[1], '*', 'item', ARGV[1], 'payload', ARGV[2])
"""

# KEYS: stream_1, dead_1, ..., stream_n, dead_n (highest priority first), errors.
# ARGV: group, consumer, visibility ms, max deliveries, retry consumer.
# Per priority: first an entry idle for the visibility timeout (reclaimed, or buried if it
# has had all its deliveries), then a new one. Returns {priority index, entry id, item id,
# payload, delivery, last error or ''}, or {0, last id of each stream} when nothing is due.
_TAKE = (
    _PRELUDE
    + """
local group, consumer, vt, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = (#KEYS - 1) / 2
local errors = KEYS[#KEYS]
for i = 1, n do
  local stream, dead = KEYS[2 * i - 1], KEYS[2 * i]
  while true do
    local p = redis.call('XPENDING', stream, group, 'IDLE', vt, '-', '+', 1)
    if #p == 0 then break end
    local id, holder, deliveries = p[1][1], p[1][2], p[1][4]
    local entry = redis.call('XCLAIM', stream, group, consumer, vt, id)[1]
    if entry then
      local f = fields(entry[2])
      local err
      if holder == ARGV[5] then
        err = redis.call('HGET', errors, f.item) or 'released'
      else
        err = 'delivery ' .. deliveries .. ' to ' .. holder
          .. ' was neither acked nor heartbeated within the visibility timeout'
      end
      if deliveries >= max then
        bury(stream, dead, errors, group, id, f.item, err, deliveries, holder)
      else
        redis.call('HSET', errors, f.item, err)
        return {i, id, f.item, f.payload, deliveries + 1, err}
      end
    else
      redis.call('XACK', stream, group, id)
    end
  end
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
  if r then
    local entry = r[1][2][1]
    local f = fields(entry[2])
    return {i, entry[1], f.item, f.payload, 1, redis.call('HGET', errors, f.item) or ''}
  end
end
local last = {0}
for i = 1, n do
  local info = redis.call('XINFO', 'STREAM', KEYS[2 * i - 1])
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' then last[#last + 1] = info[j + 1] end
  end
end
return last
"""
)

# KEYS: stream. ARGV: group, consumer, entry id, delivery. Resets the entry's idle time.
_HEARTBEAT = (
    _PRELUDE
    + """
if not held(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
)

# KEYS: stream, errors, item key. ARGV: group, consumer, entry id, delivery, item id, ttl.
_ACK = (
    _PRELUDE
    + """
if not held(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 1
"""
)

# KEYS: stream, dead, errors. ARGV: group, consumer, entry id, delivery, item id, error,
# idle ms to set, max deliveries (0: bury now), retry consumer.
# Returns 'lost', 'dead' or 'retry'.
_RELEASE = (
    _PRELUDE
    + """
if not held(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return 'lost' end
if tonumber(ARGV[4]) >= tonumber(ARGV[8]) then
  bury(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[5], ARGV[6], ARGV[4], ARGV[2])
  return 'dead'
end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[9], 0, ARGV[3], 'IDLE', ARGV[7], 'JUSTID')
return 'retry'
"""
)

# KEYS: dead, stream, item key. ARGV: item id, 'retry' or 'discard', ttl.
# Finds the item's dead letter; 'retry' queues it again as a new entry, 'discard' drops it
# and lets the item key expire. Returns 1, or 0 if there is no such dead letter.
_RESURRECT = (
    _PRELUDE
    + """
local start = '-'
while true do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  if #batch == 0 then return 0 end
  for _, e in ipairs(batch) do
    local f = fields(e[2])
    if f.item == ARGV[1] then
      redis.call('XDEL', KEYS[1], e[1])
      if ARGV[2] == 'retry' then
        redis.call('XADD', KEYS[2], '*', 'item', f.item, 'payload', f.payload)
      else
        redis.call('EXPIRE', KEYS[3], ARGV[3])
      end
      return 1
    end
  end
  start = '(' .. batch[#batch][1]
end
"""
)


class ItemLost(Exception):
    """The caller no longer holds the item: it was taken again after the visibility timeout
    (another worker has it now), or it was acked, released or dead-lettered already."""


class PermanentFailure(Exception):
    """Raised by a handler for work that can never succeed: dead-letter the item now."""


class Released(StrEnum):
    """What :meth:`WorkQueue.release` did with a failed item."""

    WILL_RETRY = "will_retry"
    DEAD_LETTERED = "dead_lettered"  # it had had its last delivery


@dataclass(frozen=True, slots=True)
class Item:
    """One delivery of a queued item to one consumer."""

    item_id: str
    priority: str
    payload: dict[str, Any]
    #: 1 on the first delivery; the attempt number.
    delivery: int
    #: Why the previous delivery ended (a released error or a timeout), None on the first.
    last_error: str | None
    consumer: str
    #: The stream entry id; its time part is when the item was queued.
    entry_id: str

    @property
    def enqueued_at(self) -> datetime:
        return datetime.fromtimestamp(int(self.entry_id.split("-")[0]) / 1000, UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    item_id: str
    priority: str
    payload: dict[str, Any]
    error: str
    #: How many times it was delivered.
    deliveries: int
    #: Its holder at the last delivery.
    consumer: str
    dead_at: datetime


@dataclass(frozen=True, slots=True)
class Depth:
    """One priority's figures."""

    #: Queued, never delivered yet.
    waiting: int
    #: Held by a consumer (including holders that died and whose timeout has not passed).
    in_flight: int
    #: Released after a failed attempt, waiting for their back-off to pass.
    retrying: int
    dead: int


class WorkQueue:
    """A prioritised work queue on Redis Streams; see the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        *,
        prefix: str,
        priorities: Sequence[str] = ("test", "full"),
        visibility_timeout_seconds: float = 30.0,
        max_deliveries: int = 5,
        retry_delay_seconds: float = 1.0,
        dedupe_ttl_seconds: int = 7 * 24 * 3600,
    ) -> None:
        """``priorities``: highest first. A released item is retried after
        ``retry_delay_seconds`` doubled per delivery, at most the visibility timeout."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"queue name {name!r} must match {_NAME.pattern}")
        if not priorities or len(set(priorities)) != len(priorities):
            raise ValueError("priorities must be a non-empty sequence of distinct names")
        for p in priorities:
            if not _NAME.fullmatch(p) or p in _RESERVED:
                raise ValueError(f"priority {p!r} must match {_NAME.pattern}, not {_RESERVED}")
        if visibility_timeout_seconds <= 0 or max_deliveries < 1 or retry_delay_seconds < 0:
            raise ValueError(
                "need visibility_timeout_seconds > 0, max_deliveries >= 1, retry_delay_seconds >= 0"
            )
        self.redis = redis
        self.name = name
        self.priorities = tuple(priorities)
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.max_deliveries = max_deliveries
        self.retry_delay_seconds = retry_delay_seconds
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self._base = f"{prefix}:{name}"
        self._vt_ms = max(1, round(visibility_timeout_seconds * 1000))
        self._poll_s = max(0.05, min(RECLAIM_POLL_MAX_SECONDS, visibility_timeout_seconds / 4))
        self._ready = False
        self._enqueue = redis.register_script(_ENQUEUE)
        self._take = redis.register_script(_TAKE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._ack = redis.register_script(_ACK)
        self._release = redis.register_script(_RELEASE)
        self._resurrect = redis.register_script(_RESURRECT)

    # -- keys -------------------------------------------------------------------------------

    def stream_key(self, priority: str) -> str:
        return f"{self._base}:{self._priority(priority)}"

    def dead_key(self, priority: str) -> str:
        return f"{self._base}:{self._priority(priority)}:dead"

    def _item_key(self, item_id: str) -> str:
        return f"{self._base}:item:{item_id}"

    @property
    def _errors_key(self) -> str:
        return f"{self._base}:errors"

    def _priority(self, priority: str) -> str:
        if priority not in self.priorities:
            raise ValueError(f"unknown priority {priority!r}; this queue has {self.priorities}")
        return priority

    # -- producers --------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the streams and the consumer group (idempotent; done on first use)."""
        for p in self.priorities:
            try:
                await self.redis.xgroup_create(self.stream_key(p), GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):  # BUSYGROUP: it exists already
                    raise
        self._ready = True

    async def enqueue(self, item_id: str, payload: dict[str, Any], priority: str) -> bool:
        """Queue an item; False (and nothing changes) if its id is known already: it is in
        the queue (in any state, dead included) or finished within ``dedupe_ttl_seconds``."""
        if not item_id or len(item_id) > 256:
            raise ValueError("item_id must be 1 to 256 characters")
        keys = [self.stream_key(priority), self._item_key(item_id)]
        entry = await self._enqueue(keys=keys, args=[item_id, orjson.dumps(payload), priority])
        return entry is not None

    # -- consumers --------------------------------------------------------------------------

    async def take(self, consumer: str, block_ms: int = 0) -> Item | None:
        """The next item for ``consumer`` (a name unique to one worker), waiting up to
        ``block_ms`` for one; None if there is none.

        Priorities are served strictly in order: within a priority, an item whose holder has
        not acked or heartbeated within the visibility timeout (or whose retry back-off has
        passed) comes before new ones. An item that has had ``max_deliveries`` deliveries is
        dead-lettered here instead of being delivered again.
        """
        if not consumer or consumer == RETRY_CONSUMER:
            raise ValueError(f"consumer must be a non-empty name other than {RETRY_CONSUMER!r}")
        if not self._ready:
            await self.setup()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            reply = await self._take_once(consumer)
            if reply[0] != 0:
                return self._item(reply, consumer)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            # Wake on a new entry in any stream, or look for reclaimable items again soon.
            wait_ms = max(1, round(min(remaining, self._poll_s) * 1000))
            streams = {
                self.stream_key(p): _s(i) for p, i in zip(self.priorities, reply[1:], strict=True)
            }
            await self.redis.xread(streams, block=wait_ms)  # type: ignore[arg-type]

    async def _take_once(self, consumer: str) -> list[Any]:
        keys = [k for p in self.priorities for k in (self.stream_key(p), self.dead_key(p))]
        keys.append(self._errors_key)
        args: list[str | int] = [GROUP, consumer, self._vt_ms, self.max_deliveries, RETRY_CONSUMER]
        try:
            reply: list[Any] = await self._take(keys=keys, args=args)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.setup()  # the group is gone (e.g. Redis lost its data): make it again
            reply = await self._take(keys=keys, args=args)
        return reply

    def _item(self, reply: list[Any], consumer: str) -> Item:
        index, entry_id, item_id, payload, delivery, last_error = reply
        return Item(
            item_id=_s(item_id),
            priority=self.priorities[int(index) - 1],
            payload=orjson.loads(payload),
            delivery=int(delivery),
            last_error=_s(last_error) or None,
            consumer=consumer,
            entry_id=_s(entry_id),
        )

    def _held_args(self, item: Item) -> list[Any]:
        return [GROUP, item.consumer, item.entry_id, item.delivery]

    async def heartbeat(self, item: Item) -> None:
        """Restart the item's visibility timeout; :class:`ItemLost` if it is not held."""
        if not await self._heartbeat(
            keys=[self.stream_key(item.priority)], args=self._held_args(item)
        ):
            raise ItemLost(f"{item.item_id} (delivery {item.delivery}) is no longer held")

    async def ack(self, item: Item) -> None:
        """The item is done: remove it; its id is remembered for ``dedupe_ttl_seconds``.
        :class:`ItemLost` (nothing changes) if the caller no longer holds it."""
        keys = [self.stream_key(item.priority), self._errors_key, self._item_key(item.item_id)]
        args = [*self._held_args(item), item.item_id, self.dedupe_ttl_seconds]
        if not await self._ack(keys=keys, args=args):
            raise ItemLost(f"{item.item_id} (delivery {item.delivery}) is no longer held")

    async def release(
        self, item: Item, error: str, *, delay_seconds: float | None = None
    ) -> Released:
        """A failed attempt: the item is taken again after ``delay_seconds`` (default the
        queue's back-off; at most the visibility timeout), or dead-lettered with ``error`` if
        this was its last delivery. :class:`ItemLost` if the caller no longer holds it."""
        if delay_seconds is None:
            delay_seconds = self.retry_delay_seconds * 2 ** (item.delivery - 1)
        delay_ms = min(self._vt_ms, max(0, round(delay_seconds * 1000)))
        return await self._end(item, error, self._vt_ms - delay_ms, self.max_deliveries)

    async def dead_letter(self, item: Item, error: str) -> None:
        """A permanent failure: move the item to the dead letters with ``error`` now.
        :class:`ItemLost` if the caller no longer holds it."""
        await self._end(item, error, 0, 0)

    async def _end(self, item: Item, error: str, idle_ms: int, max_deliveries: int) -> Released:
        p = item.priority
        keys = [self.stream_key(p), self.dead_key(p), self._errors_key]
        args = [*self._held_args(item), item.item_id, error[:MAX_ERROR_CHARS]]
        args += [idle_ms, max_deliveries, RETRY_CONSUMER]
        outcome = _s(await self._release(keys=keys, args=args))
        if outcome == "lost":
            raise ItemLost(f"{item.item_id} (delivery {item.delivery}) is no longer held")
        return Released.DEAD_LETTERED if outcome == "dead" else Released.WILL_RETRY

    # -- operators --------------------------------------------------------------------------

    async def depth(self) -> dict[str, Depth]:
        """Each priority's waiting, in-flight, retrying and dead items, highest first."""
        if not self._ready:
            await self.setup()
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in self.priorities:
                pipe.xlen(self.stream_key(p))
                pipe.xpending(self.stream_key(p), GROUP)
                pipe.xlen(self.dead_key(p))
            replies = await pipe.execute()
        out: dict[str, Depth] = {}
        for i, p in enumerate(self.priorities):
            length, pending, dead = replies[3 * i : 3 * i + 3]
            retrying = sum(
                c["pending"] for c in pending["consumers"] if _s(c["name"]) == RETRY_CONSUMER
            )
            out[p] = Depth(
                waiting=length - pending["pending"],
                in_flight=pending["pending"] - retrying,
                retrying=retrying,
                dead=dead,
            )
        return out

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of every priority, oldest first."""
        found: list[tuple[tuple[int, int], DeadLetter]] = []
        for p in self.priorities:
            for entry_id, f in await self.redis.xrange(self.dead_key(p), count=limit) or []:
                eid = _s(entry_id)
                ms, seq = (int(x) for x in eid.split("-"))
                fields = {_s(k): v for k, v in (f or {}).items()}
                letter = DeadLetter(
                    item_id=_s(fields["item"]),
                    priority=p,
                    payload=orjson.loads(fields["payload"]),
                    error=_s(fields["error"]),
                    deliveries=int(fields["deliveries"]),
                    consumer=_s(fields["consumer"]),
                    dead_at=datetime.fromtimestamp(ms / 1000, UTC),
                )
                found.append(((ms, seq), letter))
        return [letter for _, letter in sorted(found, key=lambda x: x[0])[:limit]]

    async def retry_dead_letter(self, item_id: str) -> bool:
        """Queue a dead item again, in its priority, as a new item (delivery 1 again).
        False if there is no dead letter for ``item_id``."""
        return await self._from_dead(item_id, "retry")

    async def discard_dead_letter(self, item_id: str) -> bool:
        """Drop a dead item; its id is then remembered for ``dedupe_ttl_seconds`` like a
        finished one. False if there is no dead letter for ``item_id``."""
        return await self._from_dead(item_id, "discard")

    async def _from_dead(self, item_id: str, mode: str) -> bool:
        priority = await self.redis.get(self._item_key(item_id))
        if priority is None or _s(priority) not in self.priorities:
            return False
        p = _s(priority)
        keys = [self.dead_key(p), self.stream_key(p), self._item_key(item_id)]
        return bool(await self._resurrect(keys=keys, args=[item_id, mode, self.dedupe_ttl_seconds]))


Handler = Callable[[Item], Coroutine[Any, Any, None]]


def is_permanent(error: BaseException) -> bool:
    """Whether a handler's error ends the item at once: a :class:`PermanentFailure`, or a
    :class:`DomainError` that is not retryable. Anything else is retried."""
    return isinstance(error, PermanentFailure) or (
        isinstance(error, DomainError) and not error.retryable
    )


def describe(error: BaseException) -> str:
    """The error as stored with the item."""
    if isinstance(error, DomainError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class Worker:
    """Takes items from a queue one at a time and runs ``handler`` on each.

    While the handler runs, the item is heartbeated every third of the visibility timeout.
    A handler that returns acks the item; one that raises releases it for a retry with
    back-off, or dead-letters it if :func:`is_permanent`. A lost item (the handler took so
    long without a heartbeat that another worker has it) cancels the handler.

    ``run(stopping)`` is a kit background task (``rt.background(name, worker.run)``). When
    ``stopping`` is set it takes no more items; a handler still running is cancelled and its
    item released at once, so another worker takes it without waiting for the timeout. If
    the task is cancelled instead, the item stays held and is taken again after the
    visibility timeout. Redis failures outside heartbeats propagate, so the supervisor
    restarts the loop; the held item is then taken again after the timeout.
    """

    def __init__(
        self, queue: WorkQueue, consumer: str, handler: Handler, *, block_ms: int = 1000
    ) -> None:
        self.queue = queue
        self.consumer = consumer
        self.handler = handler
        self.block_ms = block_ms

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            item = await self.queue.take(self.consumer, self.block_ms)
            if item is not None:
                await self._handle(item, stopping)

    async def _handle(self, item: Item, stopping: asyncio.Event) -> None:
        work = asyncio.create_task(self.handler(item), name=f"work:{item.item_id}")
        stop = asyncio.create_task(stopping.wait())
        every = self.queue.visibility_timeout_seconds / 3
        try:
            while not work.done():
                await asyncio.wait({work, stop}, timeout=every, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    break
                if stop.done():
                    await _cancel(work)
                    await self._finish(self.queue.release(item, "worker stopped", delay_seconds=0))
                    return
                try:
                    await self.queue.heartbeat(item)
                except ItemLost:
                    log.warning("work_item_lost", item=item.item_id, delivery=item.delivery)
                    await _cancel(work)
                    return
                except RedisError as e:  # passing: the next heartbeat may get through
                    log.warning("work_heartbeat_failed", item=item.item_id, error=repr(e))
        except asyncio.CancelledError:
            await _cancel(work)  # the item stays held: it is taken again after the timeout
            raise
        finally:
            stop.cancel()
        if work.cancelled():  # by the handler itself: a failed attempt like any other
            error: BaseException | None = RuntimeError("the handler was cancelled")
        else:
            error = work.exception()
        if error is None:
            await self._finish(self.queue.ack(item))
            return
        if not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, SystemExit
        text = describe(error)
        if is_permanent(error):
            log.error("work_item_dead", item=item.item_id, delivery=item.delivery, error=text)
            await self._finish(self.queue.dead_letter(item, text))
        else:
            log.warning("work_item_failed", item=item.item_id, delivery=item.delivery, error=text)
            await self._finish(self.queue.release(item, text))

    async def _finish(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except ItemLost as e:
            log.warning("work_item_lost", error=str(e))


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; a cancellation of the caller meanwhile
    is not swallowed."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: it ended with an error while being cancelled


def _s(value: Any) -> str:
    """A reply value as text (the client may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)
