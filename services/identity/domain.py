"""Aggregates of the identity service: users, e-mail claims, refresh-token families, API keys.

Pure: no I/O and no clock (times come in with the command). Secrets never come in here,
only their hashes.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from decimal import Decimal

from contracts.base import Event
from contracts.errors import (
    AccountSuspended,
    CannotSuspendSelf,
    EmailTaken,
    FieldProblem,
    InternalError,
    RefreshTokenInvalid,
    UserAlreadyApproved,
    UserNotFound,
    ValidationFailed,
)
from contracts.identity import (
    ERASED,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyRevoked,
    ApiKeyUsed,
    EmailClaimed,
    RefreshFamilyRevoked,
    RefreshTokenIssued,
    RefreshTokenRotated,
    Role,
    Scope,
    UserApproved,
    UserErased,
    UserProfile,
    UserReactivated,
    UserRegistered,
    UserStatus,
    UserSuspended,
)
from libs.eventstore.aggregate import Aggregate

#: An API key's use is recorded at most this often.
API_KEY_USE_INTERVAL = timedelta(seconds=60)

REUSE_DETECTED = "reuse detected"


def normalise_email(email: str) -> str:
    """The form e-mail addresses are compared in (and the key of their claim stream)."""
    return email.strip().lower()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class User(Aggregate):
    """A user (stream ``user-<user id>``)."""

    stream_prefix = "user"

    user_id: str = ""
    email: str = ""
    display_name: str = ""
    role: Role = Role.user
    status: UserStatus | None = None
    password_hash: str = ""
    registered_at: datetime | None = None
    approved_at: datetime | None = None
    #: While suspended: the status to go back to when reactivated.
    status_before_suspension: UserStatus | None = None
    erased: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case UserRegistered():
                self.user_id, self.email = event.user_id, event.email
                self.display_name, self.role = event.display_name, event.role
                self.password_hash = event.password_hash
                self.registered_at = event.registered_at
                self.status = UserStatus.pending_approval
            case UserApproved():
                self.status, self.approved_at = UserStatus.active, event.approved_at
            case UserSuspended():
                if self.status is not UserStatus.suspended:
                    self.status_before_suspension = self.status
                self.status = UserStatus.suspended
            case UserReactivated():
                self.status, self.status_before_suspension = event.status, None
            case UserErased():
                # Its earlier events read "erased" already (overwritten in place); the
                # password hash goes too: an erased user never logs in again.
                self.email = self.display_name = ERASED
                self.password_hash, self.erased = "", True
            case _:
                raise TypeError(f"user cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def approved(self) -> bool:
        return self.status is UserStatus.active

    @property
    def suspended(self) -> bool:
        return self.status is UserStatus.suspended

    def register(
        self,
        user_id: str,
        email: str,
        display_name: str,
        role: Role,
        password_hash: str,
        now: datetime,
        *,
        approved_by: str | None = None,
    ) -> list[Event]:
        """Register; with ``approved_by`` the account is approved at once (command line)."""
        if self.exists:
            raise InternalError(f"the new user id {user_id} is taken")
        events: list[Event] = [
            UserRegistered(
                user_id=user_id,
                email=email,
                display_name=display_name,
                role=role,
                password_hash=password_hash,
                registered_at=now,
            )
        ]
        if approved_by is not None:
            events.append(UserApproved(user_id=user_id, approved_by=approved_by, approved_at=now))
        return self.record(*events)

    def approve(self, by: str, now: datetime) -> list[Event]:
        self.require_exists()
        if self.suspended:
            raise AccountSuspended(f"user {self.user_id} is suspended: reactivate them first")
        if self.approved:
            raise UserAlreadyApproved(
                f"user {self.user_id} is already approved",
                user_id=self.user_id,
            )
        return self.record(UserApproved(user_id=self.user_id, approved_by=by, approved_at=now))

    def suspend(self, reason: str, by: str, now: datetime) -> list[Event]:
        """Suspend; suspending a suspended user changes nothing. Nobody suspends themself
        (an administrator would lock themself out)."""
        self.require_exists()
        if by == self.user_id:
            raise CannotSuspendSelf("you cannot suspend your own account")
        if self.suspended:
            return []
        return self.record(
            UserSuspended(user_id=self.user_id, reason=reason, suspended_by=by, suspended_at=now)
        )

    def reactivate(self, by: str, now: datetime) -> list[Event]:
        """Lift a suspension, back to the status before it; a user not suspended: nothing."""
        self.require_exists()
        if not self.suspended:
            return []
        return self.record(
            UserReactivated(
                user_id=self.user_id,
                reactivated_by=by,
                reactivated_at=now,
                status=self.status_before_suspension or UserStatus.active,
            )
        )

    def erase(self, by: str, now: datetime) -> list[Event]:
        """The tombstone, once; the caller has overwritten the personal fields already."""
        self.require_exists()
        if self.erased:
            return []
        return self.record(UserErased(user_id=self.user_id, erased_by=by, erased_at=now))

    def require_exists(self) -> None:
        if not self.exists:
            raise UserNotFound("no such user")

    def profile(self) -> UserProfile:
        assert self.status is not None and self.registered_at is not None
        return UserProfile(
            user_id=self.user_id,
            email=self.email,
            display_name=self.display_name,
            role=self.role,
            status=self.status,
            registered_at=self.registered_at,
            approved_at=self.approved_at,
        )


class EmailClaim(Aggregate):
    """Who holds an e-mail address (stream ``email-<lower-cased address>``).

    Registration appends to this stream and the user's in one atomic write that expects
    this stream to be new, so two registrations racing for one address cannot both win.
    """

    stream_prefix = "email"

    email: str = ""
    user_id: str | None = None

    def apply(self, event: Event) -> None:
        match event:
            case EmailClaimed():
                self.email, self.user_id = event.email, event.user_id
            case _:
                raise TypeError(f"e-mail claim cannot apply {type(event).__name__}")

    def claim(self, email: str, user_id: str) -> list[Event]:
        email = normalise_email(email)
        if self.user_id is not None:
            raise EmailTaken(
                "an account with this e-mail address already exists",
                email=email,
            )
        return self.record(EmailClaimed(email=email, user_id=user_id))


class RefreshFamily(Aggregate):
    """The refresh tokens of one login session (stream ``refresh-<family id>``).

    Each token works once and is replaced by the next. Presenting a token that was already
    exchanged means it leaked (or the client misbehaves): the whole family is revoked.
    """

    stream_prefix = "refresh"

    family_id: str = ""
    user_id: str = ""
    current_hash: str = ""
    used_hashes: list[str] = []
    revoked: bool = False
    expires_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case RefreshTokenIssued():
                self.family_id, self.user_id = event.family_id, event.user_id
                self.current_hash, self.expires_at = event.token_hash, event.expires_at
            case RefreshTokenRotated():
                self.used_hashes.append(event.used_token_hash)
                self.current_hash, self.expires_at = event.token_hash, event.expires_at
            case RefreshFamilyRevoked():
                self.revoked = True
            case _:
                raise TypeError(f"refresh family cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.expires_at is not None

    def issue(
        self, family_id: str, user_id: str, token_hash: str, expires_at: datetime
    ) -> list[Event]:
        if self.exists:
            raise InternalError(f"the new family id {family_id} is taken")
        return self.record(
            RefreshTokenIssued(
                family_id=family_id, user_id=user_id, token_hash=token_hash, expires_at=expires_at
            )
        )

    def rotate(
        self, presented_hash: str, new_hash: str, now: datetime, expires_at: datetime
    ) -> list[Event]:
        """Exchange the current token for a new one.

        Records ``RefreshTokenRotated``, or ``RefreshFamilyRevoked`` when an already
        exchanged token is presented: the caller must store that revocation *and* refuse
        the request with ``refresh_token_reused`` (see :func:`is_reuse`).
        """
        if not self.exists or self.revoked or (self.expires_at and self.expires_at <= now):
            raise _refresh_invalid()
        if _same(presented_hash, self.current_hash):
            return self.record(
                RefreshTokenRotated(
                    family_id=self.family_id,
                    used_token_hash=presented_hash,
                    token_hash=new_hash,
                    expires_at=expires_at,
                )
            )
        if any(_same(presented_hash, used) for used in self.used_hashes):
            revoked = RefreshFamilyRevoked(
                family_id=self.family_id, reason=REUSE_DETECTED, revoked_at=now
            )
            return self.record(revoked)
        raise _refresh_invalid()


def is_reuse(events: list[Event]) -> bool:
    """True when :meth:`RefreshFamily.rotate` detected a reused token."""
    return any(isinstance(e, RefreshFamilyRevoked) for e in events)


def _refresh_invalid() -> RefreshTokenInvalid:
    return RefreshTokenInvalid(
        "the refresh token is unknown, expired or revoked; log in again",
    )


class ApiKey(Aggregate):
    """An API key (stream ``apikey-<key id>``); only the keyed hash of its secret is kept."""

    stream_prefix = "apikey"

    key_id: str = ""
    user_id: str = ""
    name: str = ""
    scopes: list[Scope] = []
    key_hash: str = ""
    spend_cap_credits: Decimal | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case ApiKeyCreated():
                self.key_id, self.user_id, self.name = event.key_id, event.user_id, event.name
                self.scopes, self.key_hash = list(event.scopes), event.key_hash
                self.spend_cap_credits = event.spend_cap_credits
                self.created_at, self.expires_at = event.created_at, event.expires_at
            case ApiKeyRevoked():
                self.revoked_at = event.revoked_at
            case ApiKeyUsed():
                self.last_used_at = event.used_at
            case _:
                raise TypeError(f"api key cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.created_at is not None

    def create(
        self,
        key_id: str,
        user_id: str,
        name: str,
        scopes: list[Scope],
        key_hash: str,
        spend_cap_credits: Decimal | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> list[Event]:
        if self.exists:
            raise InternalError(f"the new key id {key_id} is taken")
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed(
                "expires_at must be in the future",
                errors=[
                    FieldProblem(loc=["expires_at"], message="in the past", type="value_error")
                ],
            )
        return self.record(
            ApiKeyCreated(
                key_id=key_id,
                user_id=user_id,
                name=name,
                scopes=sorted(set(scopes)),
                key_hash=key_hash,
                spend_cap_credits=spend_cap_credits,
                expires_at=expires_at,
                created_at=now,
            )
        )

    def revoke(self, by: str, now: datetime) -> list[Event]:
        """Revoke; revoking a revoked key changes nothing."""
        if self.revoked_at is not None:
            return []
        return self.record(ApiKeyRevoked(key_id=self.key_id, revoked_by=by, revoked_at=now))

    def record_use(self, now: datetime) -> list[Event]:
        """Note a use, at most once a minute (and never for a revoked key)."""
        if self.revoked_at is not None:
            return []
        if self.last_used_at is not None and now - self.last_used_at < API_KEY_USE_INTERVAL:
            return []
        return self.record(ApiKeyUsed(key_id=self.key_id, used_at=now))

    def info(self) -> ApiKeyInfo:
        assert self.created_at is not None
        return ApiKeyInfo(
            key_id=self.key_id,
            name=self.name,
            scopes=self.scopes,
            spend_cap_credits=self.spend_cap_credits,
            created_at=self.created_at,
            expires_at=self.expires_at,
            last_used_at=self.last_used_at,
            revoked_at=self.revoked_at,
        )
