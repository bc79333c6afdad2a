"""The notifier's aggregates and rules. Pure: no I/O, no clock, no randomness (times and
jitter come in).

* ``Subject`` (``subject-<job|order>:<id>``): who a job or a top-up order belongs to.
* ``Notification`` (``notification-<id>``): one per (trigger event, user), its id derived from
  both, so a trigger delivered twice finds it made already; read once.
* ``Webhooks`` (``webhooks-<user id>``): every webhook endpoint of one user with its secrets
  (sealed), disabled ones included.
* ``ApiKeyBindings`` (``apikey-<key id>``): the endpoints bound to an API key; its revocation.
* ``Delivery`` (``delivery-<id>``): one notification to one endpoint: attempts with
  exponential back-off and jitter within a retry window, then a dead letter; replayable.
* ``Preferences`` (``preferences-<user id>``): the channels of each kind.
* ``Recipient`` (``recipient-<user id>``): the user's e-mail address, until they are erased.
* ``Mail`` (``mail-<id>``): one notification e-mailed: attempts as a delivery's.
* ``Feed`` (``feed-<user id>``): the user's live feed; its version is the items' sequence.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from contracts.base import Event
from contracts.billing import JobCostCapReached
from contracts.errors import (
    ApiKeyNotFound,
    NotificationNotFound,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    WebhookLimitReached,
)
from contracts.jobs import (
    JobCompleted,
    JobFailed,
    JobKilled,
    JobPaused,
    JobSubmitted,
    JobTestRenderCompleted,
)
from contracts.notifications import (
    MAX_ENDPOINTS_PER_USER,
    ApiKeyEndpointRecorded,
    ApiKeyRevocationRecorded,
    BalanceLow,
    Channel,
    DeliveryStatus,
    EmailAttempted,
    EmailDeadLettered,
    EmailDelivered,
    EmailScheduled,
    EndpointDisabledReason,
    FeedItemAppended,
    JobKilledPayload,
    JobPausedForCredits,
    JobStoppedAtCap,
    KindChannels,
    KindChannelsChange,
    NotificationCreated,
    NotificationKind,
    NotificationPreferencesSet,
    NotificationRead,
    PaymentFailedPayload,
    PaymentSucceeded,
    RecipientAddressRecorded,
    RecipientErased,
    RenderCompleted,
    RenderFailed,
    SealedSecret,
    SubjectOwnerRecorded,
    TestRenderReady,
    UploadExpiredPayload,
    WebhookDeliveryAttempted,
    WebhookDeliveryDeadLettered,
    WebhookDeliveryReplayed,
    WebhookDeliveryScheduled,
    WebhookDeliverySucceeded,
    WebhookEndpoint,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookEndpointRegistered,
    WebhookSecretRotated,
    all_channels_on,
)
from contracts.payments import PaymentFailed, TopUpCredited, TopUpOrdered
from contracts.uploads import UploadExpired
from contracts.wallet import CreditsDebited, CreditsHeld, HoldIncreased
from libs.eventstore.aggregate import Aggregate

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def derived_id(prefix: str, at: datetime, seed: str) -> str:
    """A time-sortable id (as :func:`libs.ids.new_id`) whose random part comes from ``seed``:
    the same seed and time give the same id."""
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | int.from_bytes(hashlib.sha256(seed.encode()).digest()[:10])
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


def notification_id(trigger_event_id: uuid.UUID, user_id: str, at: datetime) -> str:
    return derived_id("ntf", at, f"{trigger_event_id}:{user_id}")


def delivery_id(notification: str, endpoint_id: str, at: datetime) -> str:
    return derived_id("dlv", at, f"{notification}:{endpoint_id}")


def mail_id(notification: str, at: datetime) -> str:
    return derived_id("eml", at, notification)


# --- triggers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """What a trigger event makes: a notification of ``kind`` for the user, named directly
    (``user_id``) or through the owner of ``subject``."""

    kind: NotificationKind
    payload: BaseModel
    user_id: str | None = None
    subject: str | None = None

    @property
    def about_job(self) -> bool:
        return self.subject is not None and self.subject.startswith("job:")


@dataclass(frozen=True)
class Owner:
    """What a ``job.JobSubmitted`` or ``payment.TopUpOrdered`` tells about its subject."""

    subject: str
    user_id: str
    api_key_id: str | None


def job_subject(job_id: str) -> str:
    return f"job:{job_id}"


def order_subject(order_id: str) -> str:
    return f"order:{order_id}"


def owner_of(event: Event) -> Owner | None:
    match event:
        case JobSubmitted():
            return Owner(job_subject(event.job_id), event.owner_id, event.api_key_id)
        case TopUpOrdered():
            return Owner(order_subject(event.order_id), event.user_id, None)
    return None


def _fell_below(after: Decimal, amount: Decimal, threshold: Decimal) -> bool:
    """Available credits went from at or above ``threshold`` to below it."""
    return after < threshold <= after + amount


def trigger_of(event: Event, low_balance: Decimal) -> Trigger | None:
    """The notification an event makes, if any (the catalogue, ``contracts.notifications``)."""
    match event:
        case JobTestRenderCompleted():
            payload: BaseModel = TestRenderReady(job_id=event.job_id, render_id=event.render_id)
            return Trigger(
                NotificationKind.test_render_ready, payload, subject=job_subject(event.job_id)
            )
        case JobCompleted():
            payload = RenderCompleted(job_id=event.job_id)
            return Trigger(
                NotificationKind.render_completed, payload, subject=job_subject(event.job_id)
            )
        case JobFailed():
            payload = RenderFailed(job_id=event.job_id, reason=event.reason, code=event.code)
            return Trigger(
                NotificationKind.render_failed, payload, subject=job_subject(event.job_id)
            )
        case JobPaused():
            payload = JobPausedForCredits(job_id=event.job_id, reason=event.reason)
            return Trigger(NotificationKind.job_paused, payload, subject=job_subject(event.job_id))
        case JobCostCapReached():
            payload = JobStoppedAtCap(
                job_id=event.job_id,
                cap_credits=event.totals.cap_credits,
                so_far_credits=event.totals.so_far_credits,
            )
            return Trigger(NotificationKind.job_stopped, payload, subject=job_subject(event.job_id))
        case TopUpCredited():
            payload = PaymentSucceeded(
                order_id=event.order_id, payment_id=event.payment_id, credits=event.credits
            )
            return Trigger(NotificationKind.payment_succeeded, payload, user_id=event.user_id)
        case PaymentFailed():
            payload = PaymentFailedPayload(
                order_id=event.order_id,
                payment_id=event.payment_id,
                error_code=event.error_code,
                error_description=event.error_description,
            )
            return Trigger(
                NotificationKind.payment_failed, payload, subject=order_subject(event.order_id)
            )
        case CreditsHeld() | HoldIncreased() | CreditsDebited():
            available = event.balance_after - event.held_after
            if not _fell_below(available, event.amount, low_balance):
                return None
            payload = BalanceLow(available_credits=available, threshold_credits=low_balance)
            return Trigger(NotificationKind.balance_low, payload, user_id=event.user_id)
        case UploadExpired():
            payload = UploadExpiredPayload(upload_id=event.upload_id)
            return Trigger(NotificationKind.upload_expired, payload, user_id=event.owner_id)
        case JobKilled():
            payload = JobKilledPayload(
                job_id=event.job_id, job_name=event.job_name, cause=event.cause, reason=event.reason
            )
            return Trigger(NotificationKind.job_killed, payload, subject=job_subject(event.job_id))
    return None


# --- aggregates --------------------------------------------------------------------------


class Subject(Aggregate):
    """Who a job or an order belongs to, stream ``subject-<job|order>:<id>``."""

    stream_prefix = "subject"

    user_id: str | None = None
    api_key_id: str | None = None

    def apply(self, event: Event) -> None:
        if isinstance(event, SubjectOwnerRecorded):
            self.user_id, self.api_key_id = event.user_id, event.api_key_id

    def record_owner(self, owner: Owner, at: datetime) -> list[Event]:
        if self.user_id is not None:
            return []
        return self.record(
            SubjectOwnerRecorded(
                subject=owner.subject, user_id=owner.user_id, api_key_id=owner.api_key_id, at=at
            )
        )


class Notification(Aggregate):
    """One notification, stream ``notification-<id>``."""

    stream_prefix = "notification"

    exists: bool = False
    user_id: str = ""
    kind: NotificationKind | None = None
    api_key_id: str | None = None
    payload: dict[str, Any] = {}
    in_app: bool = True
    created_at: datetime | None = None
    read_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case NotificationCreated():
                self.exists, self.user_id, self.kind = True, event.user_id, event.kind
                self.api_key_id, self.payload = event.api_key_id, event.payload
                self.in_app, self.created_at = event.in_app, event.at
            case NotificationRead():
                self.read_at = event.at

    def create(
        self,
        user_id: str,
        trigger: Trigger,
        api_key_id: str | None,
        trigger_event_id: uuid.UUID,
        trigger_event_type: str,
        in_app: bool,
        at: datetime,
    ) -> list[Event]:
        """Make the notification; nothing if it was made already (the trigger came twice)."""
        if self.exists:
            return []
        return self.record(
            NotificationCreated(
                notification_id=self.key,
                user_id=user_id,
                kind=trigger.kind,
                api_key_id=api_key_id,
                payload=trigger.payload.model_dump(mode="json"),
                trigger_event_id=str(trigger_event_id),
                trigger_event_type=trigger_event_type,
                in_app=in_app,
                at=at,
            )
        )

    def feed_item(self) -> dict[str, Any]:
        """What the live feed shows of it (``notification.created``)."""
        assert self.kind is not None and self.created_at is not None
        return {
            "notification_id": self.key,
            "kind": self.kind.value,
            "payload": self.payload,
            "created_at": self.created_at.isoformat(),
        }

    def mark_read(self, user_id: str, at: datetime) -> list[Event]:
        if not self.exists or self.user_id != user_id:
            raise NotificationNotFound(f"no notification {self.key}", notification_id=self.key)
        if self.read_at is not None:
            return []
        return self.record(NotificationRead(notification_id=self.key, user_id=user_id, at=at))


class Endpoint(BaseModel):
    """One webhook endpoint as its owner's ``Webhooks`` holds it."""

    endpoint_id: str
    url: str
    kinds: list[NotificationKind]
    api_key_id: str | None
    #: Encrypted at rest (``services/notifier/sealing.py``): opened only to sign.
    secret: SealedSecret
    previous_secret: SealedSecret | None = None
    previous_expires_at: datetime | None = None
    created_at: datetime
    rotated_at: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: EndpointDisabledReason | None = None

    def secrets(self, now: datetime) -> list[SealedSecret]:
        """The secrets that sign now: the current one, and the previous one until it expires."""
        keep = self.previous_expires_at is not None and now < self.previous_expires_at
        return (
            [self.secret, self.previous_secret] if keep and self.previous_secret else [self.secret]
        )

    def takes(self, kind: NotificationKind, job_key: str | None, about_job: bool) -> bool:
        """An endpoint bound to an API key gets the notifications about that key's jobs
        (``job_key``: the key a job was submitted with) and those about no job (account-wide);
        one without a key gets every notification of the user; a disabled one gets none."""
        if kind not in self.kinds or self.disabled_at is not None:
            return False
        return self.api_key_id is None or not about_job or job_key == self.api_key_id

    def view(self) -> WebhookEndpoint:
        return WebhookEndpoint(
            endpoint_id=self.endpoint_id,
            url=self.url,
            kinds=self.kinds,
            api_key_id=self.api_key_id,
            created_at=self.created_at,
            rotated_at=self.rotated_at,
            disabled_at=self.disabled_at,
            disabled_reason=self.disabled_reason,
        )


