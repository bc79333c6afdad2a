"""The notifier's handlers on the in-memory unit of work: every trigger delivered twice makes
one notification and one delivery per endpoint; endpoints, rotation, replay and reading."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from contracts.base import Event
from contracts.errors import (
    ApiKeyNotFound,
    NotificationNotFound,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    WebhookUrlInvalid,
    WebhookUrlNotAllowed,
)
from contracts.identity import ApiKeyRevoked
from contracts.notifications import (
    DeleteWebhookEndpoint,
    MarkNotificationsRead,
    NotificationCreated,
    NotificationKind,
    RegisterWebhookEndpoint,
    ReplayWebhookDelivery,
    RotateWebhookSecret,
    WebhookDeliveryScheduled,
    WebhookEndpointDisabled,
)
from libs.bus.consumer import BusEvent, Retry
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.uow import UnitOfWork
from services.notifier.commands import NotifierCommands, notify
from services.notifier.sealing import new_key
from services.notifier.settings import NotifierSettings
from tests.notifier.events import AT, owners, triggers

LOW = Decimal("10")


def bus_event(event: Event, event_id: uuid.UUID | None = None) -> BusEvent:
    return BusEvent(
        event_id=event_id or uuid.uuid4(),
        stream_id="s",
        version=1,
        event_type=event.event_type,
        schema_version=event.schema_version,
        position=1,
        recorded_at=AT,
        data=event.model_dump(mode="json"),
        metadata={},
        deliveries=1,
    )


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore("notifier")


@pytest.fixture
def commands() -> NotifierCommands:
    return NotifierCommands(
        NotifierSettings(webhook_allow_http=False, webhook_secrets_key=new_key())
    )


async def run(store: InMemoryEventStore, cause: BusEvent) -> int:
    """What ``cause`` makes; the number of webhook deliveries scheduled."""
    uow = UnitOfWork(store)
    await notify(uow, cause.decode(), cause, LOW)
    done = await uow.commit()
    return sum(r.event_type == WebhookDeliveryScheduled.event_type for r in done)


async def recorded(store: InMemoryEventStore, cls: type[Event]) -> list[Event]:
    return [
        e.decode()
        for e in await store.read_by_position(0, 100_000)
        if e.event_type == cls.event_type
    ]


async def register(
    store: InMemoryEventStore, commands: NotifierCommands, user: str, **fields: object
) -> str:
    cmd = RegisterWebhookEndpoint(
        user_id=user,
        endpoint_id=f"whk_{uuid.uuid4().hex[:8]}",
        **{"url": "https://hooks.example/in", "kinds": list(NotificationKind), **fields},
    )
    uow = UnitOfWork(store)
    answer = await commands.register_endpoint(cmd, uow)
    await uow.commit()
    assert answer.secret.startswith("whsec_")
    return answer.endpoint_id


async def test_each_kind_delivered_twice_makes_one_notification_and_one_delivery_each(
    store: InMemoryEventStore, commands: NotifierCommands
) -> None:
    first = await register(store, commands, "usr_1")
    second = await register(store, commands, "usr_1")
    for event in owners("usr_1", "job_1", "ord_1"):
        cause = bus_event(event)
        assert await run(store, cause) == 0
        assert await run(store, cause) == 0
    for event in triggers("usr_1", "job_1", "ord_1").values():
        cause = bus_event(event)
        assert await run(store, cause) == 2
        assert await run(store, cause) == 0  # the same event again
    made = await recorded(store, NotificationCreated)
    assert sorted(e.kind for e in made if isinstance(e, NotificationCreated)) == sorted(
        NotificationKind
    )
    deliveries = await recorded(store, WebhookDeliveryScheduled)
    assert len(deliveries) == 2 * len(NotificationKind)
    assert {e.endpoint_id for e in deliveries if isinstance(e, WebhookDeliveryScheduled)} == {
        first,
        second,
    }


async def test_a_job_event_before_its_owner_is_known_is_retried(store: InMemoryEventStore) -> None:
    event = triggers("usr_1", "job_9", "ord_9")[NotificationKind.render_completed]
    with pytest.raises(Retry):
        await run(store, bus_event(event))


async def test_a_key_bound_endpoint_gets_only_its_keys_jobs(
    store: InMemoryEventStore, commands: NotifierCommands
) -> None:
    await register(store, commands, "usr_1", api_key_id="key_1")
    await run(store, bus_event(owners("usr_1", "job_k", "ord_k", api_key_id="key_1")[0]))
    await run(store, bus_event(owners("usr_1", "job_s", "ord_s")[0]))
    done = NotificationKind.render_completed
    assert await run(store, bus_event(triggers("usr_1", "job_k", "o")[done])) == 1
    assert await run(store, bus_event(triggers("usr_1", "job_s", "o")[done])) == 0
    expired = NotificationKind.upload_expired
    assert await run(store, bus_event(triggers("usr_1", "job_s", "o")[expired])) == 1


async def test_a_revoked_keys_endpoints_are_disabled_once_and_take_nothing_more(
    store: InMemoryEventStore, commands: NotifierCommands
) -> None:
    bound = await register(store, commands, "usr_1", api_key_id="key_1")
    other = await register(store, commands, "usr_1")
    await run(store, bus_event(owners("usr_1", "job_k", "ord_k", api_key_id="key_1")[0]))
    revoked = ApiKeyRevoked(key_id="key_1", revoked_by="usr_1", revoked_at=AT)
    for cause in (bus_event(revoked), bus_event(revoked)):  # twice, under two event ids
        assert await run(store, cause) == 0
    [disabled] = await recorded(store, WebhookEndpointDisabled)
    assert isinstance(disabled, WebhookEndpointDisabled)
    assert (disabled.endpoint_id, disabled.reason) == (bound, "api_key_revoked")
    done = NotificationKind.render_completed
    cause = bus_event(triggers("usr_1", "job_k", "o")[done])
    assert await run(store, cause) == 1  # to the endpoint bound to no key only
    [scheduled] = [
        e
        for e in await recorded(store, WebhookDeliveryScheduled)
        if isinstance(e, WebhookDeliveryScheduled) and e.kind == done
    ]
    assert scheduled.endpoint_id == other
    with pytest.raises(ApiKeyNotFound):  # the gateway's read model may not show it yet
        await register(store, commands, "usr_1", api_key_id="key_1")


async def test_urls_that_cannot_be_sent_to_are_refused(
    store: InMemoryEventStore, commands: NotifierCommands
) -> None:
    for url in (
        "http://hooks.example/in",
        "ftp://hooks.example/in",
        "https://user:pw@hooks.example/in",
        "https:///in",
    ):
        with pytest.raises(WebhookUrlInvalid):
            await register(store, commands, "usr_1", url=url)
    assert await store.read_by_position(0, 100_000) == []


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("[::1]", "loopback"),
        ("[fc00::1]", "unique-local"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not globally routable"),
        ("localhost", "loopback"),  # a name resolving to loopback
        ("2130706433", "loopback"),  # 127.0.0.1 as one number
    ],
)
async def test_urls_of_addresses_that_are_not_public_are_refused(
    store: InMemoryEventStore, commands: NotifierCommands, host: str, reason: str
) -> None:
    with pytest.raises(WebhookUrlNotAllowed) as refused:
        await register(store, commands, "usr_1", url=f"https://{host}:8443/in")
    assert refused.value.code == "webhook_url_not_allowed" and refused.value.http_status == 422
    assert refused.value.details is not None and refused.value.details.reason == reason
    assert await store.read_by_position(0, 100_000) == []


async def test_private_addresses_are_taken_when_allowed(store: InMemoryEventStore) -> None:
    settings = NotifierSettings(webhook_allow_private_addresses=True, webhook_secrets_key=new_key())
    await register(store, NotifierCommands(settings), "usr_1", url="https://127.0.0.1/in")


async def test_rotate_delete_replay_and_read_are_the_owners_only(
    store: InMemoryEventStore, commands: NotifierCommands
) -> None:
    endpoint = await register(store, commands, "usr_1")
    uow = UnitOfWork(store)
    with pytest.raises(WebhookEndpointNotFound):
        await commands.rotate(RotateWebhookSecret(user_id="usr_2", endpoint_id=endpoint), uow)
    rotated = await commands.rotate(RotateWebhookSecret(user_id="usr_1", endpoint_id=endpoint), uow)
    await uow.commit()
    assert rotated.rotated_at is not None
    await run(store, bus_event(triggers("usr_1", "j", "o")[NotificationKind.upload_expired]))
    [scheduled] = await recorded(store, WebhookDeliveryScheduled)
    assert isinstance(scheduled, WebhookDeliveryScheduled)
    uow = UnitOfWork(store)
    with pytest.raises(WebhookDeliveryNotFound):
        await commands.replay(
            ReplayWebhookDelivery(user_id="usr_2", delivery_id=scheduled.delivery_id), uow
        )
    replayed = await commands.replay(
        ReplayWebhookDelivery(user_id="usr_1", delivery_id=scheduled.delivery_id), uow
    )
    assert replayed.status == "pending"
    ids = [scheduled.notification_id]
    with pytest.raises(NotificationNotFound):
        await commands.mark_read(MarkNotificationsRead(user_id="usr_2", notification_ids=ids), uow)
    marked = await commands.mark_read(
        MarkNotificationsRead(user_id="usr_1", notification_ids=ids), uow
    )
    assert marked.marked == 1
    await uow.commit()
    uow = UnitOfWork(store)
    again = await commands.mark_read(
        MarkNotificationsRead(user_id="usr_1", notification_ids=ids), uow
    )
    assert again.marked == 0
    gone = await commands.delete(DeleteWebhookEndpoint(user_id="usr_1", endpoint_id=endpoint), uow)
    assert gone.endpoint_id == endpoint
