"""Request and response bodies of the public API that are not shared contracts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt
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
from contracts.jobs import JobStatus, StepName
from contracts.notifications import (
    MAX_URL_LENGTH,
    KindChannelsChange,
    NotificationKind,
    WebhookDelivery,
    WebhookEndpoint,
)
from contracts.outputs import MAX_DOWNLOAD_URL_SECONDS, OutputStatus
from contracts.payments import MAX_ORDER_PAISE, MIN_ORDER_PAISE, TopUpOrder
from contracts.text import ID_PATTERN, Name, Reason


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


class JobState(BaseModel):
    """Where a job stands, as its envelope says: every page about a job carries it, so no
    second call is needed to know the job's status and progress."""

    job_id: str = Field(description="The job's id.")
    job_status: JobStatus = Field(description="The job's status now (the envelope's status).")
    progress_percent: float = Field(
        ge=0,
        le=100,
        description="The job's overall progress now, 0-100 (the envelope's progress_percent).",
    )
    current_step: StepName | None = Field(
        description="The job's step running now; null if none (the envelope's current_step)."
    )

    @classmethod
    def of(cls, envelope: dict[str, Any]) -> JobState:
        """From the job's envelope (as JSON)."""
        return cls(
            job_id=envelope["job_id"],
            job_status=envelope["status"],
            progress_percent=envelope["progress_percent"],
            current_step=envelope["current_step"],
        )


class StuckJobView(BaseModel):
    """A job not finished with no progress event for a while."""

    job: JobEnvelope = Field(description="The job's envelope.")
    last_progress_at: datetime = Field(description="UTC time of its last progress event.")
    idle_seconds: int = Field(description="Seconds since then.")


class StuckJobsView(BaseModel):
    """Jobs not finished with no progress event for ``minutes``, the longest first."""

    minutes: int = Field(description="The threshold asked for.")
    items: list[StuckJobView]


class ReasonRequest(_In):
    reason: Annotated[Reason, Field(min_length=1)] = Field(
        description="Why (1-500 characters); kept in the events, shown to the user."
    )


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


class JobEventPage(JobState):
    """A page of a job's events, with where the job stands."""

    items: list[JobEventView] = Field(description="Events in the order they happened.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class JobFrameView(BaseModel):
    frame: int = Field(description="Frame number.")
    output_id: str | None = Field(
        description="The frame's output: download it with create_output_download_url. Null"
        " for frames rendered before outputs were kept in object storage."
    )
    object_key: str | None = Field(
        description="Key of the image file in the outputs bucket (null as output_id)."
    )
    size_bytes: int = Field(description="Size of the image file in bytes.")
    sha256: str = Field(description="SHA-256 of the image file, lowercase hex.")
    worker: str = Field(description="Name of the farm worker that rendered the frame.")
    rendered_at: datetime = Field(description="UTC time the frame's farm task finished.")
    task_id: int = Field(description="The farm task that rendered it (chunk_size frames a task).")
    render_seconds: float | None = Field(
        description="Seconds that task took to render, all its frames; null for frames"
        " recorded before it was kept."
    )
    peak_memory_bytes: int | None = Field(
        description="That task's peak memory on the farm worker, in bytes; null when the farm"
        " did not measure it."
    )


class JobFramePage(JobState):
    """A page of a job's rendered frames, with where the job stands."""

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


class DownloadUrlRequest(_In):
    expires_in_seconds: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_DOWNLOAD_URL_SECONDS,
        description="Seconds the URL is valid, 1-604800 (7 days); omit for the default (3600).",
    )
    thumbnail: bool = Field(
        default=False,
        description="true: the frame's JPEG thumbnail (256 px on the long side) instead of the"
        " frame; a frame without one answers output_not_found.",
    )


class JobOutputView(BaseModel):
    """A rendered frame of the job in the outputs bucket."""

    output_id: str = Field(description="Pass to create_output_download_url to download it.")
    frame: int = Field(description="Frame number.")
    status: OutputStatus = Field(
        description="ready: downloadable; deleted: removed when its retention ended."
    )
    file_name: str = Field(description="File name, e.g. frame_0001.png.")
    object_key: str = Field(description="Key of the file in the outputs bucket.")
    size_bytes: int = Field(description="Size of the file in bytes.")
    sha256: str = Field(description="SHA-256 of the file, lowercase hex.")
    stored_at: datetime = Field(description="UTC time it was stored.")
    expires_at: datetime | None = Field(
        description="UTC time it will be deleted; null while the job runs."
    )
    deleted_at: datetime | None = Field(description="UTC time it was deleted; null if it was not.")