class Webhooks(Aggregate):
    """Every webhook endpoint of one user, stream ``webhooks-<user id>``."""

    stream_prefix = "webhooks"
    #: 2: secrets are sealed (snapshots of plaintext secrets are dropped).
    snapshot_version = 2

    endpoints: dict[str, Endpoint] = {}

    def apply(self, event: Event) -> None:
        match event:
            case WebhookEndpointRegistered():
                self.endpoints = {
                    **self.endpoints,
                    event.endpoint_id: Endpoint(
                        endpoint_id=event.endpoint_id,
                        url=event.url,
                        kinds=event.kinds,
                        api_key_id=event.api_key_id,
                        secret=event.secret,
                        created_at=event.at,
                    ),
                }
            case WebhookSecretRotated():
                old = self.endpoints.get(event.endpoint_id)
                if old is not None:
                    self.endpoints = {
                        **self.endpoints,
                        event.endpoint_id: old.model_copy(
                            update={
                                "secret": event.secret,
                                "previous_secret": old.secret,
                                "previous_expires_at": event.previous_expires_at,
                                "rotated_at": event.at,
                            }
                        ),
                    }
            case WebhookEndpointDisabled():
                found = self.endpoints.get(event.endpoint_id)
                if found is not None:
                    update = {"disabled_at": event.at, "disabled_reason": event.reason}
                    self.endpoints = {
                        **self.endpoints,
                        event.endpoint_id: found.model_copy(update=update),
                    }
            case WebhookEndpointDeleted():
                self.endpoints = {k: v for k, v in self.endpoints.items() if k != event.endpoint_id}

    def endpoint(self, endpoint_id: str) -> Endpoint:
        found = self.endpoints.get(endpoint_id)
        if found is None:
            raise WebhookEndpointNotFound(
                f"no webhook endpoint {endpoint_id}", endpoint_id=endpoint_id
            )
        return found

    def register(
        self,
        endpoint_id: str,
        url: str,
        kinds: list[NotificationKind],
        api_key_id: str | None,
        secret: SealedSecret,
        at: datetime,
    ) -> Endpoint:
        if endpoint_id not in self.endpoints:
            if len(self.endpoints) >= MAX_ENDPOINTS_PER_USER:
                raise WebhookLimitReached(
                    f"at most {MAX_ENDPOINTS_PER_USER} webhook endpoints",
                    limit=MAX_ENDPOINTS_PER_USER,
                )
            self.record(
                WebhookEndpointRegistered(
                    endpoint_id=endpoint_id,
                    user_id=self.key,
                    url=url,
                    kinds=sorted(set(kinds)),
                    api_key_id=api_key_id,
                    secret=secret,
                    at=at,
                )
            )
        return self.endpoints[endpoint_id]

    def rotate(
        self, endpoint_id: str, secret: SealedSecret, grace: timedelta, at: datetime
    ) -> Endpoint:
        self.endpoint(endpoint_id)
        self.record(
            WebhookSecretRotated(
                endpoint_id=endpoint_id,
                user_id=self.key,
                secret=secret,
                previous_expires_at=at + grace,
                at=at,
            )
        )
        return self.endpoints[endpoint_id]

    def delete(self, endpoint_id: str, at: datetime) -> Endpoint:
        gone = self.endpoint(endpoint_id)
        self.record(WebhookEndpointDeleted(endpoint_id=endpoint_id, user_id=self.key, at=at))
        return gone

    def disable(self, endpoint_id: str, reason: EndpointDisabledReason, at: datetime) -> bool:
        """Take no more deliveries; nothing if it is gone or disabled already."""
        found = self.endpoints.get(endpoint_id)
        if found is None or found.disabled_at is not None:
            return False
        self.record(
            WebhookEndpointDisabled(
                endpoint_id=endpoint_id,
                user_id=self.key,
                api_key_id=found.api_key_id,
                reason=reason,
                at=at,
            )
        )
        return True

    def targets(
        self, kind: NotificationKind, job_key: str | None, about_job: bool
    ) -> list[Endpoint]:
        return [e for _, e in sorted(self.endpoints.items()) if e.takes(kind, job_key, about_job)]


