"""Top-ups paid through Razorpay: events (``payment.*``), commands and answers.

A user asks for a **top-up order** of an amount in paise; the payments service creates a
Razorpay order for it (stream ``order-<razorpay order id>``). The payment is learnt two ways,
whichever arrives first: the checkout's callback (``VerifyCheckout``: HMAC-SHA256 of
``order_id|payment_id`` with the key secret) and Razorpay's webhooks (``ReceiveWebhook``:
HMAC-SHA256 of the raw body with the webhook secret, deduplicated on the event id, stream
``webhook-<event id>``, answered at once and applied from the bus). Both end in one
``PaymentCaptured`` per payment, after the amount, currency and order owner are checked, and
the wallet is credited under the transfer id ``topup:<payment id>``: once, whatever arrives
twice or out of order. ``payment.failed`` is not final (a later capture still credits).
Refunds and lost disputes debit the wallet (``refund:<refund id>``, ``dispute:<dispute id>``).

Credits per rupee come from the payments settings (default 1 credit = ₹1 = 100 paise).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.envelope import Currency
from contracts.text import IdText
from contracts.wallet import Credits

#: Razorpay's smallest order: ₹1.
MIN_ORDER_PAISE = 100
#: Our largest top-up in one order: ₹10,00,000.
MAX_ORDER_PAISE = 100_000_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrderStatus(StrEnum):
    created = "created"  # the order exists; nothing paid yet
    failed = "failed"  # a payment attempt failed (not final: another may succeed)
    paid = "paid"  # captured and checked; the wallet credit follows
    credited = "credited"  # the wallet holds the credits
    mismatched = "mismatched"  # paid, but amount, currency or owner did not match: not credited
    refunded = "refunded"  # refunded in full (partial refunds leave it credited)


class PaymentVia(StrEnum):
    checkout = "checkout"  # the checkout's signed callback, confirmed with the provider
    webhook = "webhook"  # a signed webhook


# --- events (stream order-<order id>, webhook-<event id>) --------------------------------


@EVENTS.register
class TopUpOrdered(Event):
    event_type = "payment.TopUpOrdered"
    order_id: str
    topup_id: str
    user_id: str
    amount_paise: int
    currency: str
    credits: Decimal
    receipt: str
    at: datetime


@EVENTS.register
class PaymentFailed(Event):
    """An attempt failed; the order stays payable (a later capture still credits)."""

    event_type = "payment.PaymentFailed"
    order_id: str
    payment_id: str
    error_code: str | None
    error_description: str | None
    at: datetime


@EVENTS.register
class PaymentCaptured(Event):
    """The payment was captured and matches the order: credit the wallet."""

    event_type = "payment.PaymentCaptured"
    order_id: str
    payment_id: str
    user_id: str
    amount_paise: int
    credits: Decimal
    via: PaymentVia
    at: datetime


@EVENTS.register
class PaymentMismatched(Event):
    """A captured payment that does not match its order (amount, currency, order): not
    credited; an operator must look (an alert)."""

    event_type = "payment.PaymentMismatched"
    order_id: str
    payment_id: str
    reason: str
    amount_paise: int
    currency: str
    at: datetime


@EVENTS.register
class TopUpCredited(Event):
    event_type = "payment.TopUpCredited"
    order_id: str
    payment_id: str
    user_id: str
    transfer_id: str
    credits: Decimal
    at: datetime


@EVENTS.register
class PaymentRefunded(Event):
    """A refund was processed: debit the wallet (it may go below zero)."""

    event_type = "payment.PaymentRefunded"
    order_id: str
    payment_id: str
    refund_id: str
    user_id: str
    amount_paise: int
    credits: Decimal
    at: datetime


@EVENTS.register
class DisputeLost(Event):
    """A chargeback the payer won: debit the wallet like a refund."""

    event_type = "payment.DisputeLost"
    order_id: str
    payment_id: str
    dispute_id: str
    user_id: str
    amount_paise: int
    credits: Decimal
    at: datetime


@EVENTS.register
class WalletDebitRecorded(Event):
    """The wallet took the refund's or dispute's debit."""

    event_type = "payment.WalletDebitRecorded"
    order_id: str
    transfer_id: str
    credits: Decimal
    at: datetime


@EVENTS.register
class WebhookReceived(Event):
    """A webhook whose signature checked, kept as received (applied from the bus)."""

    event_type = "payment.WebhookReceived"
    event_id: str
    event: str
    payload: dict[str, Any]
    #: Which secret signed it: current or previous (during a rotation).
    secret: str
    at: datetime


@EVENTS.register
class WebhookIgnored(Event):
    """A received webhook that changed nothing, and why: ``ignored`` (an event type we do not
    act on, e.g. payment.authorized) or ``skipped`` (an order we never made, or nothing left
    to do)."""

    event_type = "payment.WebhookIgnored"
    event_id: str
    event: str
    outcome: str
    reason: str
    at: datetime


# --- commands (served by the payments service) -------------------------------------------


@COMMANDS.register
class CreateTopUpOrder(Command):
    command_type = "payment.CreateTopUpOrder"
    user_id: IdText
    topup_id: IdText
    amount_paise: StrictInt = Field(ge=MIN_ORDER_PAISE, le=MAX_ORDER_PAISE)


@COMMANDS.register
class VerifyCheckout(Command):
    command_type = "payment.VerifyCheckout"
    user_id: IdText
    order_id: IdText
    payment_id: IdText
    signature: str = Field(min_length=1, max_length=200)


@COMMANDS.register
class ReceiveWebhook(Command):
    """The raw body exactly as received, and the headers that sign and name it."""

    command_type = "payment.ReceiveWebhook"
    body: str = Field(max_length=1_000_000)
    signature: str = Field(max_length=200)
    event_id: str = Field(min_length=1, max_length=100)


@COMMANDS.register
class ApplyWebhook(Command):
    """From the payments service's own policy: act on a received webhook."""

    command_type = "payment.ApplyWebhook"
    event_id: IdText


