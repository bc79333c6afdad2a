"""Read models of the identity service.

The gateway reads ``identity.users`` and ``identity.api_keys`` (read-only) to authenticate
API keys and to list users and keys, only through ``libs/readmodels/identity.py``: a change to
the columns it reads changes that module in the same commit (ADR 0007).
Tables: ``services/identity/migrations``.
"""

from __future__ import annotations

from contracts.identity import (
    ERASED,
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiKeyUsed,
    UserApproved,
    UserErased,
    UserReactivated,
    UserRegistered,
    UserStatus,
    UserSuspended,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent


def _existing(row: Row | None, what: str) -> Row:
    if row is None:
        raise LookupError(f"no {what} row to change")
    return row


class UsersProjection(ReadModel):
    """``identity.users``: one row per user, with the password hash for logging in; an
    erased user's e-mail address, display name and hash read ``"erased"``."""

    name = "users"
    table = "users"
    key = ("user_id",)
    columns = {
        "user_id": "text",
        "email": "text",
        "display_name": "text",
        "role": "text",
        "status": "text",
        "registered_at": "timestamptz",
        "approved_at": "timestamptz",
        "password_hash": "text",
    }

    @on(UserRegistered, key=lambda e: (e.user_id,))
    def registered(self, row: Row | None, e: UserRegistered, rec: RecordedEvent) -> Row | None:
        return {
            "user_id": e.user_id,
            "email": e.email,
            "display_name": e.display_name,
            "role": e.role.value,
            "status": UserStatus.pending_approval.value,
            "registered_at": e.registered_at,
            "approved_at": None,
            "password_hash": e.password_hash,
        }

    @on(UserApproved, key=lambda e: (e.user_id,))
    def approved(self, row: Row | None, e: UserApproved, rec: RecordedEvent) -> Row | None:
        user = _existing(row, f"user {e.user_id}")
        return {**user, "status": UserStatus.active.value, "approved_at": e.approved_at}

    @on(UserSuspended, key=lambda e: (e.user_id,))
    def suspended(self, row: Row | None, e: UserSuspended, rec: RecordedEvent) -> Row | None:
        return {**_existing(row, f"user {e.user_id}"), "status": UserStatus.suspended.value}

    @on(UserReactivated, key=lambda e: (e.user_id,))
    def reactivated(self, row: Row | None, e: UserReactivated, rec: RecordedEvent) -> Row | None:
        return {**_existing(row, f"user {e.user_id}"), "status": e.status.value}

    @on(UserErased, key=lambda e: (e.user_id,))
    def erased(self, row: Row | None, e: UserErased, rec: RecordedEvent) -> Row | None:
        """The row stays (jobs, keys and the ledger name the user id); what identifies the
        person reads ``"erased"``, as the overwritten ``UserRegistered`` does on a rebuild."""
        user = _existing(row, f"user {e.user_id}")
        return {**user, "email": ERASED, "display_name": ERASED, "password_hash": ERASED}


class ApiKeysProjection(ReadModel):
    """``identity.api_keys``: one row per key, with the keyed hash of its secret."""

    name = "api_keys"
    table = "api_keys"
    key = ("key_id",)
    columns = {
        "key_id": "text",
        "user_id": "text",
        "name": "text",
        "scopes": "text[]",
        "key_hash": "text",
        "spend_cap_credits": "numeric",
        "created_at": "timestamptz",
        "expires_at": "timestamptz",
        "last_used_at": "timestamptz",
        "revoked_at": "timestamptz",
    }

    @on(ApiKeyCreated, key=lambda e: (e.key_id,))
    def created(self, row: Row | None, e: ApiKeyCreated, rec: RecordedEvent) -> Row | None:
        return {
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

    @on(ApiKeyRevoked, key=lambda e: (e.key_id,))
    def revoked(self, row: Row | None, e: ApiKeyRevoked, rec: RecordedEvent) -> Row | None:
        return {**_existing(row, f"api key {e.key_id}"), "revoked_at": e.revoked_at}

    @on(ApiKeyUsed, key=lambda e: (e.key_id,))
    def used(self, row: Row | None, e: ApiKeyUsed, rec: RecordedEvent) -> Row | None:
        return {**_existing(row, f"api key {e.key_id}"), "last_used_at": e.used_at}
