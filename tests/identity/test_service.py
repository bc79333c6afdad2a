"""The identity service end to end: commands over NATS, events and read models in PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from contracts.errors import (
    ApiKeyNotFound,
    DomainError,
    EmailTaken,
    IdempotencyKeyReused,
    InvalidCredentials,
    RefreshTokenInvalid,
    RefreshTokenReused,
    UserAlreadyApproved,
    UserNotApproved,
    UserNotFound,
    ValidationFailed,
)
from contracts.identity import (
    ApiKeyInfo,
    ApiKeySecret,
    ApproveUser,
    CreateApiKey,
    EraseUser,
    Login,
    RecordApiKeyUse,
    RefreshSession,
    RegisterUser,
    RevokeApiKey,
    Scope,
    TokenPair,
    UserProfile,
    UserStatus,
)
from libs.auth import keyed_hash, split_api_key, split_refresh_token, verify_access_token
from libs.eventstore.uow import UnitOfWork
from libs.runtime import ServiceRuntime
from services.identity.commands import IdentityCommands
from services.identity.passwords import hash_password
from services.identity.settings import IdentitySettings
from tests.identity.conftest import ADMIN, PASSWORD, Identity
from tests.waiting import until


async def refused(command: Awaitable[object]) -> type[DomainError[Any]]:
    """The error code a command was refused with."""
    with pytest.raises(DomainError) as e:
        await command
    return type(e.value)


async def database_text(pool: asyncpg.Pool) -> str:
    """Every row of every table of the identity schema, as text."""
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'identity'"
        )
        assert {"events", "processed_commands", "users", "api_keys"} <= {
            t["table_name"] for t in tables
        }
        parts = [
            await conn.fetchval(
                "SELECT coalesce(string_agg(t::text, E'\\n'), '')"
                f" FROM identity.{t['table_name']} t"
            )
            for t in tables
        ]
    return "\n".join(parts)


async def approved_user(identity: Identity, email: str = "ada@example.com") -> UserProfile:
    return await identity.register(email, approved=True)


async def create_key(identity: Identity, user_id: str, **kw: object) -> ApiKeySecret:
    cmd = CreateApiKey(user_id=user_id, name="ci", scopes=[Scope.jobs_read], **kw)
    return await identity.send(cmd, ApiKeySecret)


# -- erasure --------------------------------------------------------------------------


async def test_erasing_a_user_overwrites_the_address_once_and_frees_it(
    identity: Identity,
) -> None:
    user = await identity.register("Erin.Erased@Example.com", command_id="register:erin")
    await identity.send(ApproveUser(user_id=user.user_id), UserProfile, actor=ADMIN)
    await identity.login("erin.erased@example.com")
    other = await approved_user(identity)
    assert "erin.erased@example.com" in (await database_text(identity.pool)).lower()

    erase = EraseUser(user_id=user.user_id)
    erased = await identity.send(erase, UserProfile, actor=ADMIN)
    assert (erased.email, erased.display_name, erased.status) == ("erased", "erased", "active")
    again = await identity.send(erase, UserProfile, actor=ADMIN)  # another command id
    assert again == erased
    async with identity.pool.acquire() as conn:
        tombstones = await conn.fetchval(
            "SELECT count(*) FROM identity.events WHERE type = 'identity.UserErased'"
        )
        claims = await conn.fetch(
            "SELECT stream_id, data->>'email' AS email FROM identity.events"
            " WHERE type = 'identity.EmailClaimed' ORDER BY global_position"
        )
    assert tombstones == 1
    assert [(c["stream_id"], c["email"]) for c in claims] == [
        (f"email-erased-{user.user_id}", "erased"),
        ("email-ada@example.com", other.email),
    ]

    async def erased_everywhere() -> bool:
        return "erin.erased@example.com" not in (await database_text(identity.pool)).lower()

    await until(erased_everywhere, "the address gone from every identity table")
    assert await refused(identity.login("erin.erased@example.com")) is InvalidCredentials
    assert await refused(identity.send(EraseUser(user_id="usr_nobody"), UserProfile)) is (
        UserNotFound
    )
    # The address is free again: a new user, and the other user is untouched.
    anew = await identity.register("erin.erased@example.com")
    assert anew.user_id != user.user_id
    await identity.login(other.email)


# -- registration and approval ---------------------------------------------------------


async def test_a_registered_user_is_pending_and_cannot_log_in_until_approved(
    identity: Identity, settings: IdentitySettings
) -> None:
    profile = await identity.register("Ada@Example.com")
    assert profile.status is UserStatus.pending_approval
    assert profile.email == "Ada@Example.com"
    assert await refused(identity.login("ada@example.com")) is UserNotApproved

    approved = await identity.send(ApproveUser(user_id=profile.user_id), UserProfile, actor=ADMIN)
    assert approved.status is UserStatus.active and approved.approved_at is not None

    pair = await identity.login("ADA@example.com")
    claims = verify_access_token(settings, pair.access_token)
    assert claims.user_id == profile.user_id
    assert claims.role == "user"
    assert pair.expires_in_seconds == settings.access_token_ttl_seconds


async def test_the_read_model_shows_the_user_as_soon_as_registration_answers(
    identity: Identity,
) -> None:
    profile = await identity.register("grace@example.com")
    async with identity.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT email, status, password_hash FROM identity.users WHERE user_id = $1",
            profile.user_id,
        )
    assert row["email"] == "grace@example.com"
    assert row["status"] == "pending_approval"
    assert row["password_hash"].startswith("scrypt$")


async def test_approving_twice_or_approving_nobody_is_refused(identity: Identity) -> None:
    profile = await approved_user(identity)
    approve = ApproveUser(user_id=profile.user_id)
    assert await refused(identity.send(approve, UserProfile)) is UserAlreadyApproved
    nobody = ApproveUser(user_id="usr_nobody")
    assert await refused(identity.send(nobody, UserProfile)) is UserNotFound


async def test_an_email_is_taken_whatever_its_case(identity: Identity) -> None:
    await identity.register("ada@example.com")
    assert await refused(identity.register("ADA@Example.com")) is EmailTaken


async def test_of_two_registrations_of_one_email_sent_at_once_exactly_one_succeeds(
    identity: Identity,
) -> None:
    results = await asyncio.gather(
        identity.register("race@example.com"),
        identity.register("Race@example.com"),
        return_exceptions=True,
    )
    profiles = [r for r in results if isinstance(r, UserProfile)]
    errors = [r for r in results if isinstance(r, DomainError)]
    assert len(profiles) == 1
    assert [type(e) for e in errors] == [EmailTaken]
    async with identity.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM identity.users") == 1


async def test_registrations_racing_for_one_email_in_two_replicas_cannot_both_commit(
    service: ServiceRuntime[Any], settings: IdentitySettings
) -> None:
    """Both handlers see the address free; the atomic two-stream append lets one win.

    (One process runs the commands of a type one at a time, so the race needs two
    replicas; here two handler runs in their own transactions stand in for them.)
    """
    both_checked = threading.Barrier(2, timeout=10)

    def hash_once_both_checked(password: str, n: int) -> str:
        both_checked.wait()  # both have loaded the free e-mail claim by now
        return hash_password(password, n)

    racing = IdentityCommands(settings, hasher=hash_once_both_checked)

    async def register(
        email: str, command_id: str, commands: IdentityCommands = racing
    ) -> UserProfile:
        cmd = RegisterUser(email=email, password=PASSWORD, display_name="Twin")
        async with service.pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(service.store, conn=conn, metadata={"command_id": command_id})
            profile = await commands.register_user(cmd, uow)
            await uow.commit()
            return profile

    results = await asyncio.gather(
        register("twin@example.com", "a"), register("TWIN@example.com", "b"), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["ConcurrencyError", "UserProfile"]
    # The command server re-runs the loser on fresh state, where the address is taken.
    plain = IdentityCommands(settings)
    assert await refused(register("Twin@Example.com", "b", plain)) is EmailTaken


async def test_the_same_register_command_id_twice_registers_one_user(identity: Identity) -> None:
    first = await identity.register("once@example.com", command_id="register-1")
    again = await identity.register("once@example.com", command_id="register-1")
    assert again == first
    async with identity.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM identity.users") == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM identity.events WHERE type = 'identity.UserRegistered'"
            )
            == 1
        )


# -- logging in and refreshing ---------------------------------------------------------


async def test_a_wrong_password_and_an_unknown_email_fail_alike(identity: Identity) -> None:
    await approved_user(identity)
    with pytest.raises(DomainError) as wrong_password:
        await identity.login("ada@example.com", "not the password")
    with pytest.raises(DomainError) as unknown_email:
        await identity.login("bob@example.com", PASSWORD)
    assert type(wrong_password.value) is InvalidCredentials
    assert type(unknown_email.value) is InvalidCredentials
    assert wrong_password.value.message == unknown_email.value.message


async def test_a_refresh_token_works_once_and_reusing_it_revokes_the_session(
    identity: Identity, settings: IdentitySettings
) -> None:
    profile = await approved_user(identity)
    first = await identity.login("ada@example.com")

    second = await identity.send(RefreshSession(refresh_token=first.refresh_token), TokenPair)
    assert second.refresh_token != first.refresh_token
    assert verify_access_token(settings, second.access_token).user_id == profile.user_id

    reuse = RefreshSession(refresh_token=first.refresh_token)
    assert await refused(identity.send(reuse, TokenPair)) is RefreshTokenReused
    # The revocation was stored although the command failed: the newer token is dead too.
    latest = RefreshSession(refresh_token=second.refresh_token)
    assert await refused(identity.send(latest, TokenPair)) is RefreshTokenInvalid
    async with identity.pool.acquire() as conn:
        reason = await conn.fetchval(
            "SELECT data->>'reason' FROM identity.events"
            " WHERE type = 'identity.RefreshFamilyRevoked'"
        )
    assert reason == "reuse detected"


async def test_a_session_of_another_login_survives_a_reuse(identity: Identity) -> None:
    await approved_user(identity)
    laptop = await identity.login("ada@example.com")
    phone = await identity.login("ada@example.com")
    await identity.send(RefreshSession(refresh_token=laptop.refresh_token), TokenPair)
    reuse = RefreshSession(refresh_token=laptop.refresh_token)
    assert await refused(identity.send(reuse, TokenPair)) is RefreshTokenReused
    assert await identity.send(RefreshSession(refresh_token=phone.refresh_token), TokenPair)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "rft_rtf_00000000000000000000000000_whatever",  # well formed, unknown family
        "rfk_live_key_00000000000000000000000000_secret",
    ],
)
async def test_malformed_or_unknown_refresh_tokens_are_invalid(
    identity: Identity, token: str
) -> None:
    refresh = RefreshSession(refresh_token=token)
    assert await refused(identity.send(refresh, TokenPair)) is RefreshTokenInvalid


async def test_a_forged_secret_in_a_real_family_is_invalid_and_revokes_nothing(
    identity: Identity,
) -> None:
    await approved_user(identity)
    pair = await identity.login("ada@example.com")
    parts = split_refresh_token(pair.refresh_token)
    assert parts is not None
    forged = RefreshSession(refresh_token=f"rft_{parts[0]}_forged")
    assert await refused(identity.send(forged, TokenPair)) is RefreshTokenInvalid
    assert await identity.send(RefreshSession(refresh_token=pair.refresh_token), TokenPair)


async def test_session_secrets_and_passwords_are_never_stored_in_the_clear(
    identity: Identity, settings: IdentitySettings
) -> None:
    await approved_user(identity)
    first = await identity.login("ada@example.com")
    second = await identity.send(RefreshSession(refresh_token=first.refresh_token), TokenPair)
    stored = await database_text(identity.pool)
    for pair in (first, second):
        parts = split_refresh_token(pair.refresh_token)
        assert parts is not None
        assert parts[1] not in stored
        assert keyed_hash(settings, parts[1]) in stored
        assert pair.access_token not in stored
    assert PASSWORD not in stored


async def test_a_repeated_login_command_id_is_refused_not_replayed(identity: Identity) -> None:
    await approved_user(identity)
    cmd = Login(email="ada@example.com", password=PASSWORD)
    await identity.send(cmd, TokenPair, command_id="login-1")
    repeat = identity.send(cmd, TokenPair, command_id="login-1")
    assert await refused(repeat) is IdempotencyKeyReused


# -- API keys --------------------------------------------------------------------------


async def test_an_api_key_is_stored_only_as_its_keyed_hash(
    identity: Identity, settings: IdentitySettings
) -> None:
    user = await approved_user(identity)
    created = await create_key(identity, user.user_id)
    parts = split_api_key(created.secret)
    assert parts is not None
    key_id, secret = parts
    assert key_id == created.key_id
    async with identity.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT user_id, scopes, key_hash, revoked_at FROM identity.api_keys WHERE key_id = $1",
            key_id,
        )
    assert row["key_hash"] == keyed_hash(settings, secret)
    assert row["user_id"] == user.user_id
    assert row["scopes"] == ["jobs:read"]
    assert row["revoked_at"] is None
    stored = await database_text(identity.pool)
    assert secret not in stored
    assert created.secret not in stored


async def test_a_repeated_create_api_key_command_id_is_refused_not_replayed(
    identity: Identity,
) -> None:
    user = await approved_user(identity)
    cmd = CreateApiKey(user_id=user.user_id, name="ci", scopes=[Scope.jobs_read])
    await identity.send(cmd, ApiKeySecret, command_id="key-1")
    repeat = identity.send(cmd, ApiKeySecret, command_id="key-1")
    assert await refused(repeat) is IdempotencyKeyReused
    async with identity.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM identity.api_keys") == 1


async def test_api_keys_are_only_for_approved_users(identity: Identity) -> None:
    pending = await identity.register("pending@example.com")
    assert await refused(create_key(identity, pending.user_id)) is UserNotApproved
    assert await refused(create_key(identity, "usr_nobody")) is UserNotFound


async def test_an_api_key_cannot_be_created_already_expired(identity: Identity) -> None:
    user = await approved_user(identity)
    past = datetime.now(UTC) - timedelta(minutes=1)
    assert await refused(create_key(identity, user.user_id, expires_at=past)) is ValidationFailed


async def test_revoking_an_api_key_sets_revoked_at_once(identity: Identity) -> None:
    user = await approved_user(identity)
    key = await create_key(identity, user.user_id)
    revoke = RevokeApiKey(key_id=key.key_id, user_id=user.user_id)
    revoked = await identity.send(revoke, ApiKeyInfo)
    assert revoked.revoked_at is not None
    async with identity.pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT revoked_at FROM identity.api_keys WHERE key_id = $1", key.key_id
        )
    assert stored == revoked.revoked_at
    again = await identity.send(revoke, ApiKeyInfo)
    assert again.revoked_at == revoked.revoked_at


async def test_nobody_but_the_owner_or_an_admin_can_revoke_a_key(identity: Identity) -> None:
    owner = await approved_user(identity)
    other = await approved_user(identity, "mallory@example.com")
    key = await create_key(identity, owner.user_id)
    as_other = RevokeApiKey(key_id=key.key_id, user_id=other.user_id)
    assert await refused(identity.send(as_other, ApiKeyInfo)) is ApiKeyNotFound
    missing = RevokeApiKey(key_id="key_nothing", user_id=None)
    assert await refused(identity.send(missing, ApiKeyInfo)) is ApiKeyNotFound
    as_admin = RevokeApiKey(key_id=key.key_id, user_id=None)
    assert (await identity.send(as_admin, ApiKeyInfo, actor=ADMIN)).revoked_at is not None


async def test_api_key_use_reaches_the_read_model_at_most_once_a_minute(
    identity: Identity,
) -> None:
    user = await approved_user(identity)
    key = await create_key(identity, user.user_id)
    used_at = datetime.now(UTC).replace(microsecond=0)
    first = await identity.send(RecordApiKeyUse(key_id=key.key_id, used_at=used_at), ApiKeyInfo)
    soon = used_at + timedelta(seconds=30)
    second = await identity.send(RecordApiKeyUse(key_id=key.key_id, used_at=soon), ApiKeyInfo)
    assert first.last_used_at == second.last_used_at == used_at
    async with identity.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT last_used_at FROM identity.api_keys WHERE key_id = $1", key.key_id
            )
            == used_at
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM identity.events WHERE type = 'identity.ApiKeyUsed'"
            )
            == 1
        )
