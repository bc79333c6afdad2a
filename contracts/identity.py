"""Users, roles, approval, refresh-token families and API keys: events (``identity.*``),
commands and results."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.text import IdText, Line, Name, Reason, Secret


class Role(StrEnum):
    user = "user"
    admin = "admin"


class UserStatus(StrEnum):
    pending_approval = "pending_approval"
    active = "active"
    #: An admin suspended the account: no login, no session, no API key works.
    suspended = "suspended"


class Scope(StrEnum):
    """What an API key may do. JWT sessions may do everything their role allows."""

    jobs_read = "jobs:read"
    jobs_write = "jobs:write"


Email = Annotated[
    Line,
    Field(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        description="E-mail address; used to log in.",
    ),
]
Password = Annotated[
    Line,
    Field(
        min_length=10,
        max_length=200,
        description="At least 10 characters, none of them control characters.",
    ),
]
#: What a login presents: checked against the stored hash, so only bounded here.
LoginEmail = Annotated[Line, Field(min_length=3, max_length=254, description="E-mail address.")]
LoginPassword = Annotated[Secret, Field(min_length=1, max_length=200, description="Password.")]
RefreshToken = Annotated[
    Line,
    Field(min_length=10, max_length=200, description="The refresh token from login or refresh."),
]
ApiKeyName = Annotated[
    Line, Field(min_length=1, max_length=100, description="Label, e.g. 'mcp-server'.")
]


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class EmailClaimed(Event):
    """An e-mail address was taken by a user (stream ``email-<address>``: one claim each)."""

    event_type = "identity.EmailClaimed"
    email: str
    user_id: str


@EVENTS.register
class UserRegistered(Event):
    event_type = "identity.UserRegistered"
    private_fields = frozenset({"password_hash"})
    user_id: str
    email: str
    display_name: str
    role: Role
    password_hash: str
    registered_at: datetime


@EVENTS.register
class UserApproved(Event):
    event_type = "identity.UserApproved"
    user_id: str
    approved_by: str
    approved_at: datetime


#: What an erased user's personal fields read as (``UserErased``, docs/audit.md).
ERASED = "erased"


@EVENTS.register
class UserErased(Event):
    """The user's personal data was erased (a tombstone): the e-mail address and display name
    of their earlier events were overwritten in place with ``"erased"``, and every
    projection blanks them from here on (ADR 0018)."""

    event_type = "identity.UserErased"
    user_id: str
    erased_by: str
    erased_at: datetime


@EVENTS.register
class UserSuspended(Event):
    """An admin suspended the user: every gateway process refuses the user's tokens and
    keys from now on (pushed over the bus), login is refused, and the job service stops the
    user's active jobs unless told to keep them."""

    event_type = "identity.UserSuspended"
    user_id: str
    reason: str
    suspended_by: str
    suspended_at: datetime


@EVENTS.register
class UserReactivated(Event):
    """An admin lifted the user's suspension: the status before it is back."""

    event_type = "identity.UserReactivated"
    user_id: str
    reactivated_by: str
    reactivated_at: datetime
    #: ``active``, or ``pending_approval`` for a user suspended before approval.
    status: UserStatus


@EVENTS.register
class RefreshTokenIssued(Event):
    """A login started a refresh-token family (stream ``refresh-<family id>``)."""

    event_type = "identity.RefreshTokenIssued"
    private_fields = frozenset({"token_hash"})
    family_id: str
    user_id: str
    token_hash: str
    expires_at: datetime


@EVENTS.register
class RefreshTokenRotated(Event):
    event_type = "identity.RefreshTokenRotated"
    private_fields = frozenset({"used_token_hash", "token_hash"})
    family_id: str
    used_token_hash: str
    token_hash: str
    expires_at: datetime


@EVENTS.register
class RefreshFamilyRevoked(Event):
    event_type = "identity.RefreshFamilyRevoked"
    family_id: str
    reason: str
    revoked_at: datetime


@EVENTS.register
class ApiKeyCreated(Event):
    event_type = "identity.ApiKeyCreated"
    private_fields = frozenset({"key_hash"})
    key_id: str
    user_id: str
    name: str
    scopes: list[Scope]
    key_hash: str
    spend_cap_credits: Decimal | None
    expires_at: datetime | None
    created_at: datetime


