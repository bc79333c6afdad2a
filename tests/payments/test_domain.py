"""The top-up order and webhook aggregates, without I/O: a payment is captured once, checked
against the order; failures are not final; refunds and disputes count once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from contracts.payments import (
    OrderStatus,
    PaymentCaptured,
    PaymentMismatched,
    PaymentVia,
    TopUpOrdered,
)
from services.payments.domain import TopUpOrder, Webhook, credits_for
from tests.aggregates import given

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORDERED = TopUpOrdered(
    order_id="order_A",
    topup_id="top_1",
    user_id="usr_1",
    amount_paise=50_000,
    currency="INR",
    credits=Decimal("500.00"),
    receipt="topup_top_1",
    at=NOW,
)


def payment(**fields: Any) -> dict[str, Any]:
    return {
        "id": "pay_1",
        "order_id": "order_A",
        "amount": 50_000,
        "currency": "INR",
        "status": "captured",
        "captured": True,
        **fields,
    }


def status(o: TopUpOrder) -> OrderStatus:
    """Where the order stands now (a call, so each check reads it afresh)."""
    return o.status


def order() -> TopUpOrder:
    return given(TopUpOrder(), ORDERED)


def test_credits_are_paise_over_paise_per_credit_exactly() -> None:
    assert credits_for(50_000, 100) == Decimal("500.00")
    assert credits_for(12_345, 100) == Decimal("123.45")
    assert credits_for(100, 1000) == Decimal("0.10")
    assert str(credits_for(101, 3)) == "33.67"


def test_a_payment_is_captured_once_whichever_way_it_arrives() -> None:
    o = order()
    assert o.capture(payment(), PaymentVia.checkout, NOW)
    assert not o.capture(payment(), PaymentVia.webhook, NOW)
    captured = [e for e in o.pending if isinstance(e, PaymentCaptured)]
    assert len(captured) == 1
    assert (captured[0].credits, captured[0].via, captured[0].user_id) == (
        Decimal("500.00"),
        PaymentVia.checkout,
        "usr_1",
    )
    assert status(o) is OrderStatus.paid


def test_a_failed_attempt_is_not_final() -> None:
    o = order()
    assert o.fail(payment(status="failed", error_code="BAD_REQUEST_ERROR"), NOW)
    assert status(o) is OrderStatus.failed
    assert not o.fail(payment(status="failed"), NOW)  # the same failure again
    assert o.capture(payment(), PaymentVia.webhook, NOW)
    assert status(o) is OrderStatus.paid
    assert not o.fail(payment(id="pay_2", status="failed"), NOW)  # paid: a late failure is moot


def test_a_payment_that_does_not_match_is_not_captured() -> None:
    for bad, why in (
        (payment(amount=100), "amount"),
        (payment(currency="USD"), "currency"),
        (payment(order_id="order_B"), "order"),
    ):
        o = order()
        assert o.capture(bad, PaymentVia.webhook, NOW)
        (event,) = o.pending
        assert isinstance(event, PaymentMismatched) and why in event.reason
        assert status(o) is OrderStatus.mismatched and o.payment_id is None
        assert not o.capture(bad, PaymentVia.webhook, NOW)  # known already


def test_a_second_payment_of_a_paid_order_is_a_mismatch() -> None:
    o = order()
    o.capture(payment(), PaymentVia.checkout, NOW)
    assert o.capture(payment(id="pay_2"), PaymentVia.webhook, NOW)
    assert isinstance(o.pending[-1], PaymentMismatched)
    assert o.payment_id == "pay_1" and o.status is OrderStatus.paid


def test_refunds_and_disputes_of_the_paying_payment_count_once() -> None:
    o = order()
    o.capture(payment(), PaymentVia.webhook, NOW)
    o.credited("pay_1", "topup:pay_1", NOW)
    assert status(o) is OrderStatus.credited
    assert not o.refund("rfnd_1", "pay_other", 10_000, NOW)
    assert o.refund("rfnd_1", "pay_1", 10_000, NOW)
    assert not o.refund("rfnd_1", "pay_1", 10_000, NOW)
    assert status(o) is OrderStatus.credited  # a partial refund
    assert o.refund("rfnd_2", "pay_1", 40_000, NOW)
    assert status(o) is OrderStatus.refunded
    assert o.lose_dispute("disp_1", "pay_1", 50_000, NOW)
    assert not o.lose_dispute("disp_1", "pay_1", 50_000, NOW)


def test_a_webhook_is_received_once_per_event_id() -> None:
    w = Webhook()
    assert w.receive("evt1", {"event": "payment.captured"}, "current", NOW)
    assert not w.receive("evt1", {"event": "payment.captured"}, "current", NOW)
    assert len(w.pending) == 1