class JobArchiveView(BaseModel):
    """The zip of all the job's frames, built when the job completes."""

    output_id: str = Field(description="Pass to create_output_download_url once ready.")
    status: OutputStatus = Field(
        description="building: being written; ready: downloadable; failed: could not be built"
        " (a frame was missing); deleted: removed when its retention ended."
    )
    file_name: str = Field(description="File name, e.g. job_01JD....zip.")
    size_bytes: int | None = Field(description="Size in bytes; null until ready.")
    sha256: str | None = Field(description="SHA-256, lowercase hex; null until ready.")
    expires_at: datetime | None = Field(description="UTC time it will be deleted.")


class JobOutputPage(JobState):
    """A page of a job's outputs, with where the job stands."""

    items: list[JobOutputView] = Field(
        description="Rendered frames, by output id (render kind, then frame number)."
    )
    archive: JobArchiveView | None = Field(
        description="The zip of every frame; null when there is none (the job has not"
        " completed, has no frames, or archives are off)."
    )
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class CreatePaymentOrderRequest(_In):
    amount_paise: StrictInt = Field(
        ge=MIN_ORDER_PAISE,
        le=MAX_ORDER_PAISE,
        description=(
            f"Amount to pay, in paise (₹1 = 100), {MIN_ORDER_PAISE}-{MAX_ORDER_PAISE}; the"
            " wallet gets amount_paise / 100 credits by default."
        ),
    )


class VerifyPaymentRequest(_In):
    razorpay_order_id: str = Field(
        min_length=1, max_length=64, pattern=ID_PATTERN, description="As Checkout handed it."
    )
    razorpay_payment_id: str = Field(
        min_length=1, max_length=64, pattern=ID_PATTERN, description="As Checkout handed it."
    )
    razorpay_signature: str = Field(
        min_length=1, max_length=200, description="As Checkout handed it (hex HMAC-SHA256)."
    )


class TopUpOrderPage(BaseModel):
    items: list[TopUpOrder] = Field(description="Top-up orders, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class NotificationPreferencesRequest(_In):
    kinds: Annotated[dict[NotificationKind, KindChannelsChange], Field(min_length=1)] = Field(
        description=(
            "Per kind, the channels to set: in_app (the list and the live feed), webhook,"
            " email; a channel left out keeps its setting."
        )
    )


class RegisterWebhookRequest(_In):
    url: Annotated[str, Field(min_length=8, max_length=MAX_URL_LENGTH)] = Field(
        description="Where to POST the notifications: an absolute https URL."
    )
    kinds: Annotated[
        list[NotificationKind], Field(min_length=1, max_length=len(NotificationKind))
    ] = Field(
        default_factory=lambda: list(NotificationKind),
        description="The notification kinds to send (default: every kind).",
    )
    api_key_id: Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)] | None = (
        Field(
            default=None,
            description=(
                "Bind the endpoint to one of your API keys: it then gets that key's jobs'"
                " notifications and those about no job. Called with an API key, the default"
                " is that key."
            ),
        )
    )


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpoint] = Field(description="Your webhook endpoints, by id.")


class DeliveryAttempt(BaseModel):
    attempt: int = Field(description="1 for the first POST, counting on across replays.")
    status_code: int | None = Field(description="The receiver's HTTP status; null if none.")
    error: str | None = Field(description="Why there was no answer (timeout, connection).")
    duration_ms: int
    succeeded: bool
    at: datetime


class WebhookDeliveryView(WebhookDelivery):
    attempt_log: list[DeliveryAttempt] = Field(description="Every attempt, oldest first.")


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryView] = Field(description="Deliveries, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class NotificationView(BaseModel):
    notification_id: str
    kind: NotificationKind
    payload: dict[str, Any] = Field(description="The kind's payload (docs/notifications.md).")
    created_at: datetime
    read_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationView] = Field(description="Notifications, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")
    unread_count: int = Field(description="How many of your notifications are unread.")
