"""The notifier's command handlers (from the gateway) and its trigger-event consumer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from contracts.base import Event, JsonDict
from contracts.billing import JobCostCapReached
from contracts.errors import WebhookUrlInvalid
from contracts.identity import ApiKeyRevoked, UserErased, UserRegistered
from contracts.jobs import (
    JobCancellationRequested,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobFramesRendered,
    JobFullRenderReleased,
    JobKilled,
    JobPaused,
    JobQueued,
    JobResumed,
    JobScenePrepared,
    JobStepFailed,
    JobStepStarted,
    JobStepSucceeded,
    JobSubmitted,
    JobTestRenderCompleted,
    JobTestRenderFailed,
    JobTestRenderStarted,
)
from contracts.notifications import (
    Channel,
    DeleteWebhookEndpoint,
    EmailScheduled,
    EndpointDisabledReason,
    MarkNotificationsRead,
    NotificationPreferences,
    NotificationsMarked,
    RegisterWebhookEndpoint,
    ReplayWebhookDelivery,
    RotateWebhookSecret,
    SetNotificationPreferences,
    WebhookDelivery,
    WebhookDeliveryScheduled,
    WebhookEndpoint,
    WebhookEndpointDisabled,
    WebhookEndpointSecret,
)
from contracts.payments import PaymentFailed, TopUpCredited, TopUpOrdered
from contracts.uploads import UploadExpired
from contracts.wallet import (
    CreditsDebited,
    CreditsDeposited,
    CreditsHeld,
    HoldCaptured,
    HoldExpired,
    HoldIncreased,
    HoldVoided,
)
from libs.bus.commands import CommandServer
from libs.bus.consumer import BusEvent, Retry, claim_events, handled_events
from libs.eventstore.aggregate import Aggregate
from libs.eventstore.store import EventStore, Position, RecordedEvent
from libs.eventstore.uow import UnitOfWork
from services.notifier.addresses import check_destination
from services.notifier.domain import (
    ApiKeyBindings,
    Delivery,
    Feed,
    Mail,
    Notification,
    Preferences,
    Recipient,
    Subject,
    Webhooks,
    delivery_id,
    job_subject,
    mail_id,
    notification_id,
    owner_of,
    trigger_of,
)
from services.notifier.erasure import shred
from services.notifier.settings import NotifierSettings
from services.notifier.signing import new_secret


def check_url(url: str, allow_http: bool) -> str:
    """The URL if deliveries can go there, else :class:`WebhookUrlInvalid`."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    problem = None
    if parts.scheme not in schemes:
        problem = f"the scheme must be {' or '.join(schemes)}"
    elif not parts.hostname:
        problem = "the URL has no host"
    elif parts.username or parts.password:
        problem = "the URL may not hold credentials"
    elif parts.fragment:
        problem = "the URL may not have a fragment"
    if problem is not None:
        raise WebhookUrlInvalid(f"{url!r}: {problem}", url=url, problem=problem)
    return url


