"""Read-only queries on the owners' read models (``job.jobs``, ``identity.*``).

Job envelopes are stored as the exact JSON text clients get, so they are served as bytes.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import asyncpg

from contracts.errors import InvalidCursor, JobNotFound, JobViewCatchingUp

_CATCH_UP_SECONDS = 5.0
#: The largest value an ``integer`` (int4) column holds: positions and frame numbers.
INT4_MAX = 2**31 - 1


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        value = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except ValueError:
        value = ""
    if not value or not value.isascii() or not value.isprintable() or len(value) > 200:
        raise InvalidCursor("the cursor is not one we issued")
    return value


def int_cursor(cursor: str | None) -> int | None:
    """A cursor holding a position in an int4 column (a version, a frame number)."""
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not (value.isdigit() and len(value) <= 10 and int(value) <= INT4_MAX):
        raise InvalidCursor("the cursor is not one we issued")
    return int(value)


def page_body(items: list[str], next_cursor: str | None) -> bytes:
    """``{"items": [...], "next_cursor": ...}`` from items that are already JSON text."""
    cursor = "null" if next_cursor is None else f'"{next_cursor}"'
    return f'{{"items":[{",".join(items)}],"next_cursor":{cursor}}}'.encode()


class ReadModels:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def job_envelope(self, job_id: str, owner_id: str | None, min_version: int = 0) -> str:
        """The job's envelope JSON; someone else's job is a 404, like a missing one.

        With ``min_version`` (the stream version a command just reached) it waits until the
        read model shows at least that version: a client always reads its own writes.
        """
        sql = "SELECT envelope, version FROM job.jobs WHERE job_id = $1"
        args: list[object] = [job_id]
        if owner_id is not None:
            sql += " AND owner_id = $2"
            args.append(owner_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (_CATCH_UP_SECONDS if min_version else 0)
        while True:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(sql, *args)
            if row is not None and row["version"] >= min_version:
                return str(row["envelope"])
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        if min_version:
            raise JobViewCatchingUp(
                f"job {job_id} was changed but its view is still catching up; retry the same"
                " request (with the same Idempotency-Key) to read it",
                job_id=job_id,
            )
        raise JobNotFound(f"no job {job_id}", job_id=job_id)

    async def list_jobs(
        self, owner_id: str | None, status: str | None, cursor: str | None, limit: int
    ) -> bytes:
        """Newest first (job ids sort by creation time), ``limit`` per page."""
        after = decode_cursor(cursor)
        where: list[str] = ["TRUE"]
        args: list[object] = []
        for column, value in (("owner_id", owner_id), ("status", status)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"job_id < ${len(args)}")
        args.append(limit + 1)
        sql = (
            f"SELECT job_id, envelope FROM job.jobs WHERE {' AND '.join(where)}"
            f" ORDER BY job_id DESC LIMIT ${len(args)}"
        )
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["job_id"]) if more and rows else None
        return page_body([r["envelope"] for r in rows], next_cursor)

    async def job_events(self, job_id: str, after_version: int, limit: int) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(
                await conn.fetch(
                    "SELECT version, type, data, metadata, recorded_at FROM job.events"
                    " WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3",
                    f"job-{job_id}",
                    after_version,
                    limit,
                )
            )

    async def job_frames(self, job_id: str, after_frame: int, limit: int) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(
                await conn.fetch(
                    "SELECT frame, path, size_bytes, sha256, worker, rendered_at FROM job.frames"
                    " WHERE job_id = $1 AND frame > $2 ORDER BY frame LIMIT $3",
                    job_id,
                    after_frame,
                    limit,
                )
            )

    async def user(self, user_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT user_id, email, display_name, role, status, registered_at, approved_at"
                " FROM identity.users WHERE user_id = $1",
                user_id,
            )
        return dict(row) if row else None

    async def users(
        self, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        after = decode_cursor(cursor)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT user_id, email, display_name, role, status, registered_at, approved_at"
                " FROM identity.users WHERE ($1::text IS NULL OR status = $1)"
                " AND ($2::text IS NULL OR user_id > $2) ORDER BY user_id LIMIT $3",
                status,
                after,
                limit + 1,
            )
        items = [dict(r) for r in rows[:limit]]
        return items, (encode_cursor(items[-1]["user_id"]) if len(rows) > limit else None)

    async def api_keys(self, user_id: str) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT key_id, name, scopes, spend_cap_credits, created_at, expires_at,"
                " last_used_at, revoked_at FROM identity.api_keys WHERE user_id = $1"
                " ORDER BY key_id",
                user_id,
            )
        return [dict(r) for r in rows]
