"""Request and response bodies of the public API that are not shared contracts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from contracts.envelope import JobEnvelope
from contracts.gateway import ApiCall
from contracts.identity import (
    ApiKeyInfo,
    ApiKeyName,
    Email,
    LoginEmail,
    LoginPassword,
    Password,
    RefreshToken,
    Scope,
    UserProfile,
)
from contracts.text import Name


def _date_time_text(value: object) -> object:
    """JSON has no date-time type: the OpenAPI says string, so a number is refused."""
    if value is None or isinstance(value, str | datetime):
        return value
    raise PydanticCustomError("datetime_type", "Input should be an ISO-8601 date-time string")


DateTimeText = Annotated[datetime, BeforeValidator(_date_time_text)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(_In):
    email: Email
    password: Password
    display_name: Name = Field(description="Name shown to others.")


class LoginRequest(_In):
    email: LoginEmail
    password: LoginPassword


class RefreshRequest(_In):
    refresh_token: RefreshToken


class CreateApiKeyRequest(_In):
    name: ApiKeyName
    scopes: list[Scope] = Field(min_length=1, description="What the key may do.")
    spend_cap_credits: Decimal | None = Field(
        default=None,
        ge=0,
        max_digits=14,
        decimal_places=4,
        description="Most credits the key may spend; null for no cap.",
    )
    expires_at: DateTimeText | None = Field(
        default=None, description="UTC expiry; null if the key does not expire."
    )


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobEnvelope] = Field(description="Job envelopes, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class JobEventView(BaseModel):
    version: int = Field(description="Position of the event in the job's history, from 1.")
    type: str = Field(description="Event type, e.g. job.JobSubmitted.")
    schema_version: int = Field(
        description="Schema version of the event type that data follows: always the current one"
        " (events stored in an older version are upcast)."
    )
    recorded_at: datetime = Field(description="UTC time the event was recorded.")
    actor_id: str | None = Field(description="Who caused it (user id or service); null if unknown.")
    data: dict[str, Any] = Field(
        description="The event's fields in the current schema of its type; private fields"
        " (hashes of secrets) are 'redacted'."
    )


class JobEventPage(BaseModel):
    items: list[JobEventView] = Field(description="Events in the order they happened.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class JobFrameView(BaseModel):
    frame: int = Field(description="Frame number.")
    path: str = Field(description="Where the farm wrote the frame's image file.")
    size_bytes: int = Field(description="Size of the image file in bytes.")
    sha256: str = Field(description="SHA-256 of the image file, lowercase hex.")
    worker: str = Field(description="Name of the farm worker that rendered the frame.")
    rendered_at: datetime = Field(description="UTC time the frame's farm task finished.")


class JobFramePage(BaseModel):
    items: list[JobFrameView] = Field(description="Rendered frames, by frame number ascending.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class UserPage(BaseModel):
    items: list[UserProfile] = Field(description="Users ordered by id.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class ApiCallPage(BaseModel):
    items: list[ApiCall] = Field(description="API calls from the action log, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyInfo] = Field(description="The caller's API keys, ordered by id.")