def delivery_view(d: Delivery) -> WebhookDelivery:
    assert d.kind is not None and d.created_at is not None and d.updated_at is not None
    return WebhookDelivery(
        delivery_id=d.key,
        endpoint_id=d.endpoint_id,
        notification_id=d.notification_id,
        kind=d.kind,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


class NotifierCommands:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.box = settings.secret_box()

    def register(self, server: CommandServer) -> None:
        # Replies that hold a secret are never stored: a repeated id is refused instead.
        server.register(RegisterWebhookEndpoint, self.register_endpoint, store_reply=False)
        server.register(RotateWebhookSecret, self.rotate, store_reply=False)
        server.register(DeleteWebhookEndpoint, self.delete)
        server.register(ReplayWebhookDelivery, self.replay)
        server.register(MarkNotificationsRead, self.mark_read)
        server.register(SetNotificationPreferences, self.set_preferences)

    async def register_endpoint(
        self, cmd: RegisterWebhookEndpoint, uow: UnitOfWork
    ) -> WebhookEndpointSecret:
        url = check_url(cmd.url, self.settings.webhook_allow_http)
        if not self.settings.webhook_allow_private_addresses:
            await check_destination(url)
        hooks = await uow.get(Webhooks, cmd.user_id)
        now = datetime.now(UTC)
        secret = new_secret()
        sealed = self.box.seal(secret, cmd.user_id, cmd.endpoint_id)
        endpoint = hooks.register(cmd.endpoint_id, url, cmd.kinds, cmd.api_key_id, sealed, now)
        if cmd.api_key_id is not None:
            # Refused if the key was revoked (the gateway's read model may lag); a write to
            # the key's stream, so a revocation committed meanwhile conflicts with it.
            key = await uow.get(ApiKeyBindings, cmd.api_key_id)
            key.bind(cmd.user_id, cmd.endpoint_id, now)
        if endpoint.secret != sealed:  # registered before under this id: its own secret
            secret = self.box.open(endpoint.secret, cmd.user_id, cmd.endpoint_id)
        return WebhookEndpointSecret(**endpoint.view().model_dump(), secret=secret)

    async def rotate(self, cmd: RotateWebhookSecret, uow: UnitOfWork) -> WebhookEndpointSecret:
        """A new secret, answered once: only its ciphertext is recorded."""
        hooks = await uow.get(Webhooks, cmd.user_id)
        grace = timedelta(seconds=self.settings.webhook_secret_grace_seconds)
        secret = new_secret()
        sealed = self.box.seal(secret, cmd.user_id, cmd.endpoint_id)
        endpoint = hooks.rotate(cmd.endpoint_id, sealed, grace, datetime.now(UTC))
        return WebhookEndpointSecret(**endpoint.view().model_dump(), secret=secret)

    async def delete(self, cmd: DeleteWebhookEndpoint, uow: UnitOfWork) -> WebhookEndpoint:
        hooks = await uow.get(Webhooks, cmd.user_id)
        return hooks.delete(cmd.endpoint_id, datetime.now(UTC)).view()

    async def replay(self, cmd: ReplayWebhookDelivery, uow: UnitOfWork) -> WebhookDelivery:
        delivery = await uow.get(Delivery, cmd.delivery_id)
        delivery.replay(cmd.user_id, datetime.now(UTC))
        return delivery_view(delivery)

    async def mark_read(self, cmd: MarkNotificationsRead, uow: UnitOfWork) -> NotificationsMarked:
        ids = list(dict.fromkeys(cmd.notification_ids))
        await uow.prefetch(*((Notification, i) for i in ids))
        now, marked = datetime.now(UTC), 0
        feed = await uow.get(Feed, cmd.user_id)
        for i in ids:
            notification = await uow.get(Notification, i)
            if notification.mark_read(cmd.user_id, now):
                marked += 1
                if notification.in_app:
                    data = {"notification_id": i, "read_at": now.isoformat()}
                    feed.append("notification.read", data, f"read:{i}", now)
        return NotificationsMarked(marked=marked)

    async def set_preferences(
        self, cmd: SetNotificationPreferences, uow: UnitOfWork
    ) -> NotificationPreferences:
        prefs = await uow.get(Preferences, cmd.user_id)
        prefs.change(cmd.changes, datetime.now(UTC))
        return NotificationPreferences(kinds=prefs.everything())


#: Events shown in their user's live feed besides notifications: the job's lifecycle and
#: progress (owner known from ``job.JobSubmitted``) and every wallet movement.
FEED_JOB_EVENTS: tuple[type[Event], ...] = (
    JobSubmitted,
    JobScenePrepared,
    JobTestRenderStarted,
    JobTestRenderCompleted,
    JobTestRenderFailed,
    JobFullRenderReleased,
    JobQueued,
    JobStepStarted,
    JobStepSucceeded,
    JobStepFailed,
    JobFramesRendered,
    JobPaused,
    JobResumed,
    JobKilled,
    JobCancellationRequested,
    JobCancelled,
    JobCompleted,
    JobFailed,
)
FEED_WALLET_EVENTS: tuple[type[Event], ...] = (
    CreditsDeposited,
    CreditsDebited,
    CreditsHeld,
    HoldIncreased,
    HoldCaptured,
    HoldVoided,
    HoldExpired,
)

#: Everything the consumer reads: addresses and erasures, owners, revoked keys, triggers and
#: feed items.
CONSUMED: tuple[type[Event], ...] = (
    UserRegistered,
    UserErased,
    ApiKeyRevoked,
    TopUpOrdered,
    JobCostCapReached,
    TopUpCredited,
    PaymentFailed,
    UploadExpired,
    *FEED_JOB_EVENTS,
    *FEED_WALLET_EVENTS,
)


class _AlreadyHandled(Exception):
    """An event is in the inbox: another delivery handled it meanwhile."""


class Unbatchable(Exception):
    """A batch that must be handled one event at a time."""


class TriggerEvents:
    """Trigger events into notifications and webhook deliveries: the durable consumer
    ``notifier``. Each event is claimed in the inbox in the transaction that appends what it
    caused; the notification's id comes from the event and the user, so even a redelivery
    past the inbox would find it made."""

    durable = "notifier"
    subjects = tuple(f"events.{cls.event_type}" for cls in CONSUMED)

    def __init__(
        self,
        settings: NotifierSettings,
        store: EventStore,
        scheduled: Callable[[Position], None],
        mailed: Callable[[Position], None],
    ) -> None:
        self.settings = settings
        self.store = store
        #: Wake the webhook sender and the mailer for what was scheduled up to a position.
        self.scheduled = scheduled
        self.mailed = mailed

    def _metadata(self, bus_event: BusEvent) -> JsonDict:
        return {
            "actor": {"kind": "service", "id": self.settings.service_name},
            "correlation_id": bus_event.metadata.get("correlation_id") or str(bus_event.event_id),
            "causation_id": str(bus_event.event_id),
        }

    async def handle(self, bus_event: BusEvent) -> None:
        event = bus_event.decode(self.store.registry)
        if isinstance(event, UserErased):  # the address overwritten first, then the tombstone
            await shred(self.store.pool, self.store.schema, event.user_id)
        await self._handle([bus_event])  # claimed meanwhile by another delivery: done too

    async def handle_batch(self, bus_events: Sequence[BusEvent]) -> None:
        """A fetched batch in one transaction, in order (a user's events stay in order): what
        each event causes is recorded under its own causation. Raises, with nothing kept, if
        any event of it cannot be handled now; the consumer then hands them over one by one.
        An erasure is never batched (its overwrite is a transaction of its own)."""
        if any(e.event_type == UserErased.event_type for e in bus_events):
            raise Unbatchable("an erasure is handled alone")
        if not await self._handle(bus_events):
            raise Unbatchable("another delivery handled part of the batch meanwhile")

    async def _handle(self, bus_events: Sequence[BusEvent]) -> bool:
        """Record what the events not in the inbox yet cause, and claim them, in one
        transaction; False (nothing kept) if another delivery claimed one meanwhile."""
        schema, registry = self.store.schema, self.store.registry
        try:
            async with self.store.session() as conn, conn.transaction():
                ids = [e.event_id for e in bus_events]
                handled = await handled_events(conn, schema, self.durable, ids)
                todo = list(
                    {e.event_id: e for e in bus_events if e.event_id not in handled}.values()
                )
                uow = UnitOfWork(self.store, conn=conn)
                low = self.settings.low_balance_credits
                events = [(bus_event.decode(registry), bus_event) for bus_event in todo]
                await prefetch_batch(uow, events, low)
                for event, bus_event in events:
                    uow.stamp(self._metadata(bus_event))
                    await notify(uow, event, bus_event, low)
                await uow.commit()  # the events insert is the transaction's first write
                todo_ids = [e.event_id for e in todo]
                if todo and not await claim_events(conn, schema, self.durable, todo_ids):
                    raise _AlreadyHandled
        except _AlreadyHandled:
            return False
        self._recorded(uow.recorded)
        return True

    def _recorded(self, recorded: Sequence[RecordedEvent]) -> None:
        """Wake the tailers, and the sender and the mailer for what they have to send."""
        if not recorded:
            return
        self.store.notify_appended()
        last = recorded[-1].cursor
        types = {r.event_type for r in recorded}
        if types & {WebhookDeliveryScheduled.event_type, WebhookEndpointDisabled.event_type}:
            self.scheduled(last)
        if EmailScheduled.event_type in types:
            self.mailed(last)


def public_data(event: Event) -> dict[str, Any]:
    data = event.model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in event.private_fields}


