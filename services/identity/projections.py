"""Read models of the identity service.

The gateway reads ``identity.users`` and ``identity.api_keys`` (read-only) to authenticate
API keys and to list users and keys, only through ``libs/readmodels/identity.py``: a change to
the columns it reads changes that module in the same commit (ADR 0007).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from contracts.identity import (
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiKeyUsed,
    UserApproved,
    UserRegistered,
    UserStatus,
)
from libs.eventstore.processor import Projection
from libs.eventstore.store import RecordedEvent

Row = dict[str, Any]


async def _current(
    conn: asyncpg.Connection, table: str, key: str, columns: tuple[str, ...], ids: list[str]
) -> dict[str, Row]:
    rows = await conn.fetch(
        f"SELECT {', '.join(columns)} FROM identity.{table} WHERE {key} = ANY($1)", ids
    )
    return {r[key]: dict(r) for r in rows}


async def _upsert(
    conn: asyncpg.Connection, table: str, key: str, columns: tuple[str, ...], rows: list[Row]
) -> None:
    if not rows:
        return
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    await conn.executemany(
        f"INSERT INTO identity.{table} ({', '.join(columns)}) VALUES ({params})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}",
        [tuple(r[c] for c in columns) for r in rows],
    )


class UsersProjection(Projection):
    """``identity.users``: one row per user, with the password hash for logging in."""

    name = "users"
    tables = ("users",)
    types = (UserRegistered.event_type, UserApproved.event_type)
    columns = (
        "user_id",
        "email",
        "display_name",
        "role",
        "status",
        "registered_at",
        "approved_at",
        "password_hash",
    )

    async def setup(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS identity.users (
                user_id text PRIMARY KEY,
                email text NOT NULL UNIQUE,
                display_name text NOT NULL,
                role text NOT NULL,
                status text NOT NULL,
                registered_at timestamptz NOT NULL,
                approved_at timestamptz,
                password_hash text NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower ON identity.users (lower(email));
            CREATE INDEX IF NOT EXISTS users_status ON identity.users (status, user_id);
            """
        )

    async def apply(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        decoded = [e.decode() for e in events]
        ids = list({e.user_id for e in decoded if isinstance(e, UserRegistered | UserApproved)})
        rows = await _current(conn, "users", "user_id", self.columns, ids)
        for e in decoded:
            match e:
                case UserRegistered():
                    rows[e.user_id] = {
                        "user_id": e.user_id,
                        "email": e.email,
                        "display_name": e.display_name,
                        "role": e.role.value,
                        "status": UserStatus.pending_approval.value,
                        "registered_at": e.registered_at,
                        "approved_at": None,
                        "password_hash": e.password_hash,
                    }
                case UserApproved():
                    rows[e.user_id].update(
                        status=UserStatus.active.value, approved_at=e.approved_at
                    )
        await _upsert(conn, "users", "user_id", self.columns, list(rows.values()))


class ApiKeysProjection(Projection):
    """``identity.api_keys``: one row per key, with the keyed hash of its secret."""

    name = "api_keys"
    tables = ("api_keys",)
    types = (ApiKeyCreated.event_type, ApiKeyRevoked.event_type, ApiKeyUsed.event_type)
    columns = (
        "key_id",
        "user_id",
        "name",
        "scopes",
        "key_hash",
        "spend_cap_credits",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )

    async def setup(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS identity.api_keys (
                key_id text PRIMARY KEY,
                user_id text NOT NULL,
                name text NOT NULL,
                scopes text[] NOT NULL,
                key_hash text NOT NULL,
                spend_cap_credits numeric,
                created_at timestamptz NOT NULL,
                expires_at timestamptz,
                last_used_at timestamptz,
                revoked_at timestamptz
            );
            CREATE INDEX IF NOT EXISTS api_keys_user ON identity.api_keys (user_id, key_id);
            """
        )

    async def apply(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        decoded = [e.decode() for e in events]
        ids = list(
            {e.key_id for e in decoded if isinstance(e, ApiKeyCreated | ApiKeyRevoked | ApiKeyUsed)}
        )
        rows = await _current(conn, "api_keys", "key_id", self.columns, ids)
        for e in decoded:
            match e:
                case ApiKeyCreated():
                    rows[e.key_id] = {
                        "key_id": e.key_id,
                        "user_id": e.user_id,
                        "name": e.name,
                        "scopes": [s.value for s in e.scopes],
                        "key_hash": e.key_hash,
                        "spend_cap_credits": e.spend_cap_credits,
                        "created_at": e.created_at,
                        "expires_at": e.expires_at,
                        "last_used_at": None,
                        "revoked_at": None,
                    }
                case ApiKeyRevoked():
                    rows[e.key_id]["revoked_at"] = e.revoked_at
                case ApiKeyUsed():
                    rows[e.key_id]["last_used_at"] = e.used_at
        await _upsert(conn, "api_keys", "key_id", self.columns, list(rows.values()))
