"""The plain-HTTP health endpoint a process serves on ``RF_HEALTH_PORT`` (``/healthz``,
``/readyz``): one request per connection, a status line and a text body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: ``answer(path) -> (ok, text)``; ``None`` for a path it does not serve (404).
Answer = Callable[[str], Awaitable[tuple[bool, str] | None]]


async def serve_health(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer
) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "/"
        answered = await answer(path)
        if answered is None:
            status, text = "404 Not Found", "not found"
        else:
            ok, text = answered
            status = "200 OK" if ok else "503 Service Unavailable"
        body = text.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()
