"""One replica at a time: background work led under a PostgreSQL advisory lock.

The lock is held on a connection of its own for as long as the leader leads; a leader that
dies loses it with its connection, and a waiting replica takes over within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator

import asyncpg


def lock_key(schema: str, name: str) -> int:
    """The advisory lock key of the work ``name`` of the service owning ``schema``."""
    return zlib.crc32(f"{schema}:{name}".encode())


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if ``stopping`` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


@contextlib.asynccontextmanager
async def leadership(
    pool: asyncpg.Pool, key: int, stopping: asyncio.Event, retry_seconds: float = 1.0
) -> AsyncIterator[bool]:
    """Wait for the lock ``key``; yields True once held (released on exit), or False if
    ``stopping`` was set first."""
    async with pool.acquire() as conn:
        held = False
        while not held:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            if not held and await sleep_or_stop(stopping, retry_seconds):
                break
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def wake_or_stop(wake: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
    """Until ``wake`` or ``stopping`` is set, or ``seconds`` have passed."""
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
