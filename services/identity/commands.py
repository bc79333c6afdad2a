"""Command handlers of the identity service.

Secrets. Passwords are kept only as scrypt hashes, refresh tokens and API keys only as
keyed hashes (``libs.auth.keyed_hash``). The replies of ``Login``, ``RefreshSession`` and
``CreateApiKey`` hold a secret shown once, so they are registered with
``store_reply=False``: ``processed_commands`` keeps a tombstone instead of the reply, and a
repeated command id is refused (``idempotency_key_reused``) rather than answered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from contracts.errors import (
    AccountSuspended,
    ApiKeyNotFound,
    InvalidCredentials,
    RefreshTokenInvalid,
    RefreshTokenReused,
    UserNotApproved,
)
from contracts.identity import (
    ApiKeyInfo,
    ApiKeySecret,
    ApproveUser,
    CreateApiKey,
    EraseUser,
    Login,
    ReactivateUser,
    RecordApiKeyUse,
    RefreshSession,
    RegisterUser,
    RevokeApiKey,
    SuspendUser,
    TokenPair,
    UserProfile,
)
from libs import auth
from libs.bus.commands import CommandServer
from libs.eventstore.store import EventStore
from libs.eventstore.uow import UnitOfWork
from libs.ids import new_id
from services.identity.domain import (
    ApiKey,
    EmailClaim,
    RefreshFamily,
    User,
    is_reuse,
    normalise_email,
)
from services.identity.erasure import shred
from services.identity.passwords import hash_password, verify_password
from services.identity.settings import IdentitySettings

#: Who approves the users the command line registers with ``approved=True``.
CLI_APPROVER = "cli"

_BAD_CREDENTIALS = "wrong e-mail address or password"
_SUSPENDED = "your account is suspended by an administrator"


def _utc(value: datetime) -> datetime:
    """Times from clients without a zone are taken as UTC (the contracts say UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IdentityCommands:
    def __init__(
        self,
        settings: IdentitySettings,
        hasher: Callable[[str, int], str] = hash_password,
    ) -> None:
        self.settings = settings
        #: Hashes new passwords (scrypt); a parameter so a test can line up two registrations.
        self.hasher = hasher
        #: Checked when the e-mail is unknown, so that takes as long as a wrong password.
        self._decoy_hash = hash_password("no one's password", settings.password_scrypt_n)

    def register(self, server: CommandServer) -> None:
        server.register(RegisterUser, self.register_user)
        server.register(ApproveUser, self.approve_user)
        server.register(SuspendUser, self.suspend_user)
        server.register(ReactivateUser, self.reactivate_user)
        server.register(EraseUser, self.erase_user)
        server.register(Login, self.login, store_reply=False)
        server.register(RefreshSession, self.refresh_session, store_reply=False)
        server.register(CreateApiKey, self.create_api_key, store_reply=False)
        server.register(RevokeApiKey, self.revoke_api_key)
        server.register(RecordApiKeyUse, self.record_api_key_use)

    # -- users --------------------------------------------------------------------------

    async def register_user(self, cmd: RegisterUser, uow: UnitOfWork) -> UserProfile:
        """Claim the e-mail address and create the user in one atomic two-stream append."""
        claim = await uow.get(EmailClaim, normalise_email(cmd.email))
        user_id = new_id("usr")
        claim.claim(cmd.email, user_id)  # fails fast, before the slow hash
        user = await uow.get(User, user_id)
        password_hash = await asyncio.to_thread(
            self.hasher, cmd.password, self.settings.password_scrypt_n
        )
        now = datetime.now(UTC)
        user.register(
            user_id,
            cmd.email,
            cmd.display_name,
            cmd.role,
            password_hash,
            now,
            approved_by=CLI_APPROVER if cmd.approved else None,
        )
        return user.profile()

    async def approve_user(self, cmd: ApproveUser, uow: UnitOfWork) -> UserProfile:
        user = await uow.get(User, cmd.user_id)
        user.approve(uow.actor_id, datetime.now(UTC))
        return user.profile()

    async def suspend_user(self, cmd: SuspendUser, uow: UnitOfWork) -> UserProfile:
        user = await uow.get(User, cmd.user_id)
        user.suspend(cmd.reason, uow.actor_id, datetime.now(UTC))
        return user.profile()

    async def reactivate_user(self, cmd: ReactivateUser, uow: UnitOfWork) -> UserProfile:
        user = await uow.get(User, cmd.user_id)
        user.reactivate(uow.actor_id, datetime.now(UTC))
        return user.profile()

    async def erase_user(self, cmd: EraseUser, uow: UnitOfWork) -> UserProfile:
        """Overwrite the user's personal fields in place, then record the tombstone
        ``UserErased`` (ADR 0018). Overwriting first: a failure in between leaves the fields
        erased and the command to be sent again, never a tombstone over readable data."""
        user = await uow.get(User, cmd.user_id)
        user.require_exists()
        if not user.erased:
            assert isinstance(uow.store, EventStore), "erasure overwrites PostgreSQL rows"
            await shred(uow.store.pool, uow.store.schema, user.user_id)
            user.erase(uow.actor_id, datetime.now(UTC))
        return user.profile()

    # -- sessions -----------------------------------------------------------------------

    async def login(self, cmd: Login, uow: UnitOfWork) -> TokenPair:
        """The user is found through the e-mail claim, on the write side: no read model."""
        claim = await uow.get(EmailClaim, normalise_email(cmd.email))
        user = await uow.get(User, claim.user_id) if claim.user_id else None
        found = user is not None and user.exists and not user.erased
        stored = user.password_hash if user is not None and found else self._decoy_hash
        matches = await asyncio.to_thread(verify_password, cmd.password, stored)
        if user is None or not found or not matches:
            raise InvalidCredentials(_BAD_CREDENTIALS)
        if user.suspended:
            raise AccountSuspended(_SUSPENDED)
        if not user.approved:
            raise UserNotApproved(
                "your account is waiting for an administrator's approval",
            )
        family_id = new_id("rtf")
        family = await uow.get(RefreshFamily, family_id)
        refresh_token, secret = auth.new_refresh_token(family_id)
        now = datetime.now(UTC)
        family.issue(
            family_id, user.user_id, auth.keyed_hash(self.settings, secret), self._expiry(now)
        )
        return self._pair(user.user_id, user.role, refresh_token, now)

    async def refresh_session(self, cmd: RefreshSession, uow: UnitOfWork) -> TokenPair:
        """Exchange a refresh token for a new pair; a reused token revokes its family.

        On reuse the revocation must be stored although the command fails. Raising a
        ``DomainError`` rolls back the command's transaction, so the revocation is saved
        first through ``UnitOfWork.commit_alone``, which appends in its own transaction (it
        commits even though this handler then raises), and only then is
        ``refresh_token_reused`` raised. A version conflict there re-runs the handler like any
        other conflict. The error is not stored as the reply, so a retry with the same command
        id answers ``refresh_token_invalid``: by then the family is revoked.
        """
        parts = auth.split_refresh_token(cmd.refresh_token)
        if parts is None:
            raise RefreshTokenInvalid("malformed refresh token")
        family_id, secret = parts
        family = await uow.get(RefreshFamily, family_id)
        refresh_token, new_secret = auth.new_refresh_token(family_id)
        now = datetime.now(UTC)
        events = family.rotate(
            auth.keyed_hash(self.settings, secret),
            auth.keyed_hash(self.settings, new_secret),
            now,
            self._expiry(now),
        )
        if is_reuse(events):
            await uow.commit_alone()
            raise RefreshTokenReused(
                "this refresh token was already used; the session is revoked, log in again",
            )
        user = await uow.get(User, family.user_id)
        if user.suspended:
            raise AccountSuspended(_SUSPENDED)
        if not user.approved:
            raise RefreshTokenInvalid("the session's user is gone")
        return self._pair(user.user_id, user.role, refresh_token, now)

    def _expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.refresh_token_ttl_seconds)

    def _pair(self, user_id: str, role: str, refresh_token: str, now: datetime) -> TokenPair:
        return TokenPair(
            access_token=auth.issue_access_token(self.settings, user_id, role, now),
            expires_in_seconds=self.settings.access_token_ttl_seconds,
            refresh_token=refresh_token,
            refresh_expires_in_seconds=self.settings.refresh_token_ttl_seconds,
        )

    # -- API keys -----------------------------------------------------------------------

    async def create_api_key(self, cmd: CreateApiKey, uow: UnitOfWork) -> ApiKeySecret:
        user = await uow.get(User, cmd.user_id)
        user.require_exists()
        if user.suspended:
            raise AccountSuspended(_SUSPENDED)
        if not user.approved:
            raise UserNotApproved("API keys are for approved accounts only")
        key_id = new_id("key")
        key = await uow.get(ApiKey, key_id)
        full_key, secret = auth.new_api_key(key_id)
        key.create(
            key_id,
            cmd.user_id,
            cmd.name,
            cmd.scopes,
            auth.keyed_hash(self.settings, secret),
            cmd.spend_cap_credits,
            _utc(cmd.expires_at) if cmd.expires_at else None,
            datetime.now(UTC),
        )
        return ApiKeySecret(**key.info().model_dump(), secret=full_key)

    async def _owned_key(self, uow: UnitOfWork, key_id: str, user_id: str | None) -> ApiKey:
        key = await uow.get(ApiKey, key_id)
        if not key.exists or (user_id is not None and key.user_id != user_id):
            # Someone else's key is indistinguishable from a missing one.
            raise ApiKeyNotFound(f"no API key {key_id}")
        return key

    async def revoke_api_key(self, cmd: RevokeApiKey, uow: UnitOfWork) -> ApiKeyInfo:
        key = await self._owned_key(uow, cmd.key_id, cmd.user_id)
        key.revoke(uow.actor_id, datetime.now(UTC))
        return key.info()

    async def record_api_key_use(self, cmd: RecordApiKeyUse, uow: UnitOfWork) -> ApiKeyInfo:
        key = await self._owned_key(uow, cmd.key_id, None)
        key.record_use(_utc(cmd.used_at))
        return key.info()