@COMMANDS.register
class RecordTopUpCredited(Command):
    command_type = "payment.RecordTopUpCredited"
    order_id: IdText
    payment_id: IdText
    transfer_id: str


@COMMANDS.register
class RecordWalletDebit(Command):
    command_type = "payment.RecordWalletDebit"
    order_id: IdText
    transfer_id: str
    credits: Decimal


class TopUpOrder(_Model):
    """A top-up order, as the API answers it: what to open Razorpay Checkout with."""

    order_id: str = Field(description="Razorpay's order id (order_...): open Checkout with it.")
    topup_id: str = Field(description="Our id of the top-up (top_...).")
    key_id: str = Field(description="Razorpay key id to open Checkout with (public).")
    amount_paise: int = Field(description="Amount to pay, in paise (₹1 = 100).")
    currency: str = Field(description="ISO currency of the payment (INR).")
    credits: Credits = Field(description="Credits the wallet gets once paid.")
    credit_currency: Currency = Field(description="Unit of credits.")
    receipt: str = Field(description="The receipt sent to Razorpay (topup_<id>).")
    status: OrderStatus = Field(description="Where the order stands.")
    payment_id: str | None = Field(description="The payment that paid it; null until then.")
    created_at: datetime = Field(description="UTC time the order was created.")
    updated_at: datetime = Field(description="UTC time of its latest change.")


class WebhookOutcome(StrEnum):
    applied = "applied"  # it changed an order
    ignored = "ignored"  # an event type payments does not act on
    skipped = "skipped"  # nothing to do: an unknown order, or already applied


class WebhookApplied(_Model):
    """The reply of ApplyWebhook."""

    event_id: str
    event: str
    outcome: WebhookOutcome
    order_id: str | None
    reason: str | None


class WebhookAccepted(_Model):
    event_id: str
    duplicate: bool = Field(description="True when this event id had been received before.")
