"""A lean HTTP/1.1 keep-alive client on asyncio protocols, for load generation.

One request in flight per connection, no pipelining. Responses need ``Content-Length``
(uvicorn always sends it for these endpoints). Parsing is the minimum needed: status code,
Content-Length, body.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from bench.report import percentile


class HttpError(Exception):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection closed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            waiter.set_exception(HttpError("response without content-length"))
            return
        j = head.find(b"\r\n", i + 17)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        waiter.set_result((status, body))


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proto: _Protocol | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Protocol, self.host, self.port)
        return proto

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one complete request (bytes) and return (status, body)."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = self._proto = await self._connect()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        proto.waiter = fut
        assert proto.transport is not None
        proto.transport.write(raw)
        try:
            return await fut
        finally:
            proto.waiter = None

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def build_request(
    method: str,
    path: str,
    *,
    port: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    statuses: Counter[int]
    errors: int
    client_cpu_share: float  # this process's CPU time / wall time during the measurement
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def fixed_duration_load(
    port: int,
    raw: bytes,
    *,
    connections: int,
    warmup: float,
    duration: float,
    max_requests: int = 2_000_000,
) -> LoadResult:
    """``connections`` workers send ``raw`` back to back; only the measured window counts."""
    loop = asyncio.get_running_loop()
    conns = [Connection("127.0.0.1", port) for _ in range(connections)]
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + duration
    lats: list[list[float]] = [[] for _ in range(connections)]
    statuses: Counter[int] = Counter()
    errors = 0
    counted = 0
    cpu0: list[float] = []

    async def worker(i: int) -> None:
        nonlocal errors, counted
        conn = conns[i]
        mine = lats[i]
        perf = time.perf_counter
        while True:
            now = loop.time()
            if now >= stop_at or counted >= max_requests:
                return
            t0 = perf()
            try:
                status, _ = await conn.request(raw)
            except (HttpError, OSError):
                errors += 1
                conn.close()
                await asyncio.sleep(0.01)
                continue
            dt = perf() - t0
            if now >= measure_from:
                mine.append(dt)
                statuses[status] += 1
                counted += 1

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu0.append(time.process_time())
        cpu0.append(time.perf_counter())

    try:
        marker = asyncio.ensure_future(mark_cpu())
        await asyncio.gather(*(worker(i) for i in range(connections)))
        await marker
    finally:
        for c in conns:
            c.close()
    cpu_end, wall_end = time.process_time(), time.perf_counter()
    wall = wall_end - cpu0[1] if cpu0 else duration
    all_lats = sorted(x for lst in lats for x in lst)
    return LoadResult(
        requests=len(all_lats),
        seconds=wall,
        latencies=all_lats,
        statuses=statuses,
        errors=errors,
        client_cpu_share=(cpu_end - cpu0[0]) / wall if cpu0 and wall > 0 else 0.0,
    )


async def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    conn = Connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(timeout):
            status, _ = await conn.request(build_request("GET", path, port=port))
        return status
    finally:
        conn.close()


async def wait_http_ok(
    port: int, path: str, timeout: float, alive: Callable[[], bool], what: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        try:
            if await http_status(port, path) == 200:
                return
        except (OSError, HttpError, TimeoutError):
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        await asyncio.sleep(0.1)
