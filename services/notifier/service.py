"""The notifier: notifications from other services' events, in an in-app list, as signed
webhooks and as e-mails with retries, as each user's preferences say; each user's live feed
(docs/notifications.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.runtime import ServiceRuntime
from libs.service import Service
from services.notifier.addresses import PublicOnlyTransport
from services.notifier.commands import NotifierCommands, TriggerEvents
from services.notifier.mailer import Mailer
from services.notifier.projections import (
    AttemptsProjection,
    DeliveriesProjection,
    EndpointsProjection,
    FeedProjection,
    MailsProjection,
    NotificationsProjection,
    PreferencesProjection,
)
from services.notifier.sender import DeliveryWorker
from services.notifier.settings import NotifierSettings

#: Redelivery back-off of trigger events: an outage of a few minutes delays, never loses.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
MAX_DELIVER = 20


@dataclass(frozen=True)
class Notifier:
    commands: NotifierCommands
    triggers: TriggerEvents
    sender: DeliveryWorker
    mailer: Mailer


async def wire(rt: ServiceRuntime[Notifier]) -> Notifier:
    settings = rt.settings
    assert isinstance(settings, NotifierSettings)
    commands = NotifierCommands(settings)
    commands.register(rt.commands)
    limits = httpx.Limits(max_connections=settings.webhook_concurrency)
    # Every connection checked against private addresses, unless they are allowed.
    transport = None if settings.webhook_allow_private_addresses else PublicOnlyTransport(limits)
    client = httpx.AsyncClient(
        follow_redirects=False,
        limits=limits,
        transport=transport,
        headers={"user-agent": "renderfarm-webhooks/1"},
    )
    rt.on_close(client.aclose)
    sender = DeliveryWorker(settings, rt.store, rt.projectors["deliveries"], client)
    rt.background("webhook-sender", sender.run)
    mailer = Mailer(settings, rt.store, rt.projectors["mails"])
    rt.background("mailer", mailer.run)
    triggers = TriggerEvents(settings, rt.store, sender.scheduled, mailer.scheduled)
    rt.consumer(
        triggers.durable,
        triggers.subjects,
        triggers.handle,
        batch_handler=triggers.handle_batch,
        max_deliver=MAX_DELIVER,
        backoff=BACKOFF,
        batch=100,
    )

    async def sender_healthy() -> str | None:
        return None if sender.last_error is None else f"webhook sender: {sender.last_error}"

    async def mailer_healthy() -> str | None:
        return None if mailer.last_error is None else f"mailer: {mailer.last_error}"

    rt.readiness_checks += [sender_healthy, mailer_healthy]
    return Notifier(commands, triggers, sender, mailer)


SERVICE = Service(
    name="notifier",
    schema="notifier",
    settings=NotifierSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(
        NotificationsProjection(),
        EndpointsProjection(),
        DeliveriesProjection(),
        AttemptsProjection(),
        PreferencesProjection(),
        FeedProjection(),
        MailsProjection(),
    ),
    wire=wire,
    secrets=frozenset({"smtp_password", "webhook_secrets_key", "webhook_secrets_previous_keys"}),
)