async def add_to_feed(uow: UnitOfWork, event: Event, cause: BusEvent) -> None:
    """A job or wallet event as an item of its user's live feed."""
    user_id: str | None = None
    if isinstance(event, FEED_WALLET_EVENTS):
        user_id = getattr(event, "user_id", None)
    elif isinstance(event, FEED_JOB_EVENTS):
        job_id: str = getattr(event, "job_id", "")
        subject = await uow.get(Subject, job_subject(job_id))
        if subject.user_id is None:  # its JobSubmitted has not been handled yet
            raise Retry(f"the owner of job {job_id} is not known yet")
        user_id = subject.user_id
    if user_id is not None:
        feed = await uow.get(Feed, user_id)
        feed.append(cause.event_type, public_data(event), str(cause.event_id), datetime.now(UTC))


async def disable_key_endpoints(uow: UnitOfWork, event: ApiKeyRevoked, now: datetime) -> None:
    """Disable every endpoint bound to the revoked key, once: a second revocation (the event
    again, under another id) finds the key revoked and records nothing."""
    key = await uow.get(ApiKeyBindings, event.key_id)
    for user_id, endpoint_id in key.revoke(event.revoked_at, now):
        hooks = await uow.get(Webhooks, user_id)
        hooks.disable(endpoint_id, EndpointDisabledReason.api_key_revoked, now)


