"""The payments handlers on the in-memory unit of work, against the real Razorpay stand-in:
what each records, and what a refusal leaves unrecorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from contracts.errors import (
    DomainError,
    OrderNotFound,
    PaymentMismatch,
    PaymentNotCaptured,
    PaymentSignatureInvalid,
    WebhookSignatureInvalid,
)
from contracts.payments import (
    ApplyWebhook,
    CreateTopUpOrder,
    OrderStatus,
    ReceiveWebhook,
    TopUpOrder,
    VerifyCheckout,
    WebhookApplied,
    WebhookOutcome,
)
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.store import Position
from libs.eventstore.uow import UnitOfWork
from services.payments.commands import PaymentsCommands
from services.payments.razorpay import Razorpay
from services.payments.settings import PaymentsSettings
from tests.payments.conftest import PREVIOUS_WEBHOOK_SECRET, StandIn
from tests.payments.receiver import Delivery, Receiver


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore("payments")


@pytest.fixture
async def commands(razorpay: StandIn) -> AsyncIterator[PaymentsCommands]:
    settings = PaymentsSettings(
        razorpay_url=razorpay.url,
        razorpay_key_id=razorpay.key_id,
        razorpay_key_secret=razorpay.key_secret,
        razorpay_webhook_secret=razorpay.webhook_secret,
        razorpay_webhook_secret_previous=PREVIOUS_WEBHOOK_SECRET,
    )
    client = Razorpay(settings)
    yield PaymentsCommands(settings, client)
    await client.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


async def run(store: InMemoryEventStore, handler: Any, cmd: Any) -> Any:
    uow = UnitOfWork(store, metadata={"actor": {"kind": "user", "id": "usr_1"}})
    reply = await handler(cmd, uow)
    await uow.commit()
    return reply


async def types(store: InMemoryEventStore) -> list[str]:
    return [e.event_type for e in await store.read_all(Position.start())]


async def ordered(
    store: InMemoryEventStore, commands: PaymentsCommands, amount: int = 50_000
) -> TopUpOrder:
    cmd = CreateTopUpOrder(user_id="usr_1", topup_id="top_01TESTTOPUP", amount_paise=amount)
    order: TopUpOrder = await run(store, commands.create_order, cmd)
    return order


async def pay(standin: httpx.AsyncClient, order_id: str, **options: Any) -> dict[str, Any]:
    r = await standin.post(f"/_test/orders/{order_id}/pay", json=options)
    assert r.status_code == 200, r.text
    paid: dict[str, Any] = r.json()
    return paid


async def checkout(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    **options: Any,
) -> dict[str, Any]:
    """Order a top-up, then pay it at the stand-in's Checkout (``options`` shape the payment)."""
    order = await ordered(store, commands)
    return await pay(standin, order.order_id, **options)


def verify(paid: dict[str, Any], user_id: str = "usr_1", signature: str = "") -> VerifyCheckout:
    return VerifyCheckout(
        user_id=user_id,
        order_id=paid["razorpay_order_id"],
        payment_id=paid["razorpay_payment_id"],
        signature=signature or paid["razorpay_signature"],
    )


def received(d: Delivery, signature: str = "") -> ReceiveWebhook:
    return ReceiveWebhook(
        body=d.body,
        signature=signature or d.headers["X-Razorpay-Signature"],
        event_id=d.headers["X-Razorpay-Event-Id"],
    )


async def deliver(
    store: InMemoryEventStore, commands: PaymentsCommands, deliveries: list[Delivery]
) -> list[WebhookApplied]:
    """Receive each delivery, and apply each first receipt (as the process manager does)."""
    applied = []
    for d in deliveries:
        accepted = await run(store, commands.receive, received(d))
        if not accepted.duplicate:
            cmd = ApplyWebhook(event_id=accepted.event_id)
            applied.append(await run(store, commands.apply, cmd))
    return applied


