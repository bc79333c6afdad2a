"""``Idempotency-Key`` on POST: the same key and body give the same answer, once executed.

Records live in Redis for ``idempotency_ttl_seconds``: first an in-progress marker (a
concurrent repeat gets 409 ``idempotency_in_progress``), then the status and body. A repeat
with a different body gets 422 ``idempotency_key_reused``. Answers that may change on retry
(5xx, retryable errors) are not kept, so the client can simply retry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from contracts.errors import IdempotencyInProgress, IdempotencyKeyReused

_IN_PROGRESS_TTL_S = 60


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


def request_hash(operation: str, path: str, body: bytes) -> str:
    return hashlib.sha256(operation.encode() + b"\0" + path.encode() + b"\0" + body).hexdigest()


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds

    def _key(self, principal: str, key: str) -> str:
        return f"{self.prefix}:idem:{principal}:{key}"

    async def begin(self, principal: str, key: str, req_hash: str) -> StoredResponse | None:
        """Claim the key; return the stored answer if this request already ran."""
        rkey = self._key(principal, key)
        marker = orjson.dumps({"state": "in_progress", "hash": req_hash})
        if await self.redis.set(rkey, marker, nx=True, ex=_IN_PROGRESS_TTL_S):
            return None
        raw = await self.redis.get(rkey)
        if raw is None:  # expired between the two calls: claim again
            return await self.begin(principal, key, req_hash)
        rec = orjson.loads(raw)
        if rec["hash"] != req_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request; use a new key",
            )
        if rec["state"] == "in_progress":
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still running; retry shortly",
            )
        return StoredResponse(rec["status"], rec["body"].encode())

    async def finish(self, principal: str, key: str, req_hash: str, resp: StoredResponse) -> None:
        rec = {"state": "done", "hash": req_hash, "status": resp.status, "body": resp.body.decode()}
        await self.redis.set(self._key(principal, key), orjson.dumps(rec), ex=self.ttl)

    async def abandon(self, principal: str, key: str) -> None:
        await self.redis.delete(self._key(principal, key))
