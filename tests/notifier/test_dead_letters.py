"""A delivery that fails for its whole retry window is dead-lettered, then replayed by its
user and delivered (a window of one second, in a module of its own so no other test runs
with it)."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from contracts.notifications import (
    NotificationKind,
    ReplayWebhookDelivery,
    WebhookDelivery,
)
from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime
from services.notifier.settings import NotifierSettings
from tests.conftest import Env
from tests.notifier.conftest import ACTOR, Publisher, Receiver
from tests.notifier.events import triggers
from tests.notifier.test_service import USER, query, register
from tests.waiting import until


@pytest.fixture
def notifier_settings(env: Env) -> NotifierSettings:
    """A retry window of a second: deliveries to a failing receiver are dead-lettered."""
    return env.settings(
        NotifierSettings,
        webhook_allow_http=True,
        webhook_allow_private_addresses=True,
        webhook_timeout_seconds=3,
        webhook_retry_base_seconds=0.1,
        webhook_retry_max_delay_seconds=0.2,
        webhook_retry_window_seconds=1,
        webhook_poll_seconds=0.1,
    )


async def test_a_delivery_failing_for_its_window_is_dead_lettered_then_replayed(
    notifier: ServiceRuntime[Any],
    commands: CommandClient,
    publisher: Publisher,
    receiver: Receiver,
) -> None:
    await receiver.start()
    failing = await register(commands, receiver.url("/fail"), [NotificationKind.upload_expired])
    await publisher.publish(triggers(USER, "j", "o")[NotificationKind.upload_expired])
    q = query(notifier)

    async def dead() -> Any:
        rows = await q.deliveries(USER, failing.endpoint_id, None, 10)
        # The attempts are a read model of their own: wait for it to show them all too.
        done = rows and rows[0][0].status == "dead_lettered"
        return rows if done and len(rows[0][1]) == rows[0][0].attempts else None

    [(delivery, attempts)] = await until(dead, "the delivery to be dead-lettered")
    assert len(attempts) >= 2 and all(a.status_code == 500 for a in attempts)
    assert delivery.next_attempt_at is None
    receiver.failing = False
    replayed = await commands.send(
        ReplayWebhookDelivery(user_id=USER, delivery_id=delivery.delivery_id),
        WebhookDelivery,
        command_id="replay:1",
        actor=ACTOR,
    )
    assert replayed.status == "pending"

    async def delivered() -> Any:
        rows = await q.deliveries(USER, failing.endpoint_id, None, 10)
        done = rows[0][0].status == "succeeded"
        return rows if done and len(rows[0][1]) == rows[0][0].attempts else None

    [(_, attempts)] = await until(delivered, "the replayed delivery to succeed")
    assert attempts[-1].status_code == 204 and attempts[-1].attempt == len(attempts)
    ids = {r.headers["webhook-id"] for r in receiver.at("/fail")}
    assert len(ids) == 1  # the same message id on every attempt and the replay
    Webhook(failing.secret).verify(receiver.at("/fail")[-1].body, receiver.at("/fail")[-1].headers)
