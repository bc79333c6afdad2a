"""Notifications: the catalogue of kinds (trigger event, payload), the notifier's events and
commands, and what the API answers about notifications, webhook endpoints and deliveries.

A notification is made once per (trigger event, user) and shown in the user's in-app list;
each of the user's webhook endpoints that takes its kind gets one delivery of it, signed as
the Standard Webhooks specification says (``docs/notifications.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.billing import JobCostCapReached
from contracts.jobs import (
    JobCompleted,
    JobFailed,
    JobKilled,
    JobPaused,
    JobTestRenderCompleted,
    KillCause,
)
from contracts.payments import PaymentFailed, TopUpCredited
from contracts.uploads import UploadExpired
from contracts.wallet import CreditsDebited, CreditsHeld, HoldIncreased

#: Most webhook endpoints one user may register.
MAX_ENDPOINTS_PER_USER = 10
#: Most notifications one MarkNotificationsRead marks.
MAX_MARKED_AT_ONCE = 500
#: Longest endpoint URL.
MAX_URL_LENGTH = 2000
#: Feed items one read answers at most (a client resuming from far back gets them in pages).
FEED_PAGE = 500


class NotificationKind(StrEnum):
    test_render_ready = "test_render.ready"
    render_completed = "render.completed"
    render_failed = "render.failed"
    job_paused = "job.paused"
    job_stopped = "job.stopped"
    payment_succeeded = "payment.succeeded"
    payment_failed = "payment.failed"
    balance_low = "balance.low"
    upload_expired = "upload.expired"
    job_killed = "job.killed"


# --- payloads (the ``data`` of a notification and of its webhook body) -------------------


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TestRenderReady(_Payload):
    """The job's test frames are rendered: look at them before the full render."""

    __test__ = False  # not a pytest class
    job_id: str
    render_id: str


class RenderCompleted(_Payload):
    job_id: str


class RenderFailed(_Payload):
    job_id: str
    reason: str
    code: str | None


class JobPausedForCredits(_Payload):
    """The job waits: ``reason`` is ``insufficient_credits`` (top up) or
    ``spend_cap_reached`` (the API key's spend cap)."""

    job_id: str
    reason: str


class JobStoppedAtCap(_Payload):
    """The job's cost reached its cap: it is stopped and charged at most the cap."""

    job_id: str
    cap_credits: Decimal | None
    so_far_credits: Decimal


class PaymentSucceeded(_Payload):
    order_id: str
    payment_id: str
    credits: Decimal


class PaymentFailedPayload(_Payload):
    """A payment attempt failed; the order can still be paid."""

    order_id: str
    payment_id: str
    error_code: str | None
    error_description: str | None


class BalanceLow(_Payload):
    """Available credits fell below the threshold."""

    available_credits: Decimal
    threshold_credits: Decimal


class UploadExpiredPayload(_Payload):
    upload_id: str


class JobKilledPayload(_Payload):
    """An administrator stopped the job (``cause``: ``admin_kill``) or suspended its owner
    (``user_suspended``); its cost so far is charged."""

    job_id: str
    job_name: str
    cause: KillCause
    reason: str


@dataclass(frozen=True)
class KindSpec:
    """One row of the catalogue."""

    kind: NotificationKind
    #: The events that make it (wire names).
    triggers: tuple[str, ...]
    payload: type[_Payload]
    #: When it is made.
    when: str


CATALOGUE: dict[NotificationKind, KindSpec] = {
    s.kind: s
    for s in (
        KindSpec(
            NotificationKind.test_render_ready,
            (JobTestRenderCompleted.event_type,),
            TestRenderReady,
            "the test render's frames are all rendered",
        ),
        KindSpec(
            NotificationKind.render_completed,
            (JobCompleted.event_type,),
            RenderCompleted,
            "the job completed: every frame is rendered",
        ),
        KindSpec(
            NotificationKind.render_failed,
            (JobFailed.event_type,),
            RenderFailed,
            "the job failed (code: a stable error code, e.g. cost_cap_reached)",
        ),
        KindSpec(
            NotificationKind.job_paused,
            (JobPaused.event_type,),
            JobPausedForCredits,
            "the job was paused for credits or its API key's spend cap",
        ),
        KindSpec(
            NotificationKind.job_stopped,
            (JobCostCapReached.event_type,),
            JobStoppedAtCap,
            "the job's cost reached its cap: it is being stopped",
        ),
        KindSpec(
            NotificationKind.payment_succeeded,
            (TopUpCredited.event_type,),
            PaymentSucceeded,
            "a top-up was paid and its credits are in the wallet",
        ),
        KindSpec(
            NotificationKind.payment_failed,
            (PaymentFailed.event_type,),
            PaymentFailedPayload,
            "a payment attempt for a top-up failed",
        ),
        KindSpec(
            NotificationKind.balance_low,
            (CreditsHeld.event_type, HoldIncreased.event_type, CreditsDebited.event_type),
            BalanceLow,
            "available credits went from at or above the threshold to below it",
        ),
        KindSpec(
            NotificationKind.upload_expired,
            (UploadExpired.event_type,),
            UploadExpiredPayload,
            "an upload session was not completed in time and its parts are gone",
        ),
        KindSpec(
            NotificationKind.job_killed,
            (JobKilled.event_type,),
            JobKilledPayload,
            "an administrator killed the job, or suspended its owner's account",
        ),
    )
}

