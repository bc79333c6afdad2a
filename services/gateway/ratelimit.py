"""Token-bucket rate limits in Redis, checked for several buckets in one round trip."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS: bucket keys. ARGV: per key, rate (tokens/s) and burst. Time comes from Redis so
# every gateway replica agrees. Nothing is taken unless every bucket has a token.
# Returns 0 when allowed, else the milliseconds until a retry can succeed.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 'ts', 'tokens')
  local ts = tonumber(b[1]) or now
  local tokens = tonumber(b[2]) or burst
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  levels[i] = tokens
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) * 1000 / rate))
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'ts', now, 'tokens', levels[i] - 1)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    per_second: float
    burst: int


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._script = redis.register_script(_LUA)

    async def retry_after_ms(self, buckets: list[Bucket]) -> int:
        """0 if the request may go ahead (and a token is taken from each bucket)."""
        keys = [f"{self.prefix}:rl:{b.key}" for b in buckets]
        args: list[float] = []
        for b in buckets:
            args += [b.per_second, b.burst]
        return int(await self._script(keys=keys, args=args))
