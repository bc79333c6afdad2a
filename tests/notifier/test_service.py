"""The notifier on real servers with a real HTTP receiver: every kind, delivered twice, makes
one notification and one signed delivery per endpoint; a receiver that is down gets every
message once it is back, with valid signatures; a slow one holds up nobody else; a delivery
failing for its whole window is dead-lettered and replayed by its owner."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.identity import ApiKeyRevoked
from contracts.notifications import (
    NotificationCreated,
    NotificationKind,
    RegisterWebhookEndpoint,
    RotateWebhookSecret,
    WebhookEndpointDisabled,
    WebhookEndpointSecret,
)
from contracts.uploads import UploadExpired
from libs.bus.commands import CommandClient
from libs.ids import new_id
from libs.readmodels.notifications import NotificationsQuery
from libs.runtime import ServiceRuntime
from services.notifier.settings import NotifierSettings
from services.notifier.signing import webhook_headers
from tests.notifier.conftest import ACTOR, Publisher, Receiver
from tests.notifier.events import AT, owners, triggers
from tests.waiting import until

USER = "usr_service"


async def register(
    commands: CommandClient, url: str, kinds: list[NotificationKind] | None = None
) -> WebhookEndpointSecret:
    cmd = RegisterWebhookEndpoint(
        user_id=USER, endpoint_id=new_id("whk"), url=url, kinds=kinds or list(NotificationKind)
    )
    return await commands.send(
        cmd, WebhookEndpointSecret, command_id=f"register:{cmd.endpoint_id}", actor=ACTOR
    )


async def publish_every_kind(publisher: Publisher) -> None:
    for event in owners(USER, "job_s1", "ord_s1"):
        await publisher.publish(event)
    for event in triggers(USER, "job_s1", "ord_s1").values():
        await publisher.publish(event)


def query(rt: ServiceRuntime[Any]) -> NotificationsQuery:
    return NotificationsQuery(rt.pool, rt.schema)


async def test_every_kind_reaches_a_receiver_that_was_down_once_with_valid_signatures(
    notifier: ServiceRuntime[Any],
    commands: CommandClient,
    publisher: Publisher,
    receiver: Receiver,
) -> None:
    down = await register(commands, receiver.url("/ok/down"))
    slow = await register(commands, receiver.url("/slow"))
    await publish_every_kind(publisher)
    q = query(notifier)

    async def all_made() -> bool:
        return len(await q.notifications(USER, None, False, 100)) >= len(NotificationKind)

    await until(all_made, "a notification of every kind")

    async def failed_twice() -> bool:
        rows = await q.deliveries(USER, down.endpoint_id, None, 100)
        return len(rows) == len(NotificationKind) and all(len(a) >= 2 for _, a in rows)

    await until(failed_twice, "every delivery to fail twice while the receiver is down")
    assert receiver.received == []
    await receiver.start()

    async def all_received() -> bool:
        return len({r.headers["webhook-id"] for r in receiver.at("/ok/down")}) == len(
            NotificationKind
        )

    await until(all_received, "every message at the receiver once it is back")
    # Meanwhile no attempt to the slow receiver has ended (each waits for its 3 s timeout;
    # the earlier ones failed while the port was closed): it held up nobody else.
    slow_rows = await q.deliveries(USER, slow.endpoint_id, None, 100)
    assert all(d.status == "pending" for d, _ in slow_rows)
    slow_attempts = [a for _, attempts in slow_rows for a in attempts]
    assert all(a.status_code is None and "no answer" not in (a.error or "") for a in slow_attempts)

    notifications = await q.notifications(USER, None, False, 100)
    assert sorted(n.kind for n in notifications) == sorted(NotificationKind)  # once each
    verifier = Webhook(down.secret)
    kinds = []
    for got in receiver.at("/ok/down"):
        body = verifier.verify(got.body, got.headers)
        kinds.append(body["type"])
        assert body["data"]["notification_id"] == got.headers["webhook-id"]
    assert sorted(kinds) == sorted(k.value for k in NotificationKind)

    async def succeeded() -> bool:
        rows = await q.deliveries(USER, down.endpoint_id, None, 100)
        return all(d.status == "succeeded" for d, _ in rows)

    await until(succeeded, "every delivery recorded as succeeded")

    # What a receiver following the spec refuses: a forged body, a wrong secret, an old
    # timestamp (a captured message sent again later).
    got = receiver.at("/ok/down")[0]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got.body.replace(b"notification_id", b"notification_iD"), got.headers)
    forged = webhook_headers(
        ["whsec_" + "A" * 43 + "="],
        got.headers["webhook-id"],
        int(got.headers["webhook-timestamp"]),
        got.body,
    )
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got.body, forged)
    old = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp())
    replayed = webhook_headers([down.secret], got.headers["webhook-id"], old, got.body)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got.body, replayed)


async def tables_holding(rt: ServiceRuntime[Any], text: str) -> list[str]:
    """Every table of the notifier's schema with a row whose text holds ``text`` (any case)."""
    async with rt.pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            rt.schema,
        )
        found = []
        for t in tables:
            name = f'"{rt.schema}"."{t["table_name"]}"'
            if await conn.fetchval(
                f"SELECT count(*) FROM {name} x WHERE strpos(lower(x::text), lower($1)) > 0", text
            ):
                found.append(name)
        return found


