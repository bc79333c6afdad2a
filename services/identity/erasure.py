"""Overwriting an erased user's personal fields in identity's own tables (ADR 0018).

Stored events are otherwise never rewritten (architecture §3); erasure is the one exception.
In one transaction, for the user's e-mail address (read from its ``EmailClaimed``):

* ``UserRegistered``: ``email``, ``display_name`` and the password hash become ``"erased"``;
* ``EmailClaimed``: ``email`` becomes ``"erased"`` and its stream ``email-<address>`` is
  renamed ``email-erased-<user id>`` (the address can be registered again);
* the stored replies that are the user's profile read ``"erased"`` too, and every event's
  metadata and every ``processed_commands`` row (id and reply) that names the address, e.g.
  the gateway's ``register:<address>`` command ids, has it replaced;
* the user's snapshots are deleted (a cache: they are taken again from the events).

Running it again finds nothing left to change.
"""

from __future__ import annotations

import re

import asyncpg

from contracts.identity import ERASED
from libs.readmodels import check_schema


async def shred(pool: asyncpg.Pool, schema: str, user_id: str) -> None:
    s = check_schema(schema)
    blank = {"email": ERASED, "display_name": ERASED, "password_hash": ERASED}
    async with pool.acquire() as conn, conn.transaction():
        email = await conn.fetchval(
            f"SELECT data->>'email' FROM {s}.events WHERE type = 'identity.EmailClaimed'"
            " AND data->>'user_id' = $1 AND data->>'email' <> $2",
            user_id,
            ERASED,
        )
        await conn.execute(
            f"UPDATE {s}.events SET data = data || $2::jsonb"
            " WHERE stream_id = 'user-' || $1 AND type = 'identity.UserRegistered'",
            user_id,
            blank,
        )
        await conn.execute(
            f"UPDATE {s}.events SET data = data || $2::jsonb, stream_id = 'email-erased-' || $1"
            " WHERE type = 'identity.EmailClaimed' AND data->>'user_id' = $1",
            user_id,
            {"email": ERASED},
        )
        await conn.execute(f"DELETE FROM {s}.snapshots WHERE stream_id = 'user-' || $1", user_id)
        # The stored replies that are the user's profile (RegisterUser, ApproveUser, ...).
        await conn.execute(
            f"UPDATE {s}.processed_commands SET reply = jsonb_set(reply, '{{result}}',"
            " reply->'result' || $2::jsonb) WHERE reply->'result'->>'user_id' = $1"
            " AND reply->'result' ? 'display_name'",
            user_id,
            {"email": ERASED, "display_name": ERASED},
        )
        if email is None:
            return
        await conn.execute(
            f"DELETE FROM {s}.snapshots WHERE stream_id = 'email-' || $1", email.lower()
        )
        # Case-insensitively, wherever the address is spelled out (JSON keeps it as typed).
        pattern = re.escape(email)
        await conn.execute(
            f"UPDATE {s}.events SET metadata = regexp_replace(metadata::text, $1, $2, 'gi')::jsonb"
            " WHERE strpos(lower(metadata::text), lower($3)) > 0",
            pattern,
            ERASED,
            email,
        )
        await conn.execute(
            f"UPDATE {s}.processed_commands SET"
            " command_id = regexp_replace(command_id, $1, $2 || ':' || $4, 'gi'),"
            " reply = regexp_replace(reply::text, $1, $2, 'gi')::jsonb"
            " WHERE strpos(lower(command_id || coalesce(reply::text, '')), lower($3)) > 0",
            pattern,
            ERASED,
            email,
            user_id,
        )