class ApiKeyBindings(Aggregate):
    """The endpoints bound to one API key, and whether identity revoked it, stream
    ``apikey-<key id>`` (``identity.ApiKeyRevoked`` names the key only)."""

    stream_prefix = "apikey"

    #: (user id, endpoint id) of every endpoint ever bound to the key.
    endpoints: list[tuple[str, str]] = []
    revoked: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case ApiKeyEndpointRecorded():
                self.endpoints = [*self.endpoints, (event.user_id, event.endpoint_id)]
            case ApiKeyRevocationRecorded():
                self.revoked = True

    def check_active(self) -> None:
        if self.revoked:
            raise ApiKeyNotFound(f"no active API key {self.key}")

    def bind(self, user_id: str, endpoint_id: str, at: datetime) -> list[Event]:
        self.check_active()
        if (user_id, endpoint_id) in self.endpoints:
            return []
        return self.record(
            ApiKeyEndpointRecorded(key_id=self.key, user_id=user_id, endpoint_id=endpoint_id, at=at)
        )

    def revoke(self, revoked_at: datetime, at: datetime) -> list[tuple[str, str]]:
        """Record the revocation once; the endpoints to disable (none the second time)."""
        if self.revoked:
            return []
        self.record(ApiKeyRevocationRecorded(key_id=self.key, revoked_at=revoked_at, at=at))
        return self.endpoints


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter, within a window from the first attempt."""

    base_seconds: float
    max_delay_seconds: float
    window_seconds: float

    def delay(self, attempt: int, jitter: float) -> timedelta:
        """The wait after failed attempt ``attempt`` (1-based); ``jitter`` in [0, 1) spreads
        it over 50-100 % of the exponential step."""
        step = min(self.base_seconds * 2 ** (attempt - 1), self.max_delay_seconds)
        return timedelta(seconds=step * (0.5 + jitter / 2))

    def retry_at(
        self, attempt: int, jitter: float, at: datetime, window_start: datetime
    ) -> datetime | None:
        """When attempt ``attempt + 1`` is due, or None if that falls past the window."""
        candidate = at + self.delay(attempt, jitter)
        if candidate <= window_start + timedelta(seconds=self.window_seconds):
            return candidate
        return None


@dataclass(frozen=True)
class Outcome:
    """What one POST to the receiver gave."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> str:
        return self.error or f"HTTP {self.status_code}"