async def test_secrets_are_stored_encrypted_and_deliveries_verify_with_the_secrets_given(
    notifier: ServiceRuntime[Any],
    commands: CommandClient,
    publisher: Publisher,
    receiver: Receiver,
) -> None:
    await receiver.start()
    first = await register(commands, receiver.url("/ok/sealed"), [NotificationKind.upload_expired])
    rotated = await commands.send(
        RotateWebhookSecret(user_id=USER, endpoint_id=first.endpoint_id),
        WebhookEndpointSecret,
        command_id=f"rotate:{first.endpoint_id}",
        actor=ACTOR,
    )
    assert rotated.secret != first.secret
    await publisher.publish(triggers(USER, "j", "o")[NotificationKind.upload_expired])

    async def received() -> Any:
        return receiver.at("/ok/sealed") or None

    [got] = await until(received, "the delivery")
    # Both secrets sign during the rotation's grace: each one given to the user verifies.
    for secret in (first.secret, rotated.secret):
        Webhook(secret).verify(got.body, got.headers)

    async def listed() -> bool:
        rows = await query(notifier).endpoints(USER)
        return any(e.rotated_at is not None for e in rows)

    await until(listed, "the rotation in the endpoints read model")
    # No table of the notifier (events, snapshots, read models) holds a secret, as given or
    # as its key's base64 or hex.
    for secret in (first.secret, rotated.secret):
        key = secret.removeprefix("whsec_")
        for text in (secret, key, base64.b64decode(key).hex()):
            assert await tables_holding(notifier, text) == []
    stored = await notifier.pool.fetch(
        f"SELECT type, schema_version, data FROM {notifier.schema}.events"
        " WHERE stream_id = $1 ORDER BY version",
        f"webhooks-{USER}",
    )
    assert isinstance(notifier.settings, NotifierSettings)
    box = notifier.settings.secret_box()
    assert [(r["type"], r["schema_version"]) for r in stored] == [
        ("notifier.WebhookEndpointRegistered", 2),
        ("notifier.WebhookSecretRotated", 2),
    ]
    assert {r["data"]["secret"]["key_id"] for r in stored} == {box.current_id}