async def test_an_order_is_made_at_razorpay_and_recorded(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    order = await ordered(store, commands, 12_345)
    assert order.order_id.startswith("order_") and order.status is OrderStatus.created
    assert (order.amount_paise, order.currency, str(order.credits)) == (12_345, "INR", "123.45")
    assert order.receipt == "topup_top_01TESTTOPUP"
    at_razorpay = (await standin.get(f"/v1/orders/{order.order_id}")).json()
    assert at_razorpay["receipt"] == order.receipt
    assert at_razorpay["notes"] == {"user_id": "usr_1", "topup_id": "top_01TESTTOPUP"}
    assert await types(store) == ["payment.TopUpOrdered"]


async def test_checkout_is_verified_and_captured_once(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    paid = await checkout(store, commands, standin)
    first = await run(store, commands.verify, verify(paid))
    again = await run(store, commands.verify, verify(paid))
    assert first.status is OrderStatus.paid and first.payment_id == paid["razorpay_payment_id"]
    assert again == first
    assert await types(store) == ["payment.TopUpOrdered", "payment.PaymentCaptured"]


@pytest.mark.parametrize("signature", ["0" * 64, "not hex at all"])
async def test_a_forged_checkout_signature_is_refused_and_nothing_recorded(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    signature: str,
) -> None:
    paid = await checkout(store, commands, standin)
    with pytest.raises(PaymentSignatureInvalid):
        await run(store, commands.verify, verify(paid, signature=signature))
    assert await types(store) == ["payment.TopUpOrdered"]


async def test_another_users_order_is_not_found(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    paid = await checkout(store, commands, standin)
    with pytest.raises(OrderNotFound):
        await run(store, commands.verify, verify(paid, user_id="usr_2"))
    assert await types(store) == ["payment.TopUpOrdered"]


async def test_a_failed_payment_is_not_captured(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    paid = await checkout(store, commands, standin, outcome="failed")
    with pytest.raises(PaymentNotCaptured):
        await run(store, commands.verify, verify(paid))


async def test_an_authorized_payment_is_captured_by_verify(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    paid = await checkout(store, commands, standin, outcome="authorized")
    reply = await run(store, commands.verify, verify(paid))
    assert reply.status is OrderStatus.paid
    payment = (await standin.get(f"/v1/payments/{paid['razorpay_payment_id']}")).json()
    assert payment["status"] == "captured"


async def test_a_payment_of_another_amount_is_kept_as_mismatched_not_captured(
    store: InMemoryEventStore, commands: PaymentsCommands, standin: httpx.AsyncClient
) -> None:
    paid = await checkout(store, commands, standin, amount=100)
    with pytest.raises(PaymentMismatch):
        await run(store, commands.verify, verify(paid))
    assert await types(store) == ["payment.TopUpOrdered", "payment.PaymentMismatched"]


async def test_webhooks_signed_with_neither_secret_are_refused_and_nothing_recorded(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    await checkout(store, commands, standin, webhook_url=receiver.url, sign_with="forged-secret")
    for d in receiver.deliveries:
        with pytest.raises(WebhookSignatureInvalid):
            await run(store, commands.receive, received(d))
    tampered = receiver.deliveries[0]
    body = json.loads(tampered.body)
    body["payload"]["payment"]["entity"]["amount"] = 1
    forged = Delivery(json.dumps(body), tampered.headers)
    with pytest.raises(WebhookSignatureInvalid):
        await run(store, commands.receive, received(forged))
    assert await types(store) == ["payment.TopUpOrdered"]


async def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    await checkout(
        store, commands, standin, webhook_url=receiver.url, sign_with=PREVIOUS_WEBHOOK_SECRET
    )
    accepted = await run(store, commands.receive, received(receiver.deliveries[0]))
    assert not accepted.duplicate
    (event,) = [
        e for e in await store.read_all(Position.start()) if e.stream_id.startswith("webhook")
    ]
    assert event.data["secret"] == "previous"


async def test_duplicate_and_out_of_order_webhooks_capture_once(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    options = {"outcome": "failed_then_captured", "duplicate": True, "reverse": True}
    await checkout(store, commands, standin, webhook_url=receiver.url, **options)
    applied = await deliver(store, commands, receiver.deliveries)
    assert len(receiver.deliveries) == 8 and len(applied) == 4
    assert [(a.event, a.outcome) for a in applied] == [
        ("order.paid", WebhookOutcome.applied),
        ("payment.captured", WebhookOutcome.skipped),
        ("payment.authorized", WebhookOutcome.ignored),
        ("payment.failed", WebhookOutcome.skipped),  # paid already: a late failure is moot
    ]
    recorded = await types(store)
    assert recorded.count("payment.PaymentCaptured") == 1
    assert "payment.PaymentFailed" not in recorded


async def test_checkout_and_webhook_both_arriving_capture_once(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    paid = await checkout(store, commands, standin, webhook_url=receiver.url)
    await run(store, commands.verify, verify(paid))
    await deliver(store, commands, receiver.deliveries)
    assert (await types(store)).count("payment.PaymentCaptured") == 1


async def test_a_webhook_for_an_order_we_never_made_is_skipped_and_recorded(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    foreign = (await standin.post("/v1/orders", json={"amount": 1000, "currency": "INR"})).json()
    await pay(standin, foreign["id"], webhook_url=receiver.url)
    applied = await deliver(store, commands, receiver.deliveries)
    assert {a.outcome for a in applied} == {WebhookOutcome.skipped, WebhookOutcome.ignored}
    assert "payment.WebhookIgnored" in await types(store)


async def test_a_refund_before_its_capture_webhook_captures_then_refunds(
    store: InMemoryEventStore,
    commands: PaymentsCommands,
    standin: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    paid = await checkout(store, commands, standin, deliver=False)
    pay_id = paid["razorpay_payment_id"]
    r = await standin.post(f"/_test/payments/{pay_id}/refund", json={"webhook_url": receiver.url})
    assert r.status_code == 200, r.text
    await deliver(store, commands, receiver.deliveries)
    on_the_order = [t for t in await types(store) if not t.startswith("payment.Webhook")]
    assert on_the_order == [
        "payment.TopUpOrdered",
        "payment.PaymentCaptured",
        "payment.PaymentRefunded",
    ]


async def test_an_event_id_that_is_not_an_id_is_refused(
    store: InMemoryEventStore, commands: PaymentsCommands
) -> None:
    from services.payments.razorpay import signature

    body = '{"event":"payment.captured"}'
    sig = signature(commands.settings.razorpay_webhook_secret, body)
    with pytest.raises(DomainError) as refused:
        await run(store, commands.receive, ReceiveWebhook(body=body, signature=sig, event_id="a b"))
    assert refused.value.code == "bad_request"
