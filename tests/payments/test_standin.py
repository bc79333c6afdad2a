"""The Razorpay stand-in speaks Razorpay's protocol: the official SDK (2.0.1) works against
it through ``base_url``, and what it signs (Checkout's answer, webhooks) verifies with the
SDK's own checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import razorpay as rzp_sdk
from razorpay.errors import BadRequestError, SignatureVerificationError

from deploy.local import servers as local
from tests.payments.conftest import StandIn
from tests.payments.receiver import Receiver


@pytest.fixture
def sdk(razorpay: StandIn) -> rzp_sdk.Client:
    return rzp_sdk.Client(auth=(razorpay.key_id, razorpay.key_secret), base_url=razorpay.url)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def http(razorpay: StandIn) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=razorpay.url, auth=(razorpay.key_id, razorpay.key_secret), timeout=15
    ) as c:
        yield c


def new_order(sdk: rzp_sdk.Client, amount: int = 50_000) -> dict[str, object]:
    order: dict[str, object] = sdk.order.create(
        {
            "amount": amount,
            "currency": "INR",
            "receipt": "topup_top_01TEST",
            "notes": {"user_id": "usr_1", "topup_id": "top_01TEST"},
            "payment_capture": 1,
        }
    )
    return order


def test_the_sdk_creates_and_fetches_an_order(sdk: rzp_sdk.Client) -> None:
    order = new_order(sdk)
    assert str(order["id"]).startswith("order_")
    assert (order["entity"], order["amount"], order["currency"]) == ("order", 50_000, "INR")
    assert (order["status"], order["amount_paid"], order["amount_due"]) == ("created", 0, 50_000)
    assert order["notes"] == {"user_id": "usr_1", "topup_id": "top_01TEST"}
    assert isinstance(order["created_at"], int)
    assert sdk.order.fetch(order["id"]) == order


def test_a_paid_order_verifies_with_the_sdk_and_its_webhooks_too(
    sdk: rzp_sdk.Client, http: httpx.Client, receiver: Receiver, razorpay: StandIn
) -> None:
    order = new_order(sdk)
    paid = http.post(f"/_test/orders/{order['id']}/pay", json={"webhook_url": receiver.url})
    assert paid.status_code == 200, paid.text
    answer = {k: paid.json()[k] for k in ("razorpay_order_id", "razorpay_payment_id")}
    answer["razorpay_signature"] = paid.json()["razorpay_signature"]
    assert sdk.utility.verify_payment_signature(answer) is True
    forged = {**answer, "razorpay_signature": "0" * 64}
    with pytest.raises(SignatureVerificationError):
        sdk.utility.verify_payment_signature(forged)

    payment = sdk.payment.fetch(answer["razorpay_payment_id"])
    assert (payment["entity"], payment["status"], payment["captured"]) == (
        "payment",
        "captured",
        True,
    )
    assert (payment["amount"], payment["order_id"]) == (50_000, order["id"])
    assert sdk.order.fetch(order["id"])["status"] == "paid"
    assert [p["id"] for p in sdk.order.payments(order["id"])["items"]] == [payment["id"]]

    events = [json.loads(d.body)["event"] for d in receiver.deliveries]
    assert events == ["payment.authorized", "payment.captured", "order.paid"]
    for d in receiver.deliveries:
        signature = d.headers["X-Razorpay-Signature"]
        assert sdk.utility.verify_webhook_signature(d.body, signature, razorpay.webhook_secret)
        with pytest.raises(SignatureVerificationError):
            sdk.utility.verify_webhook_signature(d.body, signature, "another-secret")
        body = json.loads(d.body)
        assert body["entity"] == "event" and body["account_id"].startswith("acc_")
        assert body["contains"] == list(body["payload"])
        assert d.headers["X-Razorpay-Event-Id"]
    order_paid = json.loads(receiver.deliveries[-1].body)
    assert order_paid["payload"]["order"]["entity"]["status"] == "paid"
    assert order_paid["payload"]["payment"]["entity"]["id"] == payment["id"]


def test_webhook_options_duplicate_reverse_and_another_secret(
    sdk: rzp_sdk.Client, http: httpx.Client, receiver: Receiver
) -> None:
    order = new_order(sdk)
    options = {
        "webhook_url": receiver.url,
        "outcome": "failed_then_captured",
        "duplicate": True,
        "reverse": True,
        "sign_with": "rotated-away-secret",
    }
    paid = http.post(f"/_test/orders/{order['id']}/pay", json=options).json()
    events = [json.loads(d.body)["event"] for d in receiver.deliveries]
    assert events == [
        e
        for e in ["order.paid", "payment.captured", "payment.authorized", "payment.failed"]
        for _ in range(2)
    ]
    ids = [d.headers["X-Razorpay-Event-Id"] for d in receiver.deliveries]
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 4
    for d in receiver.deliveries:
        assert sdk.utility.verify_webhook_signature(
            d.body, d.headers["X-Razorpay-Signature"], "rotated-away-secret"
        )
    assert sdk.payment.fetch(paid["razorpay_payment_id"])["status"] == "captured"


def test_refund_and_lost_dispute_send_their_webhooks(
    sdk: rzp_sdk.Client, http: httpx.Client, receiver: Receiver
) -> None:
    order = new_order(sdk)
    pay_id = http.post(f"/_test/orders/{order['id']}/pay", json={}).json()["razorpay_payment_id"]
    hook = {"webhook_url": receiver.url}
    refund = http.post(f"/_test/payments/{pay_id}/refund", json={**hook, "amount": 20_000})
    assert refund.status_code == 200, refund.text
    refund_id = refund.json()["refund"]["id"]
    assert sdk.refund.fetch(refund_id)["status"] == "processed"
    payment = sdk.payment.fetch(pay_id)
    assert (payment["amount_refunded"], payment["refund_status"]) == (20_000, "partial")
    lost = http.post(f"/_test/payments/{pay_id}/dispute_lost", json=hook).json()
    assert lost["dispute"]["id"].startswith("disp_")
    bodies = [json.loads(d.body) for d in receiver.deliveries]
    assert [b["event"] for b in bodies] == ["refund.processed", "payment.dispute.lost"]
    assert bodies[0]["payload"]["refund"]["entity"]["amount"] == 20_000
    assert bodies[1]["payload"]["dispute"]["entity"]["payment_id"] == pay_id


def test_payments_are_listed_in_a_time_window_by_page(
    sdk: rzp_sdk.Client, http: httpx.Client
) -> None:
    made = []
    for _ in range(3):
        order = new_order(sdk)
        made.append(http.post(f"/_test/orders/{order['id']}/pay", json={}).json())
    created = sdk.payment.fetch(made[0]["razorpay_payment_id"])["created_at"]
    window = {"from": created - 1, "to": created + 60}
    first = sdk.payment.all({**window, "count": 2})
    rest = sdk.payment.all({**window, "count": 2, "skip": 2})
    listed = {p["id"] for p in first["items"] + rest["items"]}
    assert {m["razorpay_payment_id"] for m in made} <= listed
    assert first["entity"] == "collection" and first["count"] == 2
    assert sdk.payment.all({"from": created + 3600, "to": created + 7200})["items"] == []


def test_wrong_credentials_get_razorpays_401(razorpay: StandIn) -> None:
    wrong = rzp_sdk.Client(auth=(razorpay.key_id, "not-the-secret"), base_url=razorpay.url)
    with pytest.raises(BadRequestError, match="Authentication failed"):
        wrong.order.create({"amount": 100, "currency": "INR"})
    r = httpx.get(f"{razorpay.url}/v1/orders/order_x")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "BAD_REQUEST_ERROR"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 99, "currency": "INR"}, "amount"),
        ({"amount": "a lot", "currency": "INR"}, "amount"),
        ({"currency": "INR"}, "amount"),
        ({"amount": 100, "currency": "INR", "receipt": "r" * 41}, "receipt"),
        ({"amount": 100, "notes": {f"k{i}": "v" for i in range(16)}}, "notes"),
    ],
)
def test_bad_orders_get_razorpays_400(
    http: httpx.Client, body: dict[str, object], field: str
) -> None:
    r = http.post("/v1/orders", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BAD_REQUEST_ERROR"
    assert r.json()["error"]["field"] == field


def test_an_unknown_payment_is_a_400(http: httpx.Client) -> None:
    r = http.get("/v1/payments/pay_NoSuchPayment1")
    assert r.status_code == 400
    assert r.json()["error"]["description"] == "The id provided does not exist"


def test_state_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "rzp.db"
    port = local.free_port()

    def start() -> local.ServerHandle:
        return local.start_razorpay(
            db, port, key_id="rzp_test_restart", key_secret="s3cret", webhook_secret="w"
        )

    handle = start()
    sdk = rzp_sdk.Client(auth=("rzp_test_restart", "s3cret"), base_url=handle.url)
    order = new_order(sdk)
    handle.stop()
    handle = start()
    try:
        assert sdk.order.fetch(order["id"]) == order
    finally:
        handle.stop()