WebhookUrl = Annotated[str, Field(min_length=8, max_length=MAX_URL_LENGTH)]
Kinds = Annotated[list[NotificationKind], Field(min_length=1, max_length=len(NotificationKind))]


class Channel(StrEnum):
    """Where a notification goes: the in-app list (and the live feed), webhooks, e-mail."""

    in_app = "in_app"
    webhook = "webhook"
    email = "email"


class KindChannels(BaseModel):
    """The channels one kind goes to; every one is on until the user turns it off."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    in_app: bool = True
    webhook: bool = True
    email: bool = True

    def on(self, channel: Channel) -> bool:
        return bool(getattr(self, channel.value))


class KindChannelsChange(BaseModel):
    """A change to one kind's channels: the fields given are set, the others kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    in_app: bool | None = None
    webhook: bool | None = None
    email: bool | None = None


def all_channels_on() -> dict[NotificationKind, KindChannels]:
    return {k: KindChannels() for k in NotificationKind}


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its next attempt
    succeeded = "succeeded"  # the receiver answered 2xx
    dead_lettered = "dead_lettered"  # every attempt failed for the retry window


#: The key id of a secret recorded before secrets were encrypted (schema 1 events, upcast):
#: its ``ciphertext`` is the secret itself.
PLAINTEXT_KEY_ID = "plaintext"


class SealedSecret(BaseModel):
    """A webhook signing secret encrypted at rest (AES-256-GCM, ``services/notifier/sealing.py``):
    the id of the key that sealed it, the nonce and the ciphertext with its tag (base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    key_id: str
    nonce: str
    ciphertext: str


def _sealed_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 stored the secret in the clear: it reads as sealed with ``plaintext``."""
    plain = {"key_id": PLAINTEXT_KEY_ID, "nonce": "", "ciphertext": data["secret"]}
    return {**data, "secret": plain}


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class SubjectOwnerRecorded(Event):
    """Who a job or a top-up order belongs to (stream ``subject-<job|order>:<id>``), so the
    job's and order's later events, which do not name the user, reach them."""

    event_type = "notifier.SubjectOwnerRecorded"
    subject: str
    user_id: str
    api_key_id: str | None
    at: datetime


@EVENTS.register
class NotificationCreated(Event):
    """A notification for a user (stream ``notification-<id>``; the id is derived from the
    trigger event and the user, so a trigger delivered twice makes one)."""

    event_type = "notifier.NotificationCreated"
    schema_version = 2
    notification_id: str
    user_id: str
    kind: NotificationKind
    #: The API key of the job it is about (its endpoints get it too); null otherwise.
    api_key_id: str | None
    payload: dict[str, Any]
    trigger_event_id: str
    trigger_event_type: str
    #: Shown in the in-app list and the live feed (schema 2; the user's preference).
    in_app: bool
    at: datetime


