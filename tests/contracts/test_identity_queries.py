"""The identity service's read models as the gateway reads them (libs/readmodels/identity.py,
ADR 0007).

The identity service's real projections run over real events in PostgreSQL; everything is read
back only through :class:`IdentityQuery` on a read-only pool. A change to ``identity.users`` or
``identity.api_keys`` that breaks the query module fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from contracts.identity import (
    ApiKeyInfo,
    ApiKeySecret,
    CreateApiKey,
    ReactivateUser,
    RevokeApiKey,
    Role,
    Scope,
    SuspendUser,
    UserProfile,
    UserStatus,
)
from libs.auth import keyed_hash, split_api_key
from libs.readmodels import identity as identity_queries
from libs.readmodels import read_only_pool
from libs.readmodels.identity import IdentityQuery
from libs.runtime import ServiceRuntime
from services.identity.service import SERVICE
from services.identity.settings import IdentitySettings
from tests.identity.conftest import ADMIN, Identity


@pytest.fixture
async def read_pool(identity_service: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(identity_service.settings.database_url, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def query(read_pool: asyncpg.Pool) -> IdentityQuery:
    return IdentityQuery(read_pool, SERVICE.schema)


@pytest.fixture
def identity(identity_service: ServiceRuntime[Any]) -> Identity:
    assert isinstance(identity_service.settings, IdentitySettings)
    return Identity(identity_service, identity_service.settings)


def test_the_query_module_reads_the_schema_and_tables_the_identity_service_declares() -> None:
    assert SERVICE.schema == identity_queries.SCHEMA
    tables = {getattr(p, "table", None) for p in SERVICE.projections}
    assert {"users", "api_keys"} <= tables


async def test_users_are_profiles_by_id_and_by_status(
    identity: Identity, query: IdentityQuery
) -> None:
    pending = await identity.register("pending@example.com")
    active = await identity.register("active@example.com", approved=True)
    got = await query.user(pending.user_id)
    assert got == pending and got.status is UserStatus.pending_approval
    assert got.approved_at is None
    got_active = await query.user(active.user_id)
    assert got_active is not None and got_active.status is UserStatus.active
    assert got_active.approved_at is not None and got_active.role is Role.user
    assert await query.user("usr_missing") is None
    everyone = sorted([pending.user_id, active.user_id])
    assert [u.user_id for u in await query.users(None, None, 10)] == everyone
    assert [u.user_id for u in await query.users(None, everyone[0], 10)] == everyone[1:]
    assert [u.user_id for u in await query.users(None, None, 1)] == everyone[:1]
    only_pending = await query.users(UserStatus.pending_approval, None, 10)
    assert [u.user_id for u in only_pending] == [pending.user_id]


async def test_api_keys_are_listed_and_authenticated_by_their_keyed_hash(
    identity: Identity, query: IdentityQuery, identity_service: ServiceRuntime[Any]
) -> None:
    assert isinstance(identity_service.settings, IdentitySettings)
    user = await identity.register("ada@example.com", approved=True)
    expires = datetime.now(UTC) + timedelta(days=1)
    created = await identity.send(
        CreateApiKey(
            user_id=user.user_id,
            name="ci",
            scopes=[Scope.jobs_read, Scope.jobs_write],
            spend_cap_credits=Decimal("12.5"),
            expires_at=expires,
        ),
        ApiKeySecret,
    )
    other = await identity.send(
        CreateApiKey(user_id=user.user_id, name="mcp", scopes=[Scope.jobs_read]), ApiKeySecret
    )
    keys = await query.api_keys(user.user_id)
    assert keys == [
        ApiKeyInfo.model_validate(k.model_dump(exclude={"secret"}))
        for k in sorted([created, other], key=lambda k: k.key_id)
    ]
    assert await query.api_keys("usr_nobody") == []

    parts = split_api_key(created.secret)
    assert parts is not None
    key_id, secret = parts
    credential = await query.api_key_credential(key_id)
    assert credential is not None
    assert credential.key_hash == keyed_hash(identity_service.settings, secret)
    assert (credential.user_id, credential.role) == (user.user_id, Role.user)
    assert credential.scopes == {Scope.jobs_read, Scope.jobs_write}
    assert credential.revoked_at is None and credential.expires_at == expires
    assert await query.api_key_credential("missing") is None

    await identity.send(RevokeApiKey(key_id=key_id, user_id=None), ApiKeyInfo, actor=ADMIN)
    revoked = await query.api_key_credential(key_id)
    assert revoked is not None and revoked.revoked_at is not None


async def test_suspended_users_and_their_keys_are_read_as_suspended(
    identity: Identity, query: IdentityQuery
) -> None:
    user = await identity.register("suspended@example.com", approved=True)
    other = await identity.register("fine@example.com", approved=True)
    created = await identity.send(
        CreateApiKey(user_id=user.user_id, name="ci", scopes=[Scope.jobs_read]), ApiKeySecret
    )
    credential = await query.api_key_credential(created.key_id)
    assert credential is not None and not credential.owner_suspended
    assert await query.suspended_users() == set()

    await identity.send(
        SuspendUser(user_id=user.user_id, reason="chargebacks"), UserProfile, actor=ADMIN
    )
    assert await query.suspended_users() == {user.user_id}
    got = await query.user(user.user_id)
    assert got is not None and got.status is UserStatus.suspended
    credential = await query.api_key_credential(created.key_id)
    assert credential is not None and credential.owner_suspended
    suspended = await query.users(UserStatus.suspended, None, 10)
    assert [u.user_id for u in suspended] == [user.user_id]

    await identity.send(ReactivateUser(user_id=user.user_id), UserProfile, actor=ADMIN)
    assert await query.suspended_users() == set()
    got = await query.user(user.user_id)
    assert got is not None and got.status is UserStatus.active
    assert (await query.user(other.user_id)) is not None


async def test_the_query_pool_refuses_writes(read_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await read_pool.execute("DELETE FROM identity.users")
