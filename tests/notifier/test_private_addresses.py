"""Private addresses at send time (``RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` off): an
endpoint whose host resolves to loopback by the time of an attempt (DNS changed since it was
registered, or it was registered before the check existed) gets no connection; the attempt
is recorded with the reason and the delivery dead-lettered at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.notifications import NotificationKind
from libs.eventstore.uow import UnitOfWork
from libs.runtime import ServiceRuntime
from services.notifier.domain import Webhooks
from services.notifier.settings import NotifierSettings
from services.notifier.signing import new_secret
from tests.conftest import Env
from tests.notifier.conftest import Publisher, Receiver
from tests.notifier.events import triggers
from tests.notifier.test_service import query
from tests.waiting import until

USER = "usr_private"


@pytest.fixture
def notifier_settings(env: Env) -> NotifierSettings:
    return env.settings(
        NotifierSettings,
        webhook_allow_http=True,
        webhook_allow_private_addresses=False,
        webhook_timeout_seconds=3,
        webhook_retry_base_seconds=0.1,
        webhook_retry_max_delay_seconds=0.4,
        webhook_retry_window_seconds=600,
        webhook_poll_seconds=0.1,
    )


async def recorded_endpoint(rt: ServiceRuntime[Any], endpoint_id: str, url: str) -> None:
    """An endpoint as stored before its host's address was checked (no command: the
    command refuses it now)."""
    assert isinstance(rt.settings, NotifierSettings)
    sealed = rt.settings.secret_box().seal(new_secret(), USER, endpoint_id)
    uow = UnitOfWork(rt.store)
    hooks = await uow.get(Webhooks, USER)
    kinds = [NotificationKind.upload_expired]
    hooks.register(endpoint_id, url, kinds, None, sealed, datetime.now(UTC))
    await uow.commit()
    rt.store.notify_appended()


async def test_a_host_resolving_to_loopback_at_send_time_gets_no_connection(
    notifier: ServiceRuntime[Any], publisher: Publisher, receiver: Receiver
) -> None:
    await receiver.start()
    await recorded_endpoint(notifier, "whk_local", f"http://localhost:{receiver.port}/ok/a")
    await recorded_endpoint(notifier, "whk_meta", "http://169.254.169.254/latest/meta-data")
    await publisher.publish(triggers(USER, "j", "o")[NotificationKind.upload_expired])
    q = query(notifier)

    for endpoint_id, address in (("whk_local", "127.0.0.1 (loopback)"), ("whk_meta", "link")):

        async def dead(endpoint_id: str = endpoint_id) -> Any:
            rows = await q.deliveries(USER, endpoint_id, None, 10)
            done = rows and rows[0][0].status == "dead_lettered" and rows[0][1]
            return rows if done else None

        [(delivery, [attempt])] = await until(dead, f"the delivery to {endpoint_id} to end")
        assert delivery.attempts == 1 and delivery.next_attempt_at is None  # no retry
        assert attempt.status_code is None and attempt.error is not None
        assert attempt.error.startswith("refused to connect: ") and address in attempt.error
    assert receiver.received == []
