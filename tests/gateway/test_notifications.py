"""Notifications and webhooks at the gateway: endpoints (the secret answered once), rotation,
deliveries with their attempts, replay; the in-app list with its cursor, unread count and
marking read; every bad input a 4xx with a code."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from contracts.notifications import NotificationKind
from libs.auth import verify_access_token
from libs.runtime import ServiceRuntime, build
from services.gateway.service import Gateway
from services.notifier.service import SERVICE
from services.notifier.settings import NotifierSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.notifier.conftest import Publisher, Receiver
from tests.notifier.events import owners, triggers
from tests.waiting import until


@pytest.fixture
async def notifier(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    settings = env.settings(
        NotifierSettings,
        webhook_allow_http=True,
        webhook_allow_private_addresses=True,
        webhook_retry_base_seconds=0.1,
        webhook_retry_max_delay_seconds=0.2,
        webhook_poll_seconds=0.1,
    )
    rt = await build(SERVICE, settings)
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def api(gateway: Gateway, notifier: ServiceRuntime[Any]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def user_of(users: Users, headers: dict[str, str]) -> str:
    token = headers["Authorization"].removeprefix("Bearer ")
    return verify_access_token(users.settings, token).user_id


async def register(api: httpx.AsyncClient, me: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/webhooks", json={"url": "https://hooks.example/in", **body}, headers=me)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_an_endpoint_is_registered_listed_rotated_and_deleted(
    api: httpx.AsyncClient, users: Users
) -> None:
    me, other = users.new(), users.new()
    created = await register(api, me, kinds=["render.completed", "balance.low"])
    assert created["secret"].startswith("whsec_")
    assert created["kinds"] == ["balance.low", "render.completed"]
    assert created["api_key_id"] is None
    endpoint_id = created["endpoint_id"]
    listed = (await api.get("/v1/webhooks", headers=me)).json()["items"]
    assert [e["endpoint_id"] for e in listed] == [endpoint_id]
    assert "secret" not in listed[0]
    assert (await api.get("/v1/webhooks", headers=other)).json() == {"items": []}
    r = await api.post(f"/v1/webhooks/{endpoint_id}/rotate-secret", headers=me)
    assert r.status_code == 200, r.text
    assert r.json()["secret"] not in (created["secret"], "") and r.json()["rotated_at"]
    r = await api.post(f"/v1/webhooks/{endpoint_id}/rotate-secret", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "webhook_endpoint_not_found"
    r = await api.delete(f"/v1/webhooks/{endpoint_id}", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "webhook_endpoint_not_found"
    r = await api.delete(f"/v1/webhooks/{endpoint_id}", headers=me)
    assert r.status_code == 200 and r.json()["endpoint_id"] == endpoint_id
    assert (await api.get("/v1/webhooks", headers=me)).json() == {"items": []}


async def test_every_bad_input_is_a_4xx_with_a_code(
    api: httpx.AsyncClient, users: Users, identity_service: ServiceRuntime[Any]
) -> None:
    me = users.new()
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("POST", "/v1/webhooks", {"url": "ftp://hooks.example/in"}, 422, "webhook_url_invalid"),
        ("POST", "/v1/webhooks", {"url": "https://u:p@hooks.example"}, 422, "webhook_url_invalid"),
        (
            "POST",
            "/v1/webhooks",
            {"url": "https://h.example", "kinds": []},
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/webhooks",
            {"url": "https://h.example", "kinds": ["x"]},
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/webhooks",
            {"url": "https://h.example", "extra": 1},
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/webhooks",
            {"url": "https://h.example", "api_key_id": "nope"},
            404,
            "api_key_not_found",
        ),
        ("POST", "/v1/webhooks", None, 422, "validation_failed"),
        ("POST", "/v1/webhooks/whk_x/rotate-secret", None, 404, "webhook_endpoint_not_found"),
        ("DELETE", "/v1/webhooks/whk_x", None, 404, "webhook_endpoint_not_found"),
        ("DELETE", "/v1/webhooks/bad%20id", None, 422, "validation_failed"),
        ("GET", "/v1/webhooks/whk_x/deliveries", None, 404, "webhook_endpoint_not_found"),
        ("POST", "/v1/webhooks/deliveries/dlv_x/replay", None, 404, "webhook_delivery_not_found"),
        ("POST", "/v1/notifications/ntf_x/read", None, 404, "notification_not_found"),
        ("GET", "/v1/notifications?cursor=%%%", None, 422, "invalid_cursor"),
        ("GET", "/v1/notifications?cursor=ZGx2X3g", None, 422, "invalid_cursor"),
        ("GET", "/v1/notifications?limit=0", None, 422, "validation_failed"),
    ]
    for method, path, body, status, code in cases:
        r = await api.request(method, path, json=body, headers=me)
        assert "code" in r.json(), (method, path, r.status_code, r.text)
        assert (r.status_code, r.json()["code"]) == (status, code), (method, path, r.text)
    r = await api.get("/v1/notifications")
    assert r.status_code == 401


async def test_a_repeated_idempotency_key_never_answers_the_secret_twice(
    api: httpx.AsyncClient, users: Users
) -> None:
    me = {**users.new(), "Idempotency-Key": str(uuid.uuid4())}
    await register(api, me)
    r = await api.post("/v1/webhooks", json={"url": "https://hooks.example/in"}, headers=me)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused", r.text
    assert len((await api.get("/v1/webhooks", headers=me)).json()["items"]) == 1


async def test_notifications_are_listed_counted_and_marked_read(
    api: httpx.AsyncClient, users: Users, notifier: ServiceRuntime[Any]
) -> None:
    me, other = users.new(), users.new()
    user = user_of(users, me)
    publisher = Publisher(notifier)
    for event in owners(user, "job_g1", "ord_g1"):
        await publisher.publish(event)
    for event in triggers(user, "job_g1", "ord_g1").values():
        await publisher.publish(event)

    async def listed() -> dict[str, Any] | None:
        page: dict[str, Any] = (await api.get("/v1/notifications?limit=100", headers=me)).json()
        return page if len(page["items"]) == len(NotificationKind) else None

    page = await until(listed, "every notification listed", timeout=60)
    assert page["unread_count"] == len(NotificationKind) and page["next_cursor"] is None
    assert sorted(n["kind"] for n in page["items"]) == sorted(NotificationKind)
    paid = next(n for n in page["items"] if n["kind"] == "payment.succeeded")
    assert paid["payload"] == {"order_id": "ord_g1", "payment_id": "pay_1", "credits": "500.00"}
    seen, cursor = [], None
    while True:
        q = "/v1/notifications?limit=4" + (f"&cursor={cursor}" if cursor else "")
        got = (await api.get(q, headers=me)).json()
        seen += [n["notification_id"] for n in got["items"]]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert seen == [n["notification_id"] for n in page["items"]]
    assert seen == sorted(seen, reverse=True)
    first = seen[0]
    r = await api.post(f"/v1/notifications/{first}/read", headers=me)
    assert r.status_code == 200 and r.json() == {"marked": 1}, r.text
    r = await api.post(f"/v1/notifications/{first}/read", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "notification_not_found"
    assert (await api.post(f"/v1/notifications/{first}/read", headers=me)).json() == {"marked": 0}
    unread = (await api.get("/v1/notifications?unread=true&limit=100", headers=me)).json()
    assert unread["unread_count"] == len(NotificationKind) - 1
    assert first not in [n["notification_id"] for n in unread["items"]]
    r = await api.post("/v1/notifications/read-all", headers=me)
    assert r.json() == {"marked": len(NotificationKind) - 1}, r.text
    after = (await api.get("/v1/notifications", headers=me)).json()
    assert after["unread_count"] == 0 and all(n["read_at"] for n in after["items"])
    assert (await api.get("/v1/notifications", headers=other)).json()["items"] == []


async def test_deliveries_are_listed_with_their_attempts_and_replayed(
    api: httpx.AsyncClient, users: Users, notifier: ServiceRuntime[Any], receiver: Receiver
) -> None:
    me = users.new()
    user = user_of(users, me)
    created = await register(
        api, me, url=receiver.url("/ok/gw"), kinds=[NotificationKind.upload_expired]
    )
    await Publisher(notifier).publish(triggers(user, "j", "o")[NotificationKind.upload_expired])
    path = f"/v1/webhooks/{created['endpoint_id']}/deliveries"

    async def delivered() -> dict[str, Any] | None:
        page: dict[str, Any] = (await api.get(path, headers=me)).json()
        items = page["items"]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    delivery = await until(delivered, "the delivery to succeed", timeout=60)
    assert delivery["kind"] == "upload.expired" and delivery["attempts"] == 1
    [attempt] = delivery["attempt_log"]
    assert attempt["status_code"] == 204 and attempt["succeeded"] is True
    r = await api.post(
        f"/v1/webhooks/deliveries/{delivery['delivery_id']}/replay", headers=users.new()
    )
    assert r.status_code == 404 and r.json()["code"] == "webhook_delivery_not_found"
    r = await api.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/replay", headers=me)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text

    async def twice() -> bool:
        return len(receiver.at("/ok/gw")) == 2

    await until(twice, "the replayed message at the receiver", timeout=60)
    first, again = receiver.at("/ok/gw")
    assert first.headers["webhook-id"] == again.headers["webhook-id"] and first.body == again.body
    Webhook(created["secret"]).verify(again.body, again.headers)