def _job_id(event: Event) -> str | None:
    return getattr(event, "job_id", None) if isinstance(event, FEED_JOB_EVENTS) else None


async def prefetch_batch(
    uow: UnitOfWork, events: Sequence[tuple[Event, BusEvent]], low_balance: Decimal
) -> None:
    """Load, in two queries, what :func:`notify` will load for each of ``events``: first the
    subjects (their owners), then each user's notification, preferences, feed and
    endpoints. Only an optimisation: what is not known here (an owner recorded earlier in the
    same batch) is loaded by :func:`notify` itself."""
    triggers = [trigger_of(event, low_balance) for event, _ in events]
    subjects: set[str] = set()
    for (event, _), trigger in zip(events, triggers, strict=True):
        if (owner := owner_of(event)) is not None:
            subjects.add(owner.subject)
        if (job_id := _job_id(event)) is not None:
            subjects.add(job_subject(job_id))
        if trigger is not None and trigger.subject:
            subjects.add(trigger.subject)
    await uow.prefetch(*((Subject, s) for s in subjects))
    refs: list[tuple[type[Aggregate], str]] = []
    for (event, cause), trigger in zip(events, triggers, strict=True):
        users = (
            {getattr(event, "user_id", None)} if isinstance(event, FEED_WALLET_EVENTS) else set()
        )
        if (job_id := _job_id(event)) is not None:
            users.add((await uow.get(Subject, job_subject(job_id))).user_id)
        if trigger is not None:
            user_id = trigger.user_id
            if trigger.subject is not None:
                user_id = (await uow.get(Subject, trigger.subject)).user_id
            if user_id is not None:
                users.add(user_id)
                ntf_id = notification_id(cause.event_id, user_id, cause.recorded_at)
                refs += [(Notification, ntf_id), (Preferences, user_id), (Webhooks, user_id)]
        refs += [(Feed, user_id) for user_id in users if user_id is not None]
    await uow.prefetch(*refs)


async def notify(uow: UnitOfWork, event: Event, cause: BusEvent, low_balance: Decimal) -> None:
    """Record what an event causes: a recipient's address or its erasure (the tombstone; the
    overwriting is :func:`services.notifier.erasure.shred`'s), disabled endpoints, a
    subject's owner, a feed item, a notification with its e-mail and webhook deliveries, as
    the user's preferences say."""
    now = datetime.now(UTC)
    if isinstance(event, UserRegistered):
        (await uow.get(Recipient, event.user_id)).record_address(event.email, now)
        return
    if isinstance(event, UserErased):
        (await uow.get(Recipient, event.user_id)).erase(now)
        return
    if isinstance(event, ApiKeyRevoked):
        await disable_key_endpoints(uow, event, now)
        return
    owner = owner_of(event)
    if owner is not None:
        (await uow.get(Subject, owner.subject)).record_owner(owner, now)
    await add_to_feed(uow, event, cause)
    trigger = trigger_of(event, low_balance)
    if trigger is None:
        return
    user_id, api_key_id = trigger.user_id, None
    if trigger.subject is not None:
        subject = await uow.get(Subject, trigger.subject)
        if subject.user_id is None:  # its first event has not been handled yet
            raise Retry(f"the owner of {trigger.subject} is not known yet")
        user_id, api_key_id = subject.user_id, subject.api_key_id
    assert user_id is not None
    ntf_id = notification_id(cause.event_id, user_id, cause.recorded_at)
    # One query for every stream a notification may touch besides its deliveries.
    await uow.prefetch(
        (Notification, ntf_id), (Preferences, user_id), (Feed, user_id), (Webhooks, user_id)
    )
    notification = await uow.get(Notification, ntf_id)
    prefs = await uow.get(Preferences, user_id)
    in_app = prefs.allows(trigger.kind, Channel.in_app)
    made = notification.create(
        user_id, trigger, api_key_id, cause.event_id, cause.event_type, in_app, now
    )
    if not made:
        return
    if in_app:
        feed = await uow.get(Feed, user_id)
        feed.append("notification.created", notification.feed_item(), ntf_id, now)
    if prefs.allows(trigger.kind, Channel.email):
        uow.create(Mail, mail_id(ntf_id, now)).schedule(notification, now)
    if prefs.allows(trigger.kind, Channel.webhook):
        hooks = await uow.get(Webhooks, user_id)
        for endpoint in hooks.targets(trigger.kind, api_key_id, trigger.about_job):
            dlv = uow.create(Delivery, delivery_id(ntf_id, endpoint.endpoint_id, now))
            dlv.schedule(endpoint, notification, now)
