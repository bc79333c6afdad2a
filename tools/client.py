"""A small client of the gateway's public HTTP API, for the user commands of ``renderctl``.

Every POST carries an ``Idempotency-Key`` (the caller's, or a fresh one), so a request whose
answer was lost is repeated safely. Answers the gateway marks ``retryable`` (and lost
connections) are retried with back-off; any other error is raised as :class:`ApiError`
with the error body's code.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx

#: ``make up``'s gateway.
DEFAULT_API_URL = "http://127.0.0.1:8700"


class ApiError(Exception):
    """An error answer of the API (its ``ErrorBody``), or an unreachable API (status 0)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retryable: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details = details or {}

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "code" not in body:
            text = response.text[:300]
            return cls(response.status_code, f"http_{response.status_code}", text, True)
        return cls(
            response.status_code,
            str(body["code"]),
            str(body.get("message", "")),
            bool(body.get("retryable", False)),
            body.get("details") if isinstance(body.get("details"), dict) else None,
        )


def backoff(attempt: int, first: float = 0.5, cap: float = 20.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): doubling, jittered."""
    return float(min(cap, first * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


class RateLimit:
    """At most ``per_second`` bytes a second over all parts together."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.started = time.monotonic()
        self.sent = 0

    async def take(self, n: int) -> None:
        self.sent += n
        ahead = self.sent / self.per_second - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class Api:
    """The gateway at ``base_url``, as the user whose token (a JWT or an API key) is given."""

    def __init__(
        self, base_url: str, token: str, *, attempts: int = 6, timeout: float = 60.0
    ) -> None:
        self.attempts = attempts
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """The decoded JSON answer of a 2xx; :class:`ApiError` otherwise."""
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(1, self.attempts + 1):
            after = ""
            try:
                r = await self.http.request(method, path, json=json, params=query, headers=headers)
            except httpx.TransportError as e:
                error = ApiError(0, "api_unreachable", f"{self.http.base_url}: {e!r}", True)
            else:
                if r.is_success:
                    return r.json()
                error, after = ApiError.of(r), r.headers.get("retry-after", "")
                if not error.retryable:
                    raise error
            if attempt == self.attempts:
                raise error
            await asyncio.sleep(float(after) if after.isdigit() else backoff(attempt))
        raise AssertionError("unreachable")

    async def pages(
        self, path: str, params: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every page of a cursor-paginated list, in order."""
        cursor: str | None = None
        while True:
            page = await self.call("GET", path, params={**(params or {}), "cursor": cursor})
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return
