"""Top-ups end to end on real servers: the gateway (on a real port for Razorpay's webhooks),
the payments and wallet services, and the Razorpay stand-in. Whatever arrives twice, out of
order or both ways, the wallet is credited once; what is forged records nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from libs.runtime import ServiceRuntime
from tests.fixtures import Users
from tests.payments.conftest import PREVIOUS_WEBHOOK_SECRET, StandIn
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("wallet_service")


class TopUps:
    """A user topping up through the API, and Razorpay (the stand-in) on the other side."""

    def __init__(
        self,
        api: httpx.AsyncClient,
        standin: httpx.AsyncClient,
        webhook_url: str,
        user: dict[str, str],
    ) -> None:
        self.api, self.standin, self.webhook_url, self.user = api, standin, webhook_url, user

    async def order(self, amount_paise: int = 50_000, **headers: str) -> dict[str, Any]:
        r = await self.api.post(
            "/v1/payments/orders",
            json={"amount_paise": amount_paise},
            headers={**self.user, **headers},
        )
        assert r.status_code == 201, r.text
        order: dict[str, Any] = r.json()
        return order

    async def pay(self, order_id: str, **options: Any) -> dict[str, Any]:
        r = await self.standin.post(
            f"/_test/orders/{order_id}/pay", json={"webhook_url": self.webhook_url, **options}
        )
        assert r.status_code == 200, r.text
        paid: dict[str, Any] = r.json()
        return paid

    async def verify(self, paid: dict[str, Any], **changes: str) -> httpx.Response:
        body = {k: paid[k] for k in ("razorpay_order_id", "razorpay_payment_id")}
        body["razorpay_signature"] = paid["razorpay_signature"]
        return await self.api.post(
            "/v1/payments/verify", json={**body, **changes}, headers=self.user
        )

    async def get(self, order_id: str) -> httpx.Response:
        return await self.api.get(f"/v1/payments/orders/{order_id}", headers=self.user)

    async def credited(self, order_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            order: dict[str, Any] = (await self.get(order_id)).json()
            return order if order["status"] == "credited" else None

        found: dict[str, Any] = await until(check, f"order {order_id} credited")
        return found

    async def balance(self) -> str:
        r = await self.api.get("/v1/wallet", headers=self.user)
        assert r.status_code == 200, r.text
        balance: str = r.json()["balance_credits"]
        return balance

    async def transactions(self) -> list[dict[str, Any]]:
        r = await self.api.get("/v1/wallet/transactions", headers=self.user)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
async def topups(
    pay_api: httpx.AsyncClient, standin: httpx.AsyncClient, webhook_url: str, users: Users
) -> TopUps:
    return TopUps(pay_api, standin, webhook_url, users.new())


async def settled(payments: ServiceRuntime[Any], handled: int) -> None:
    """Wait until the payments process manager has handled ``handled`` events."""

    async def check() -> bool:
        return bool(payments.wired.process.handled >= handled)

    await until(check, f"{handled} events handled by the payments process")


def answers(paid: dict[str, Any]) -> list[tuple[int, bool | None]]:
    """What the gateway answered each webhook: status and ``duplicate``."""
    out = []
    for w in paid["webhooks"]:
        body = json.loads(w["response"]) if w["status"] == 200 else {}
        out.append((w["status"], body.get("duplicate")))
    return out


async def test_a_topup_paid_through_checkout_credits_the_wallet_once(
    topups: TopUps, payments_service: ServiceRuntime[Any], razorpay: StandIn
) -> None:
    key = str(uuid.uuid4())
    order = await topups.order(50_000, **{"Idempotency-Key": key})
    assert (order["status"], order["credits"], order["key_id"]) == (
        "created",
        "500.00",
        razorpay.key_id,
    )
    assert await topups.order(50_000, **{"Idempotency-Key": key}) == order  # the same order
    paid = await topups.pay(order["order_id"])
    verified = await topups.verify(paid)
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] in ("paid", "credited")
    assert verified.json()["payment_id"] == paid["razorpay_payment_id"]
    again = await topups.verify(paid)
    assert again.status_code == 200 and again.json()["payment_id"] == paid["razorpay_payment_id"]
    credited = await topups.credited(order["order_id"])
    assert credited["payment_id"] == paid["razorpay_payment_id"]
    # The three webhooks (authorized, captured, order.paid) and the capture itself.
    await settled(payments_service, 4)
    assert await topups.balance() == "500.00"
    deposits = [t for t in await topups.transactions() if t["kind"] == "deposit"]
    assert (
        len(deposits) == 1 and deposits[0]["transfer_id"] == f"topup:{paid['razorpay_payment_id']}"
    )


async def test_duplicate_and_out_of_order_webhooks_credit_once(
    topups: TopUps, payments_service: ServiceRuntime[Any]
) -> None:
    order = await topups.order(25_000)
    paid = await topups.pay(
        order["order_id"], outcome="failed_then_captured", duplicate=True, reverse=True
    )
    assert answers(paid) == [(200, dup) for _ in range(4) for dup in (False, True)]
    await topups.credited(order["order_id"])
    await settled(payments_service, 5)  # four webhooks, one capture
    assert await topups.balance() == "250.00"
    assert len(await topups.transactions()) == 1


async def test_a_forged_webhook_is_refused_and_nothing_is_recorded(
    topups: TopUps, payments_service: ServiceRuntime[Any]
) -> None:
    order = await topups.order()
    paid = await topups.pay(order["order_id"], sign_with="not-our-secret")
    assert {w["status"] for w in paid["webhooks"]} == {400}
    assert {json.loads(w["response"])["code"] for w in paid["webhooks"]} == {
        "webhook_signature_invalid"
    }
    assert (await topups.get(order["order_id"])).json()["status"] == "created"
    async with payments_service.pool.acquire() as conn:
        kept = await conn.fetchval(
            "SELECT count(*) FROM payments.events WHERE stream_id LIKE 'webhook-%'"
        )
    assert kept == 0
    assert await topups.balance() == "0.00"


async def test_a_webhook_signed_with_the_previous_secret_credits_during_rotation(
    topups: TopUps,
) -> None:
    order = await topups.order(10_000)
    paid = await topups.pay(order["order_id"], sign_with=PREVIOUS_WEBHOOK_SECRET)
    assert {w["status"] for w in paid["webhooks"]} == {200}
    await topups.credited(order["order_id"])
    assert await topups.balance() == "100.00"


async def test_a_webhook_without_its_headers_or_too_big_is_refused(
    pay_api: httpx.AsyncClient,
) -> None:
    r = await pay_api.post("/v1/payments/webhook", content=b'{"event":"payment.captured"}')
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    headers = {"X-Razorpay-Signature": "0" * 64, "X-Razorpay-Event-Id": "EvtTooBig0001"}
    r = await pay_api.post("/v1/payments/webhook", content=b"x" * 300_000, headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


async def test_a_forged_checkout_signature_is_refused_and_nothing_is_recorded(
    topups: TopUps,
) -> None:
    order = await topups.order()
    paid = await topups.pay(order["order_id"], deliver=False)
    r = await topups.verify(paid, razorpay_signature="0" * 64)
    assert r.status_code == 400 and r.json()["code"] == "payment_signature_invalid"
    assert (await topups.get(order["order_id"])).json()["status"] == "created"


async def test_another_users_order_is_not_found(topups: TopUps, users: Users) -> None:
    order = await topups.order()
    paid = await topups.pay(order["order_id"], deliver=False)
    stranger = TopUps(topups.api, topups.standin, topups.webhook_url, users.new())
    r = await stranger.get(order["order_id"])
    assert r.status_code == 404 and r.json()["code"] == "order_not_found"
    r = await stranger.verify(paid)
    assert r.status_code == 404 and r.json()["code"] == "order_not_found"
    listed = await stranger.api.get("/v1/payments/orders", headers=stranger.user)
    assert listed.json()["items"] == []


async def test_a_payment_of_another_amount_is_not_credited(
    topups: TopUps, payments_service: ServiceRuntime[Any]
) -> None:
    order = await topups.order(50_000)
    paid = await topups.pay(order["order_id"], amount=100)
    r = await topups.verify(paid)
    assert r.status_code == 409 and r.json()["code"] == "payment_mismatch"
    await settled(payments_service, 3)
    assert (await topups.get(order["order_id"])).json()["status"] == "mismatched"
    assert await topups.balance() == "0.00"


async def test_a_refund_and_a_lost_dispute_debit_the_wallet_below_zero(
    topups: TopUps,
) -> None:
    order = await topups.order(50_000)
    paid = await topups.pay(order["order_id"])
    await topups.credited(order["order_id"])
    pay_id = paid["razorpay_payment_id"]
    hook = {"webhook_url": topups.webhook_url}
    r = await topups.standin.post(f"/_test/payments/{pay_id}/refund", json=hook)
    assert r.status_code == 200, r.text
    r = await topups.standin.post(f"/_test/payments/{pay_id}/dispute_lost", json=hook)
    assert r.status_code == 200, r.text

    async def debited() -> list[str] | None:
        # The balance and the transactions are two read models: wait for both.
        kinds = sorted(t["transfer_id"].split(":")[0] for t in await topups.transactions())
        return kinds if await topups.balance() == "-500.00" and len(kinds) == 3 else None

    kinds = await until(debited, "the refund and the dispute debited")
    assert kinds == ["dispute", "refund", "topup"]
    assert (await topups.get(order["order_id"])).json()["status"] == "refunded"


async def test_orders_are_listed_newest_first_by_page(topups: TopUps) -> None:
    made = [(await topups.order(100 * (n + 1)))["order_id"] for n in range(3)]
    first = (await topups.api.get("/v1/payments/orders?limit=2", headers=topups.user)).json()
    assert first["next_cursor"]
    rest = (
        await topups.api.get(
            f"/v1/payments/orders?limit=2&cursor={first['next_cursor']}", headers=topups.user
        )
    ).json()
    listed = [o["order_id"] for o in first["items"] + rest["items"]]
    assert sorted(listed) == sorted(made) and rest["next_cursor"] is None
    bad = await topups.api.get("/v1/payments/orders?cursor=!!", headers=topups.user)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"


async def test_an_order_below_one_rupee_is_refused(topups: TopUps) -> None:
    r = await topups.api.post("/v1/payments/orders", json={"amount_paise": 99}, headers=topups.user)
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"
