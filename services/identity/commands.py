"""Command handlers of the identity service.

Secrets. Passwords are kept only as scrypt hashes, refresh tokens and API keys only as
keyed hashes (``libs.auth.keyed_hash``). The replies of ``Login``, ``RefreshSession`` and
``CreateApiKey`` hold a secret shown once, so they are registered with
``store_reply=False``: ``processed_commands`` keeps a tombstone instead of the reply, and a
repeated command id is refused (``idempotency_key_reused``) rather than answered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from contracts.base import Event
from contracts.errors import (
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
    Login,
    RecordApiKeyUse,
    RefreshSession,
    RegisterUser,
    RevokeApiKey,
    TokenPair,
    UserProfile,
    UserStatus,
)
from libs import auth
from libs.bus.commands import CommandContext, CommandServer
from libs.eventstore.aggregate import Aggregate, Loaded, Repository
from libs.eventstore.store import EventStore
from libs.ids import new_id
from services.identity.domain import (
    ApiKey,
    EmailClaim,
    RefreshFamily,
    User,
    is_reuse,
    normalise_email,
)
from services.identity.passwords import hash_password, verify_password
from services.identity.settings import IdentitySettings

#: Who approves the users the command line registers with ``approved=True``.
CLI_APPROVER = "cli"

_BAD_CREDENTIALS = "wrong e-mail address or password"

A = TypeVar("A", bound=Aggregate)


def _utc(value: datetime) -> datetime:
    """Times from clients without a zone are taken as UTC (the contracts say UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IdentityCommands:
    def __init__(
        self,
        settings: IdentitySettings,
        store: EventStore,
        hasher: Callable[[str, int], str] = hash_password,
    ) -> None:
        self.settings = settings
        self.store = store
        #: Hashes new passwords (scrypt); a parameter so a test can line up two registrations.
        self.hasher = hasher
        self.users = Repository(store, User, "user")
        self.emails = Repository(store, EmailClaim, "email")
        self.families = Repository(store, RefreshFamily, "refresh")
        self.keys = Repository(store, ApiKey, "apikey")
        #: Checked when the e-mail is unknown, so that takes as long as a wrong password.
        self._decoy_hash = hash_password("no one's password", settings.password_scrypt_n)

    def register(self, server: CommandServer) -> None:
        server.register(RegisterUser, self.register_user)
        server.register(ApproveUser, self.approve_user)
        server.register(Login, self.login, store_reply=False)
        server.register(RefreshSession, self.refresh_session, store_reply=False)
        server.register(CreateApiKey, self.create_api_key, store_reply=False)
        server.register(RevokeApiKey, self.revoke_api_key)
        server.register(RecordApiKeyUse, self.record_api_key_use)

    # -- users --------------------------------------------------------------------------

    async def register_user(self, cmd: RegisterUser, ctx: CommandContext) -> UserProfile:
        """Claim the e-mail address and create the user in one atomic two-stream append."""
        claim = await self.emails.load(normalise_email(cmd.email))
        user_id = new_id("usr")
        claimed = claim.state.claim(cmd.email, user_id)  # fails fast, before the slow hash
        user = await self.users.load(user_id)
        password_hash = await asyncio.to_thread(
            self.hasher, cmd.password, self.settings.password_scrypt_n
        )
        now = datetime.now(UTC)
        events = user.state.register(
            user_id,
            cmd.email,
            cmd.display_name,
            cmd.role,
            password_hash,
            now,
            approved_by=CLI_APPROVER if cmd.approved else None,
        )
        await ctx.save((self.emails, claim, claimed), (self.users, user, events))
        return _evolved(user, events).profile()

    async def approve_user(self, cmd: ApproveUser, ctx: CommandContext) -> UserProfile:
        user = await self.users.load(cmd.user_id)
        events = user.state.approve(ctx.actor.id, datetime.now(UTC))
        await ctx.save((self.users, user, events))
        return _evolved(user, events).profile()

    # -- sessions -----------------------------------------------------------------------

    async def login(self, cmd: Login, ctx: CommandContext) -> TokenPair:
        row = await ctx.conn.fetchrow(
            "SELECT user_id, role, status, password_hash FROM identity.users"
            " WHERE lower(email) = $1",
            normalise_email(cmd.email),
        )
        stored = row["password_hash"] if row else self._decoy_hash
        matches = await asyncio.to_thread(verify_password, cmd.password, stored)
        if row is None or not matches:
            raise InvalidCredentials(_BAD_CREDENTIALS)
        if row["status"] != UserStatus.active:
            raise UserNotApproved(
                "your account is waiting for an administrator's approval",
            )
        family_id = new_id("rtf")
        family = await self.families.load(family_id)
        refresh_token, secret = auth.new_refresh_token(family_id)
        now = datetime.now(UTC)
        events = family.state.issue(
            family_id, row["user_id"], auth.keyed_hash(self.settings, secret), self._expiry(now)
        )
        await ctx.save((self.families, family, events))
        return self._pair(row["user_id"], row["role"], refresh_token, now)

    async def refresh_session(self, cmd: RefreshSession, ctx: CommandContext) -> TokenPair:
        """Exchange a refresh token for a new pair; a reused token revokes its family.

        On reuse the revocation must be stored although the command fails. Raising a
        ``DomainError`` rolls back the command's transaction, so the revocation is saved
        first through ``Repository.save``, which appends in its own transaction (it commits
        even though this handler then raises), and only then is ``refresh_token_reused``
        raised. A version conflict there re-runs the handler like any other conflict. The
        error is not stored as the reply, so a retry with the same command id answers
        ``refresh_token_invalid``: by then the family is revoked.
        """
        parts = auth.split_refresh_token(cmd.refresh_token)
        if parts is None:
            raise RefreshTokenInvalid("malformed refresh token")
        family_id, secret = parts
        family = await self.families.load(family_id)
        refresh_token, new_secret = auth.new_refresh_token(family_id)
        now = datetime.now(UTC)
        events = family.state.rotate(
            auth.keyed_hash(self.settings, secret),
            auth.keyed_hash(self.settings, new_secret),
            now,
            self._expiry(now),
        )
        if is_reuse(events):
            await self.families.save(family, ctx.new(*events))
            raise RefreshTokenReused(
                "this refresh token was already used; the session is revoked, log in again",
            )
        user_id = family.state.user_id
        role = await ctx.conn.fetchval(
            "SELECT role FROM identity.users WHERE user_id = $1 AND status = $2",
            user_id,
            UserStatus.active.value,
        )
        if role is None:
            raise RefreshTokenInvalid("the session's user is gone")
        await ctx.save((self.families, family, events))
        return self._pair(user_id, role, refresh_token, now)

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

    async def create_api_key(self, cmd: CreateApiKey, ctx: CommandContext) -> ApiKeySecret:
        user = await self.users.load(cmd.user_id)
        user.state.require_exists()
        if not user.state.approved:
            raise UserNotApproved("API keys are for approved accounts only")
        key_id = new_id("key")
        key = await self.keys.load(key_id)
        full_key, secret = auth.new_api_key(key_id)
        events = key.state.create(
            key_id,
            cmd.user_id,
            cmd.name,
            cmd.scopes,
            auth.keyed_hash(self.settings, secret),
            cmd.spend_cap_credits,
            _utc(cmd.expires_at) if cmd.expires_at else None,
            datetime.now(UTC),
        )
        await ctx.save((self.keys, key, events))
        info = _evolved(key, events).info()
        return ApiKeySecret(**info.model_dump(), secret=full_key)

    async def _load_key(self, key_id: str, user_id: str | None) -> Loaded[ApiKey]:
        key = await self.keys.load(key_id)
        if not key.state.exists or (user_id is not None and key.state.user_id != user_id):
            # Someone else's key is indistinguishable from a missing one.
            raise ApiKeyNotFound(f"no API key {key_id}")
        return key

    async def revoke_api_key(self, cmd: RevokeApiKey, ctx: CommandContext) -> ApiKeyInfo:
        key = await self._load_key(cmd.key_id, cmd.user_id)
        events = key.state.revoke(ctx.actor.id, datetime.now(UTC))
        if events:
            await ctx.save((self.keys, key, events))
        return _evolved(key, events).info()

    async def record_api_key_use(self, cmd: RecordApiKeyUse, ctx: CommandContext) -> ApiKeyInfo:
        key = await self._load_key(cmd.key_id, None)
        events = key.state.record_use(_utc(cmd.used_at))
        if events:
            await ctx.save((self.keys, key, events))
        return _evolved(key, events).info()


def _evolved(loaded: Loaded[A], events: Sequence[Event]) -> A:
    """The state after ``events`` (on a copy; the loaded state stays as it was saved)."""
    state = loaded.state.model_copy(deep=True)
    for e in events:
        state.apply(e)
    return state