@EVENTS.register
class ApiKeyRevoked(Event):
    event_type = "identity.ApiKeyRevoked"
    key_id: str
    revoked_by: str
    revoked_at: datetime


@EVENTS.register
class ApiKeyUsed(Event):
    """Recorded at most once a minute per key."""

    event_type = "identity.ApiKeyUsed"
    key_id: str
    used_at: datetime


# --- commands and results -----------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@COMMANDS.register
class RegisterUser(Command):
    command_type = "identity.RegisterUser"
    email: Email
    password: Password
    display_name: Name
    #: Only the command line creates admins; the gateway always sends ``user``.
    role: Role = Role.user
    approved: bool = False


@COMMANDS.register
class ApproveUser(Command):
    command_type = "identity.ApproveUser"
    user_id: IdText


@COMMANDS.register
class SuspendUser(Command):
    command_type = "identity.SuspendUser"
    user_id: IdText
    reason: Annotated[Reason, Field(min_length=1)]


@COMMANDS.register
class ReactivateUser(Command):
    command_type = "identity.ReactivateUser"
    user_id: IdText


@COMMANDS.register
class EraseUser(Command):
    """Erase a user's personal data (``renderctl erase user``); a repeat changes nothing."""

    command_type = "identity.EraseUser"
    user_id: IdText


@COMMANDS.register
class Login(Command):
    command_type = "identity.Login"
    # Bounded, free of what the store cannot hold; the identity service answers the rest.
    email: Annotated[Line, Field(max_length=254)]
    password: Annotated[Secret, Field(max_length=200)]


@COMMANDS.register
class RefreshSession(Command):
    command_type = "identity.RefreshSession"
    refresh_token: Annotated[Line, Field(max_length=200)]


@COMMANDS.register
class CreateApiKey(Command):
    command_type = "identity.CreateApiKey"
    user_id: IdText
    name: ApiKeyName
    scopes: list[Scope] = Field(min_length=1)
    spend_cap_credits: Decimal | None = Field(default=None, ge=0)
    expires_at: datetime | None = None


@COMMANDS.register
class RevokeApiKey(Command):
    command_type = "identity.RevokeApiKey"
    key_id: IdText
    #: The caller's user id; null when an admin revokes.
    user_id: IdText | None


@COMMANDS.register
class RecordApiKeyUse(Command):
    command_type = "identity.RecordApiKeyUse"
    key_id: str
    used_at: datetime


class UserProfile(_Model):
    user_id: str = Field(description="User id, e.g. usr_01J...")
    email: str = Field(description="E-mail address.")
    display_name: str = Field(description="Name shown to others.")
    role: Role = Field(description="user or admin.")
    status: UserStatus = Field(
        description="pending_approval until an admin approves; suspended while an admin"
        " has suspended the account."
    )
    registered_at: datetime = Field(description="UTC registration time.")
    approved_at: datetime | None = Field(description="UTC approval time; null if pending.")


class TokenPair(_Model):
    access_token: str = Field(description="JWT for the Authorization: Bearer header.")
    token_type: str = Field(default="Bearer", description="Always Bearer.")
    expires_in_seconds: int = Field(description="Lifetime of the access token.")
    refresh_token: str = Field(
        description="Opaque; exchange once for a new pair. Reusing one revokes the session."
    )
    refresh_expires_in_seconds: int = Field(description="Lifetime of the refresh token.")


class ApiKeyInfo(_Model):
    key_id: str = Field(description="Public id of the key (the part after rfk_live_).")
    name: str = Field(description="Label chosen at creation.")
    scopes: list[Scope] = Field(description="What the key may do.")
    spend_cap_credits: Decimal | None = Field(description="Credits the key may spend; null=none.")
    created_at: datetime = Field(description="UTC creation time.")
    expires_at: datetime | None = Field(description="UTC expiry; null if it does not expire.")
    last_used_at: datetime | None = Field(description="UTC time of last use (to the minute).")
    revoked_at: datetime | None = Field(description="UTC revocation time; null if active.")


class ApiKeySecret(ApiKeyInfo):
    secret: str = Field(description="The full API key. Shown only once: store it now.")
