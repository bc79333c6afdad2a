"""Token-bucket rate limits: a shared bucket per key in Redis, spent in process from leases.

Each gateway process keeps a local allowance per bucket key. When a request finds a bucket's
allowance empty, the process leases a block of up to ``lease_tokens`` tokens from the shared
Redis bucket (one Lua round trip for all of a request's empty buckets; time comes from
Redis, so every process agrees), and spends them locally. A lease unspent after
``lease_seconds`` is dropped, never returned.

A lease covers the requests of the process already waiting for that key, plus the block,
so a hot key costs one round trip per block, not per request. Every token admitted was
taken from the shared bucket first, so across P processes the limit is exceeded only by
tokens leased before a window and spent inside it: in any window, at most
P x (lease_tokens - 1) requests beyond what the exact bucket admits (leased tokens beyond
the waiting requests are at most lease_tokens - 1 per process and key). A lease can also
leave one process refusing (429) while another holds tokens, for at most ``lease_seconds``.

A refusal is remembered locally until its ``Retry-After`` time, so a client hammering
through its limit costs no Redis call per refused request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS: bucket keys. ARGV: per key, rate (tokens/s), burst and tokens wanted. Nothing is
# taken unless every bucket has at least one token; then each gives min(wanted, whole
# tokens it has). Returns {0, granted...} or {milliseconds until a retry can succeed}.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local b = redis.call('HMGET', key, 'ts', 'tokens')
  local ts = tonumber(b[1]) or now
  local tokens = tonumber(b[2]) or burst
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  levels[i] = tokens
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) * 1000 / rate))
  end
end
if wait > 0 then return {wait} end
local out = {0}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local take = math.min(want, math.floor(levels[i]))
  out[i + 1] = take
  redis.call('HSET', key, 'ts', now, 'tokens', levels[i] - take)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return out
"""

#: Local allowances kept before expired ones are swept.
SWEEP_AT = 10_000


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    per_second: float
    burst: int


class _Allowance:
    __slots__ = ("expires", "refused_until", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.refused_until = 0.0


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        lease_tokens: int = 10,
        lease_seconds: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self.lease_tokens = max(1, lease_tokens)
        self.lease_seconds = lease_seconds
        self._script = redis.register_script(_LUA)
        self._local: dict[str, _Allowance] = {}
        self._leasing: dict[str, asyncio.Future[None]] = {}
        #: Requests of this process waiting for a key's lease: the next lease covers them.
        self._waiting: dict[str, int] = {}
        #: Round trips to Redis (leases asked for), for tests and the bench.
        self.leases = 0

    def _allowance(self, key: str) -> _Allowance:
        a = self._local.get(key)
        if a is None:
            if len(self._local) >= SWEEP_AT:
                self._sweep()
            a = self._local[key] = _Allowance()
        return a

    def _sweep(self) -> None:
        now = time.monotonic()
        self._local = {
            k: a
            for k, a in self._local.items()
            if (a.tokens and a.expires > now) or a.refused_until > now
        }

    async def retry_after_ms(self, buckets: list[Bucket]) -> int:
        """0 if the request may go ahead (a token is spent from each bucket), else the
        milliseconds until a retry can succeed."""
        for _ in range(4):
            now = time.monotonic()
            allowances = [self._allowance(b.key) for b in buckets]
            wait = 0.0
            for a in allowances:
                if a.refused_until > now:
                    wait = max(wait, a.refused_until - now)
            if wait:
                return max(1, int(wait * 1000))
            empty = [
                (b, a)
                for b, a in zip(buckets, allowances, strict=True)
                if a.tokens < 1 or a.expires <= now
            ]
            if not empty:
                for a in allowances:
                    a.tokens -= 1
                return 0
            pending = [self._leasing[b.key] for b, _ in empty if b.key in self._leasing]
            if pending:  # another request of this process is leasing already: wait for it
                waited = [b.key for b, _ in empty]
                for key in waited:
                    self._waiting[key] = self._waiting.get(key, 0) + 1
                try:
                    await asyncio.wait(pending)
                finally:
                    for key in waited:
                        left = self._waiting.get(key, 1) - 1
                        if left > 0:
                            self._waiting[key] = left
                        else:
                            self._waiting.pop(key, None)
                continue
            wait_ms = await self._lease(empty)
            if wait_ms:
                return wait_ms
        # Leases keep being spent by concurrent requests: ask Redis for this one alone.
        return await self._lease([(b, self._allowance(b.key)) for b in buckets], spend=True)

    async def _lease(self, empty: list[tuple[Bucket, _Allowance]], spend: bool = False) -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        for b, _ in empty:
            self._leasing[b.key] = done
        try:
            keys = [f"{self.prefix}:rl:{b.key}" for b, _ in empty]
            args: list[float] = []
            for b, _ in empty:
                # A block, plus one token for each request already waiting for this key.
                want = 1 if spend else self.lease_tokens + self._waiting.get(b.key, 0)
                args += [b.per_second, b.burst, min(want, b.burst)]
            self.leases += 1
            out = await self._script(keys=keys, args=args)
            now = time.monotonic()
            if int(out[0]):
                wait_ms = int(out[0])
                for _, a in empty:
                    a.refused_until = max(a.refused_until, now + wait_ms / 1000)
                return wait_ms
            if not spend:
                for (_, a), granted in zip(empty, out[1:], strict=True):
                    a.tokens = int(granted)
                    a.expires = now + self.lease_seconds
            return 0
        finally:
            for b, _ in empty:
                if self._leasing.get(b.key) is done:
                    del self._leasing[b.key]
            done.set_result(None)