class Delivery(Aggregate):
    """One notification to one endpoint, stream ``delivery-<id>``."""

    stream_prefix = "delivery"

    exists: bool = False
    endpoint_id: str = ""
    user_id: str = ""
    notification_id: str = ""
    kind: NotificationKind | None = None
    status: DeliveryStatus = DeliveryStatus.pending
    attempts: int = 0
    #: Start of the current retry window (scheduled, or replayed).
    window_start: datetime | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def apply(self, event: Event) -> None:
        if isinstance(event, WebhookDeliveryScheduled):
            self.created_at = event.at
        self.updated_at = getattr(event, "at", self.updated_at)
        match event:
            case WebhookDeliveryScheduled():
                self.exists, self.endpoint_id, self.user_id = True, event.endpoint_id, event.user_id
                self.notification_id, self.kind = event.notification_id, event.kind
                self.window_start = self.next_attempt_at = event.due_at
            case WebhookDeliveryAttempted():
                self.attempts = event.attempt
                self.next_attempt_at = event.next_attempt_at
            case WebhookDeliverySucceeded():
                self.status = DeliveryStatus.succeeded
            case WebhookDeliveryDeadLettered():
                self.status = DeliveryStatus.dead_lettered
            case WebhookDeliveryReplayed():
                self.status = DeliveryStatus.pending
                self.window_start = self.next_attempt_at = event.due_at

    def schedule(self, endpoint: Endpoint, notification: Notification, at: datetime) -> list[Event]:
        if self.exists:
            return []
        assert notification.kind is not None
        return self.record(
            WebhookDeliveryScheduled(
                delivery_id=self.key,
                endpoint_id=endpoint.endpoint_id,
                user_id=notification.user_id,
                notification_id=notification.key,
                kind=notification.kind,
                due_at=at,
                at=at,
            )
        )

    def attempted(
        self,
        outcome: Outcome,
        policy: RetryPolicy,
        jitter: float,
        at: datetime,
        *,
        final: bool = False,
    ) -> list[Event]:
        """Record an attempt, then success, the next attempt's time or the dead letter
        (at once when ``final``: nothing could make a retry succeed)."""
        if self.status is not DeliveryStatus.pending:
            return []  # replayed or finished meanwhile by another attempt: nothing to add
        assert self.window_start is not None
        attempt = self.attempts + 1
        ids = {"delivery_id": self.key, "endpoint_id": self.endpoint_id, "user_id": self.user_id}
        retry_at: datetime | None = None
        if not outcome.succeeded and not final:
            retry_at = policy.retry_at(attempt, jitter, at, self.window_start)
        events: list[Event] = [
            WebhookDeliveryAttempted(
                **ids,
                attempt=attempt,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                succeeded=outcome.succeeded,
                next_attempt_at=retry_at,
                at=at,
            )
        ]
        if outcome.succeeded:
            events.append(WebhookDeliverySucceeded(**ids, attempts=attempt, at=at))
        elif retry_at is None:
            events.append(
                WebhookDeliveryDeadLettered(
                    **ids, attempts=attempt, last_error=outcome.describe(), at=at
                )
            )
        return self.record(*events)

    def replay(self, user_id: str, at: datetime) -> list[Event]:
        if not self.exists or self.user_id != user_id:
            raise WebhookDeliveryNotFound(f"no webhook delivery {self.key}", delivery_id=self.key)
        return self.record(
            WebhookDeliveryReplayed(
                delivery_id=self.key,
                endpoint_id=self.endpoint_id,
                user_id=self.user_id,
                due_at=at,
                at=at,
            )
        )