async def test_a_revoked_keys_endpoint_is_disabled_once_and_its_pending_deliveries_end(
    notifier: ServiceRuntime[Any],
    commands: CommandClient,
    publisher: Publisher,
    receiver: Receiver,
) -> None:
    await receiver.start()
    kinds = [NotificationKind.render_completed, NotificationKind.render_failed]
    cmd = RegisterWebhookEndpoint(
        user_id=USER,
        endpoint_id=new_id("whk"),
        url=receiver.url("/fail"),
        kinds=kinds,
        api_key_id="key_revoked",
    )
    bound = await commands.send(
        cmd, WebhookEndpointSecret, command_id=f"register:{cmd.endpoint_id}", actor=ACTOR
    )
    free = await register(commands, receiver.url("/ok/free"), kinds)
    for event in owners(USER, "job_rev", "ord_rev", api_key_id="key_revoked"):
        await publisher.publish(event)
    done = triggers(USER, "job_rev", "ord_rev")
    await publisher.publish(done[NotificationKind.render_completed])
    q = query(notifier)

    async def failing() -> bool:
        rows = await q.deliveries(USER, bound.endpoint_id, None, 10)
        return bool(rows) and rows[0][0].status == "pending" and rows[0][0].attempts >= 1

    await until(failing, "the bound endpoint's delivery to fail and wait for a retry")
    revoked = ApiKeyRevoked(key_id="key_revoked", revoked_by=USER, revoked_at=datetime.now(UTC))
    await publisher.publish(revoked)  # twice under one event id
    await publisher.publish(revoked)  # and again under another

    async def dead() -> Any:
        rows = await q.deliveries(USER, bound.endpoint_id, None, 10)
        d, attempts = rows[0]
        return attempts if d.status == "dead_lettered" and len(attempts) == d.attempts else None

    attempts = await until(dead, "the pending delivery to be dead-lettered")
    assert attempts[-1].error == "the endpoint was disabled (api_key_revoked)"
    listed = {e.endpoint_id: e for e in await q.endpoints(USER)}
    assert listed[bound.endpoint_id].disabled_reason == "api_key_revoked"
    assert listed[bound.endpoint_id].disabled_at is not None
    assert listed[free.endpoint_id].disabled_at is None
    stored = await notifier.pool.fetchval(
        f"SELECT count(*) FROM {notifier.schema}.events WHERE type = $1",
        WebhookEndpointDisabled.event_type,
    )
    assert stored == 1  # once, though the revocation came three times

    # What comes after goes to the endpoint bound to no key only.
    await publisher.publish(done[NotificationKind.render_failed])

    async def delivered() -> bool:
        types = {body_type(r.body) for r in receiver.at("/ok/free")}
        return types == {k.value for k in kinds}

    await until(delivered, "both notifications at the free endpoint")
    rows = await q.deliveries(USER, bound.endpoint_id, None, 10)
    assert len(rows) == 1  # nothing scheduled to the disabled endpoint
    assert all(r.path == "/fail" for r in receiver.at("/fail"))
    assert len(receiver.at("/fail")) == attempts[-1].attempt - 1  # no POST after the revocation


def body_type(body: bytes) -> str:
    return str(json.loads(body)["type"])


async def test_a_burst_for_many_users_is_handled_in_batches_each_event_once_under_its_cause(
    notifier: ServiceRuntime[Any], publisher: Publisher
) -> None:
    users = [f"usr_burst{i}" for i in range(20)]
    causes = {}
    for round_ in range(3):
        for user in users:
            event = UploadExpired(upload_id=f"upl_{user}_{round_}", owner_id=user, at=AT)
            causes[await publisher.publish(event)] = user  # each twice
    q = query(notifier)

    async def all_made() -> bool:
        return all([await q.unread_count(u) == 3 for u in users])

    await until(all_made, "three notifications for each of the 20 users")
    [consumer] = notifier.consumers
    assert consumer.batches >= 1 and consumer.batches_split == 0
    rows = await notifier.pool.fetch(
        f"SELECT data->>'user_id' AS user_id, metadata->>'causation_id' AS cause"
        f" FROM {notifier.schema}.events WHERE type = $1",
        NotificationCreated.event_type,
    )
    assert sorted((r["cause"], r["user_id"]) for r in rows) == sorted(
        (str(e), u) for e, u in causes.items()
    )
