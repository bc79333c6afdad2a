"""The payments aggregates: one top-up order per Razorpay order, one received webhook per
Razorpay event id. Pure: no I/O, no clock (times come in).

A top-up order is paid once: the first checked capture (from the checkout's callback or a
webhook, whichever comes first) records ``PaymentCaptured``; any later one is a no-op, so the
wallet is credited once. A failed attempt is not final. Refunds and lost disputes are kept
by their ids, so each debits once.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from contracts.base import Event
from contracts.payments import (
    DisputeLost,
    OrderStatus,
    PaymentCaptured,
    PaymentFailed,
    PaymentMismatched,
    PaymentRefunded,
    PaymentVia,
    TopUpCredited,
    TopUpOrdered,
    WalletDebitRecorded,
    WebhookIgnored,
    WebhookReceived,
)
from contracts.wallet import credits
from libs.eventstore.aggregate import Aggregate


def credits_for(amount_paise: int, paise_per_credit: int) -> Decimal:
    """Credits for an amount in paise: exact, two places."""
    return credits(Decimal(amount_paise) / Decimal(paise_per_credit))


def credit_transfer(payment_id: str) -> str:
    return f"topup:{payment_id}"


def refund_transfer(refund_id: str) -> str:
    return f"refund:{refund_id}"


def dispute_transfer(dispute_id: str) -> str:
    return f"dispute:{dispute_id}"


class TopUpOrder(Aggregate):
    """A top-up order, stream ``order-<razorpay order id>``."""

    stream_prefix = "order"

    exists: bool = False
    order_id: str = ""
    topup_id: str = ""
    user_id: str = ""
    amount_paise: int = 0
    currency: str = ""
    credits: Decimal = Decimal(0)
    paise_per_credit: int = 100
    receipt: str = ""
    status: OrderStatus = OrderStatus.created
    payment_id: str | None = None
    credited_transfer: str | None = None
    failed_payments: list[str] = []
    mismatched_payments: list[str] = []
    refunded_paise: int = 0
    refunds: list[str] = []
    disputes: list[str] = []
    debits: list[str] = []
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case TopUpOrdered():
                self.exists = True
                self.order_id, self.topup_id, self.user_id = (
                    event.order_id,
                    event.topup_id,
                    event.user_id,
                )
                self.amount_paise, self.currency = event.amount_paise, event.currency
                self.credits, self.receipt = event.credits, event.receipt
                if event.credits:
                    self.paise_per_credit = int(Decimal(event.amount_paise) / event.credits)
                self.created_at = event.at
            case PaymentFailed():
                self.failed_payments = [*self.failed_payments, event.payment_id]
                if self.payment_id is None:
                    self.status = OrderStatus.failed
            case PaymentCaptured():
                self.payment_id = event.payment_id
                self.status = OrderStatus.paid
            case PaymentMismatched():
                self.mismatched_payments = [*self.mismatched_payments, event.payment_id]
                if self.payment_id is None:
                    self.status = OrderStatus.mismatched
            case TopUpCredited():
                self.credited_transfer = event.transfer_id
                if self.status is OrderStatus.paid:
                    self.status = OrderStatus.credited
            case PaymentRefunded():
                self.refunds = [*self.refunds, event.refund_id]
                self.refunded_paise += event.amount_paise
                if self.refunded_paise >= self.amount_paise:
                    self.status = OrderStatus.refunded
            case DisputeLost():
                self.disputes = [*self.disputes, event.dispute_id]
            case WalletDebitRecorded():
                self.debits = [*self.debits, event.transfer_id]
        self.updated_at = getattr(event, "at", self.updated_at)

    # --- decisions --------------------------------------------------------------------

    def order(
        self,
        order_id: str,
        topup_id: str,
        user_id: str,
        amount_paise: int,
        currency: str,
        paise_per_credit: int,
        receipt: str,
        at: datetime,
    ) -> None:
        self.record(
            TopUpOrdered(
                order_id=order_id,
                topup_id=topup_id,
                user_id=user_id,
                amount_paise=amount_paise,
                currency=currency,
                credits=credits_for(amount_paise, paise_per_credit),
                receipt=receipt,
                at=at,
            )
        )

    def fail(self, payment: dict[str, Any], at: datetime) -> bool:
        """A failed attempt; not final. Nothing once paid or when known already."""
        payment_id = str(payment["id"])
        if self.payment_id is not None or payment_id in self.failed_payments:
            return False
        self.record(
            PaymentFailed(
                order_id=self.order_id,
                payment_id=payment_id,
                error_code=payment.get("error_code"),
                error_description=payment.get("error_description"),
                at=at,
            )
        )
        return True

    def mismatch(self, payment: dict[str, Any]) -> str | None:
        """Why ``payment`` (Razorpay's entity) cannot pay this order, or None."""
        if payment.get("order_id") != self.order_id:
            return f"payment is for order {payment.get('order_id')}, not {self.order_id}"
        if payment.get("currency") != self.currency:
            return f"currency {payment.get('currency')} is not the order's {self.currency}"
        if payment.get("amount") != self.amount_paise:
            return f"amount {payment.get('amount')} paise is not the order's {self.amount_paise}"
        if self.payment_id is not None and payment["id"] != self.payment_id:
            return f"the order was paid already by {self.payment_id}"
        return None

    def capture(self, payment: dict[str, Any], via: PaymentVia, at: datetime) -> bool:
        """Record a captured payment once it is checked against the order: PaymentCaptured,
        or PaymentMismatched (not credited). False when it changed nothing (paid already by
        this payment, or this mismatch known)."""
        payment_id = str(payment["id"])
        if self.payment_id == payment_id:
            return False
        reason = self.mismatch(payment)
        if reason is not None:
            if payment_id in self.mismatched_payments:
                return False
            self.record(
                PaymentMismatched(
                    order_id=self.order_id,
                    payment_id=payment_id,
                    reason=reason,
                    amount_paise=int(payment.get("amount") or 0),
                    currency=str(payment.get("currency") or ""),
                    at=at,
                )
            )
            return True
        self.record(
            PaymentCaptured(
                order_id=self.order_id,
                payment_id=payment_id,
                user_id=self.user_id,
                amount_paise=self.amount_paise,
                credits=self.credits,
                via=via,
                at=at,
            )
        )
        return True

    def credited(self, payment_id: str, transfer_id: str, at: datetime) -> None:
        if self.credited_transfer is not None or payment_id != self.payment_id:
            return
        self.record(
            TopUpCredited(
                order_id=self.order_id,
                payment_id=payment_id,
                user_id=self.user_id,
                transfer_id=transfer_id,
                credits=self.credits,
                at=at,
            )
        )

    def _for_our_payment(self, payment_id: str) -> bool:
        return self.payment_id is not None and payment_id == self.payment_id

    def refund(self, refund_id: str, payment_id: str, amount_paise: int, at: datetime) -> bool:
        """A processed refund of the payment that paid this order: debit it, once."""
        if refund_id in self.refunds or not self._for_our_payment(payment_id):
            return False
        self.record(
            PaymentRefunded(
                order_id=self.order_id,
                payment_id=payment_id,
                refund_id=refund_id,
                user_id=self.user_id,
                amount_paise=amount_paise,
                credits=credits_for(amount_paise, self.paise_per_credit),
                at=at,
            )
        )
        return True

    def lose_dispute(
        self, dispute_id: str, payment_id: str, amount_paise: int, at: datetime
    ) -> bool:
        if dispute_id in self.disputes or not self._for_our_payment(payment_id):
            return False
        self.record(
            DisputeLost(
                order_id=self.order_id,
                payment_id=payment_id,
                dispute_id=dispute_id,
                user_id=self.user_id,
                amount_paise=amount_paise,
                credits=credits_for(amount_paise, self.paise_per_credit),
                at=at,
            )
        )
        return True

    def debit_recorded(self, transfer_id: str, amount: Decimal, at: datetime) -> None:
        if transfer_id in self.debits:
            return
        self.record(
            WalletDebitRecorded(
                order_id=self.order_id, transfer_id=transfer_id, credits=amount, at=at
            )
        )


class Webhook(Aggregate):
    """A webhook received, stream ``webhook-<event id>``: its event id is seen once."""

    stream_prefix = "webhook"

    received: bool = False
    event_id: str = ""
    event: str = ""
    payload: dict[str, Any] = {}
    outcome: str | None = None
    reason: str | None = None

    def apply(self, event: Event) -> None:
        match event:
            case WebhookReceived():
                self.received = True
                self.event_id, self.event, self.payload = event.event_id, event.event, event.payload
            case WebhookIgnored():
                self.outcome, self.reason = event.outcome, event.reason

    def receive(self, event_id: str, body: dict[str, Any], secret: str, at: datetime) -> bool:
        """False when this event id was received before (a redelivery)."""
        if self.received:
            return False
        self.record(
            WebhookReceived(
                event_id=event_id,
                event=str(body.get("event", "")),
                payload=body,
                secret=secret,
                at=at,
            )
        )
        return True

    def ignore(self, outcome: str, reason: str, at: datetime) -> None:
        if self.outcome is not None:
            return
        self.record(
            WebhookIgnored(
                event_id=self.event_id, event=self.event, outcome=outcome, reason=reason, at=at
            )
        )