@EVENTS.upcaster(NotificationCreated.event_type, from_version=1)
def _created_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no preferences: every notification was listed."""
    return {**data, "in_app": True}


@EVENTS.register
class NotificationRead(Event):
    event_type = "notifier.NotificationRead"
    notification_id: str
    user_id: str
    at: datetime


@EVENTS.register
class WebhookEndpointRegistered(Event):
    """Stream ``webhooks-<user id>``: every endpoint of the user."""

    event_type = "notifier.WebhookEndpointRegistered"
    schema_version = 2
    private_fields = frozenset({"secret"})
    endpoint_id: str
    user_id: str
    url: str
    kinds: list[NotificationKind]
    api_key_id: str | None
    #: Encrypted (schema 2; schema 1 held it in the clear, upcast with key id ``plaintext``).
    secret: SealedSecret
    at: datetime


EVENTS.upcaster(WebhookEndpointRegistered.event_type, from_version=1)(_sealed_v1)


@EVENTS.register
class WebhookSecretRotated(Event):
    """A new secret signs from now on; the previous one signs too until
    ``previous_expires_at``."""

    event_type = "notifier.WebhookSecretRotated"
    schema_version = 2
    private_fields = frozenset({"secret"})
    endpoint_id: str
    user_id: str
    #: Encrypted, as ``WebhookEndpointRegistered``'s (schema 2).
    secret: SealedSecret
    previous_expires_at: datetime
    at: datetime


EVENTS.upcaster(WebhookSecretRotated.event_type, from_version=1)(_sealed_v1)


class EndpointDisabledReason(StrEnum):
    """Why an endpoint takes no more deliveries."""

    #: It was bound to an API key, and identity revoked that key.
    api_key_revoked = "api_key_revoked"


@EVENTS.register
class WebhookEndpointDisabled(Event):
    """The endpoint takes no more deliveries (its pending ones are dead-lettered); it stays
    listed, with the reason, until deleted."""

    event_type = "notifier.WebhookEndpointDisabled"
    endpoint_id: str
    user_id: str
    api_key_id: str | None
    reason: EndpointDisabledReason
    at: datetime


@EVENTS.register
class ApiKeyEndpointRecorded(Event):
    """An endpoint was bound to an API key (stream ``apikey-<key id>``), so the key's
    revocation, which names only the key, finds it."""

    event_type = "notifier.ApiKeyEndpointRecorded"
    key_id: str
    user_id: str
    endpoint_id: str
    at: datetime


@EVENTS.register
class ApiKeyRevocationRecorded(Event):
    """identity revoked the key (``identity.ApiKeyRevoked``): its endpoints are disabled, and
    no endpoint is bound to it from now on (stream ``apikey-<key id>``)."""

    event_type = "notifier.ApiKeyRevocationRecorded"
    key_id: str
    revoked_at: datetime
    at: datetime


@EVENTS.register
class WebhookEndpointDeleted(Event):
    event_type = "notifier.WebhookEndpointDeleted"
    endpoint_id: str
    user_id: str
    at: datetime


@EVENTS.register
class WebhookDeliveryScheduled(Event):
    """A notification is to be sent to an endpoint (stream ``delivery-<id>``)."""

    event_type = "notifier.WebhookDeliveryScheduled"
    delivery_id: str
    endpoint_id: str
    user_id: str
    notification_id: str
    kind: NotificationKind
    due_at: datetime
    at: datetime


@EVENTS.register
class WebhookDeliveryAttempted(Event):
    """One POST to the receiver: its answer (``status_code``) or why there was none."""

    event_type = "notifier.WebhookDeliveryAttempted"
    delivery_id: str
    endpoint_id: str
    user_id: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    succeeded: bool
    #: When the next attempt is due; null when none follows.
    next_attempt_at: datetime | None
    at: datetime


@EVENTS.register
class WebhookDeliverySucceeded(Event):
    event_type = "notifier.WebhookDeliverySucceeded"
    delivery_id: str
    endpoint_id: str
    user_id: str
    attempts: int
    at: datetime


@EVENTS.register
class WebhookDeliveryDeadLettered(Event):
    """Every attempt within the retry window failed: no more are made unless replayed."""

    event_type = "notifier.WebhookDeliveryDeadLettered"
    delivery_id: str
    endpoint_id: str
    user_id: str
    attempts: int
    last_error: str
    at: datetime


@EVENTS.register
class WebhookDeliveryReplayed(Event):
    """The user asked for the delivery to be sent again: due at once, a new retry window."""

    event_type = "notifier.WebhookDeliveryReplayed"
    delivery_id: str
    endpoint_id: str
    user_id: str
    due_at: datetime
    at: datetime


@EVENTS.register
class NotificationPreferencesSet(Event):
    """The user's channels per kind, as they are from now on (stream ``preferences-<user>``)."""

    event_type = "notifier.NotificationPreferencesSet"
    user_id: str
    kinds: dict[NotificationKind, KindChannels]
    at: datetime


@EVENTS.register
class RecipientAddressRecorded(Event):
    """The address e-mails to the user go to, from identity's ``UserRegistered`` (stream
    ``recipient-<user>``). Private: masked on the bus."""

    event_type = "notifier.RecipientAddressRecorded"
    private_fields = frozenset({"email"})
    user_id: str
    email: str
    at: datetime