class Preferences(Aggregate):
    """The user's channels per kind, stream ``preferences-<user id>``."""

    stream_prefix = "preferences"

    kinds: dict[NotificationKind, KindChannels] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, NotificationPreferencesSet):
            self.kinds = dict(event.kinds)

    def channels(self, kind: NotificationKind) -> KindChannels:
        return self.kinds.get(kind) or KindChannels()

    def allows(self, kind: NotificationKind, channel: Channel) -> bool:
        return self.channels(kind).on(channel)

    def everything(self) -> dict[NotificationKind, KindChannels]:
        return {**all_channels_on(), **self.kinds}

    def change(
        self, changes: dict[NotificationKind, KindChannelsChange], at: datetime
    ) -> list[Event]:
        """Set the channels named; nothing when that changes nothing."""
        after = self.everything()
        for kind, change in changes.items():
            after[kind] = after[kind].model_copy(update=change.model_dump(exclude_none=True))
        if after == self.everything():
            return []
        return self.record(NotificationPreferencesSet(user_id=self.key, kinds=after, at=at))


class Recipient(Aggregate):
    """Where the user's e-mails go, stream ``recipient-<user id>``."""

    stream_prefix = "recipient"

    email: str | None = None
    #: identity erased the user: no address is kept, none recorded again.
    erased: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case RecipientAddressRecorded():
                self.email = event.email
            case RecipientErased():
                self.email, self.erased = None, True

    def record_address(self, email: str, at: datetime) -> list[Event]:
        """Nothing if it is known, or the user was erased (their registration redelivered)."""
        if email == self.email or self.erased:
            return []
        return self.record(RecipientAddressRecorded(user_id=self.key, email=email, at=at))

    def erase(self, at: datetime) -> list[Event]:
        """The tombstone, once (the address was overwritten in place before)."""
        if self.erased:
            return []
        return self.record(RecipientErased(user_id=self.key, at=at))


