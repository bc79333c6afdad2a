"""Queries on the identity service's read models: ``<schema>.users`` and ``<schema>.api_keys``.

Owned by the identity service (``services/identity``). A change to the columns these queries
read, in ``services/identity/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_identity_queries.py`` pins the contract.

Password hashes are never read here; an API key's keyed hash only by :meth:`api_key_credential`,
for authentication.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts.identity import ApiKeyInfo, Role, Scope, UserProfile, UserStatus
from libs.readmodels import check_schema

#: The schema the identity service owns (its ``Service.schema``).
SCHEMA = "identity"


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    """What authenticating with an API key needs: the key, its owner's role, its state."""

    key_id: str
    user_id: str
    role: Role
    scopes: frozenset[Scope]
    #: Keyed hash of the key's secret (``libs.auth.keyed_hash``); compare in constant time.
    key_hash: str
    revoked_at: datetime | None
    expires_at: datetime | None
    #: The owner is suspended: the key is refused (``user_suspended``).
    owner_suspended: bool = False


class IdentityQuery:
    """Read-only access to the identity service's read models."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self.schema = s
        profile = "user_id, email, display_name, role, status, registered_at, approved_at"
        self._user_sql = f"SELECT {profile} FROM {s}.users WHERE user_id = $1"
        self._users_sql = (
            f"SELECT {profile} FROM {s}.users WHERE ($1::text IS NULL OR status = $1)"
            " AND ($2::text IS NULL OR user_id > $2) ORDER BY user_id LIMIT $3"
        )
        self._api_keys_sql = (
            "SELECT key_id, name, scopes, spend_cap_credits, created_at, expires_at,"
            f" last_used_at, revoked_at FROM {s}.api_keys WHERE user_id = $1 ORDER BY key_id"
        )
        self._credential_sql = (
            "SELECT k.key_id, k.user_id, u.role, k.scopes, k.key_hash, k.revoked_at,"
            f" k.expires_at, u.status FROM {s}.api_keys k JOIN {s}.users u USING (user_id)"
            " WHERE k.key_id = $1"
        )
        self._suspended_sql = (
            f"SELECT user_id FROM {s}.users WHERE status = '{UserStatus.suspended.value}'"
        )

    async def user(self, user_id: str) -> UserProfile | None:
        row = await self.pool.fetchrow(self._user_sql, user_id)
        return None if row is None else UserProfile.model_validate(dict(row))

    async def users(
        self, status: UserStatus | None, after_user_id: str | None, limit: int
    ) -> list[UserProfile]:
        """Users ordered by id, optionally only those in ``status``, after ``after_user_id``."""
        rows = await self.pool.fetch(
            self._users_sql, status.value if status else None, after_user_id, limit
        )
        return [UserProfile.model_validate(dict(r)) for r in rows]

    async def api_keys(self, user_id: str) -> list[ApiKeyInfo]:
        """The user's API keys (revoked and expired ones too), ordered by id."""
        rows = await self.pool.fetch(self._api_keys_sql, user_id)
        return [ApiKeyInfo.model_validate(dict(r)) for r in rows]

    async def api_key_credential(self, key_id: str) -> ApiKeyCredential | None:
        """The key ``key_id`` with its keyed hash and its owner's role, for authentication."""
        row = await self.pool.fetchrow(self._credential_sql, key_id)
        if row is None:
            return None
        return ApiKeyCredential(
            key_id=row["key_id"],
            user_id=row["user_id"],
            role=Role(row["role"]),
            scopes=frozenset(Scope(s) for s in row["scopes"]),
            key_hash=row["key_hash"],
            revoked_at=row["revoked_at"],
            expires_at=row["expires_at"],
            owner_suspended=row["status"] == UserStatus.suspended.value,
        )

    async def suspended_users(self) -> set[str]:
        """The ids of every suspended user (the gateway's start, and after a reconnect).
        Before identity's first migration there are no users, so none is suspended."""
        try:
            rows = await self.pool.fetch(self._suspended_sql)
        except asyncpg.UndefinedTableError:
            return set()
        return {r["user_id"] for r in rows}