@EVENTS.register
class RecipientErased(Event):
    """identity erased the user (``identity.UserErased``): the address was overwritten in
    place with ``"erased"`` in the notifier's stored events (``services/notifier/erasure.py``,
    ADR 0018), and none is recorded for the user from now on (a tombstone, stream
    ``recipient-<user>``)."""

    event_type = "notifier.RecipientErased"
    user_id: str
    at: datetime


@EVENTS.register
class EmailScheduled(Event):
    """A notification is to be e-mailed to its user (stream ``mail-<id>``; the id derived
    from the notification's, so one per notification)."""

    event_type = "notifier.EmailScheduled"
    email_id: str
    user_id: str
    notification_id: str
    kind: NotificationKind
    due_at: datetime
    at: datetime


@EVENTS.register
class EmailAttempted(Event):
    """One hand-over to the SMTP server: accepted, or why not."""

    event_type = "notifier.EmailAttempted"
    email_id: str
    user_id: str
    attempt: int
    error: str | None
    duration_ms: int
    succeeded: bool
    #: When the next attempt is due; null when none follows.
    next_attempt_at: datetime | None
    at: datetime


@EVENTS.register
class EmailDelivered(Event):
    event_type = "notifier.EmailDelivered"
    email_id: str
    user_id: str
    attempts: int
    at: datetime


@EVENTS.register
class EmailDeadLettered(Event):
    """Every attempt within the retry window failed (or there is no address): no more."""

    event_type = "notifier.EmailDeadLettered"
    email_id: str
    user_id: str
    attempts: int
    last_error: str
    at: datetime


@EVENTS.register
class FeedItemAppended(Event):
    """One item of the user's live feed (stream ``feed-<user>``): ``seq`` is the stream's
    version, 1, 2, 3, ... with no gaps, the cursor a client resumes from. ``item_type`` is
    the source event's type (``job.JobCompleted``, ``wallet.CreditsHeld``) or
    ``notification.created`` / ``notification.read``; ``data`` its public fields."""

    event_type = "notifier.FeedItemAppended"
    user_id: str
    seq: int
    item_type: str
    data: dict[str, Any]
    source_event_id: str
    at: datetime


# --- replies -----------------------------------------------------------------------------


class WebhookEndpoint(BaseModel):
    endpoint_id: str
    url: str
    kinds: list[NotificationKind]
    api_key_id: str | None
    created_at: datetime
    #: When the secret was last rotated; null if never.
    rotated_at: datetime | None
    #: When it was disabled (it takes no deliveries), and why; null while it is enabled.
    disabled_at: datetime | None = None
    disabled_reason: EndpointDisabledReason | None = None


class WebhookEndpointSecret(WebhookEndpoint):
    """An endpoint with its signing secret (``whsec_<base64>``): answered once."""

    secret: str


class WebhookDelivery(BaseModel):
    delivery_id: str
    endpoint_id: str
    notification_id: str
    kind: NotificationKind
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


class NotificationPreferences(BaseModel):
    """Every kind with its channels."""

    kinds: dict[NotificationKind, KindChannels]


class NotificationsMarked(BaseModel):
    #: How many of the named notifications were unread and are read now.
    marked: int


# --- commands (from the gateway) ---------------------------------------------------------


@COMMANDS.register
class RegisterWebhookEndpoint(Command):
    command_type = "notifier.RegisterWebhookEndpoint"
    user_id: str
    endpoint_id: str
    url: WebhookUrl
    kinds: Kinds
    api_key_id: str | None = None


@COMMANDS.register
class RotateWebhookSecret(Command):
    command_type = "notifier.RotateWebhookSecret"
    user_id: str
    endpoint_id: str


@COMMANDS.register
class DeleteWebhookEndpoint(Command):
    command_type = "notifier.DeleteWebhookEndpoint"
    user_id: str
    endpoint_id: str


@COMMANDS.register
class ReplayWebhookDelivery(Command):
    command_type = "notifier.ReplayWebhookDelivery"
    user_id: str
    delivery_id: str


@COMMANDS.register
class MarkNotificationsRead(Command):
    command_type = "notifier.MarkNotificationsRead"
    user_id: str
    notification_ids: Annotated[list[str], Field(min_length=1, max_length=MAX_MARKED_AT_ONCE)]


@COMMANDS.register
class SetNotificationPreferences(Command):
    """Change some kinds' channels; the kinds and channels not named are kept."""

    command_type = "notifier.SetNotificationPreferences"
    user_id: str
    changes: Annotated[dict[NotificationKind, KindChannelsChange], Field(min_length=1)]