class Feed(Aggregate):
    """The user's live feed, stream ``feed-<user id>``: item n is version n."""

    stream_prefix = "feed"
    #: The state is the version alone: a load reads at most 9 items after the snapshot.
    snapshot_every = 10

    def apply(self, event: Event) -> None:
        pass  # the version is the whole state

    def append(
        self, item_type: str, data: dict[str, Any], source_event_id: str, at: datetime
    ) -> list[Event]:
        return self.record(
            FeedItemAppended(
                user_id=self.key,
                seq=self.version + 1,
                item_type=item_type,
                data=data,
                source_event_id=source_event_id,
                at=at,
            )
        )


class Mail(Aggregate):
    """One notification e-mailed to its user, stream ``mail-<id>``."""

    stream_prefix = "mail"

    exists: bool = False
    user_id: str = ""
    notification_id: str = ""
    kind: NotificationKind | None = None
    status: DeliveryStatus = DeliveryStatus.pending
    attempts: int = 0
    window_start: datetime | None = None
    next_attempt_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case EmailScheduled():
                self.exists, self.user_id = True, event.user_id
                self.notification_id, self.kind = event.notification_id, event.kind
                self.window_start = self.next_attempt_at = event.due_at
            case EmailAttempted():
                self.attempts = event.attempt
                self.next_attempt_at = event.next_attempt_at
            case EmailDelivered():
                self.status = DeliveryStatus.succeeded
            case EmailDeadLettered():
                self.status = DeliveryStatus.dead_lettered

    def schedule(self, notification: Notification, at: datetime) -> list[Event]:
        if self.exists:
            return []
        assert notification.kind is not None
        return self.record(
            EmailScheduled(
                email_id=self.key,
                user_id=notification.user_id,
                notification_id=notification.key,
                kind=notification.kind,
                due_at=at,
                at=at,
            )
        )

    def attempted(
        self,
        outcome: Outcome,
        policy: RetryPolicy,
        jitter: float,
        at: datetime,
        *,
        final: bool = False,
    ) -> list[Event]:
        """Record an attempt, then the sent mail, the next attempt's time or the dead letter
        (at once when ``final``: no address, nothing a retry could change)."""
        if self.status is not DeliveryStatus.pending:
            return []
        assert self.window_start is not None
        attempt = self.attempts + 1
        ok = outcome.error is None
        retry_at = None
        if not ok and not final:
            retry_at = policy.retry_at(attempt, jitter, at, self.window_start)
        ids = {"email_id": self.key, "user_id": self.user_id}
        events: list[Event] = [
            EmailAttempted(
                **ids,
                attempt=attempt,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                succeeded=ok,
                next_attempt_at=retry_at,
                at=at,
            )
        ]
        if ok:
            events.append(EmailDelivered(**ids, attempts=attempt, at=at))
        elif retry_at is None:
            events.append(
                EmailDeadLettered(**ids, attempts=attempt, last_error=outcome.describe(), at=at)
            )
        return self.record(*events)
