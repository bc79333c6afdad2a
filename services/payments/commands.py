"""Command handlers of the payments service.

Razorpay is called from two handlers only, CreateTopUpOrder and VerifyCheckout, each after
the stored-reply check (a repeated command id answers without calling it again).
ReceiveWebhook never calls it: it checks the signature, deduplicates on the event id and
answers; ApplyWebhook (from the process manager) acts on the signed payload.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from contracts.errors import (
    BadRequest,
    OrderNotFound,
    PaymentMismatch,
    PaymentNotCaptured,
    PaymentSignatureInvalid,
    WebhookSignatureInvalid,
)
from contracts.payments import (
    ApplyWebhook,
    CreateTopUpOrder,
    PaymentMismatched,
    PaymentVia,
    ReceiveWebhook,
    RecordTopUpCredited,
    RecordWalletDebit,
    TopUpOrder,
    VerifyCheckout,
    WebhookAccepted,
    WebhookApplied,
    WebhookOutcome,
)
from contracts.text import ID_PATTERN
from libs.bus.commands import CommandServer
from libs.eventstore.uow import UnitOfWork
from libs.logging import get_logger
from services.payments.domain import TopUpOrder as Order
from services.payments.domain import Webhook
from services.payments.razorpay import (
    CAPTURED,
    Razorpay,
    RazorpayError,
    signature_matches,
    was_captured,
)
from services.payments.settings import PaymentsSettings

log = get_logger(__name__)

#: Razorpay's longest receipt.
MAX_RECEIPT = 40
_EVENT_ID = re.compile(ID_PATTERN)


def receipt_for(topup_id: str) -> str:
    return f"topup_{topup_id}"


def order_view(order: Order, key_id: str) -> TopUpOrder:
    assert order.created_at is not None
    return TopUpOrder(
        order_id=order.order_id,
        topup_id=order.topup_id,
        key_id=key_id,
        amount_paise=order.amount_paise,
        currency=order.currency,
        credits=order.credits,
        credit_currency="credits",
        receipt=order.receipt,
        status=order.status,
        payment_id=order.payment_id,
        created_at=order.created_at,
        updated_at=order.updated_at or order.created_at,
    )


def _entity(payload: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = (payload.get(name) or {}).get("entity")
    return found if isinstance(found, dict) else None


class PaymentsCommands:
    def __init__(self, settings: PaymentsSettings, razorpay: Razorpay) -> None:
        self.settings = settings
        self.razorpay = razorpay

    def register(self, server: CommandServer) -> None:
        server.register(CreateTopUpOrder, self.create_order)
        server.register(VerifyCheckout, self.verify)
        server.register(ReceiveWebhook, self.receive)
        # From the service's own process manager.
        server.register(ApplyWebhook, self.apply)
        server.register(RecordTopUpCredited, self.record_credited)
        server.register(RecordWalletDebit, self.record_debit)

    def _view(self, order: Order) -> TopUpOrder:
        return order_view(order, self.settings.razorpay_key_id)

    async def _owned(self, uow: UnitOfWork, order_id: str, user_id: str) -> Order:
        order = await uow.get(Order, order_id)
        if not order.exists or order.user_id != user_id:
            # Another user's order is indistinguishable from a missing one.
            raise OrderNotFound(f"no top-up order {order_id}", order_id=order_id)
        return order

    async def create_order(self, cmd: CreateTopUpOrder, uow: UnitOfWork) -> TopUpOrder:
        await uow.prefetch()  # a repeated command id answers here, before Razorpay is asked
        receipt = receipt_for(cmd.topup_id)
        if len(receipt) > MAX_RECEIPT:
            raise BadRequest(f"top-up id {cmd.topup_id} is too long for a receipt")
        s = self.settings
        created = await self.razorpay.create_order(
            cmd.amount_paise,
            s.currency,
            receipt,
            {"user_id": cmd.user_id, "topup_id": cmd.topup_id},
        )
        order = await uow.get(Order, str(created["id"]))
        order.order(
            order_id=str(created["id"]),
            topup_id=cmd.topup_id,
            user_id=cmd.user_id,
            amount_paise=int(created["amount"]),
            currency=str(created["currency"]),
            paise_per_credit=s.paise_per_credit,
            receipt=receipt,
            at=datetime.now(UTC),
        )
        log.info("topup_ordered", order_id=order.order_id, user_id=cmd.user_id)
        return self._view(order)

    async def verify(self, cmd: VerifyCheckout, uow: UnitOfWork) -> TopUpOrder:
        """Checkout's signed answer: check it, confirm with Razorpay, record the capture."""
        message = f"{cmd.order_id}|{cmd.payment_id}"
        if not signature_matches(self.settings.razorpay_key_secret, message, cmd.signature):
            raise PaymentSignatureInvalid("the checkout signature does not match")
        order = await self._owned(uow, cmd.order_id, cmd.user_id)
        if order.payment_id == cmd.payment_id:
            return self._view(order)  # paid already (by the webhook, or a first verify)
        payment = await self._captured_payment(cmd.order_id, cmd.payment_id, order)
        if order.capture(payment, PaymentVia.checkout, datetime.now(UTC)):
            mismatched = [e for e in order.pending if isinstance(e, PaymentMismatched)]
            if mismatched:
                _alert(mismatched[0], "checkout")
                await uow.commit_alone()  # kept although the command is refused
                raise PaymentMismatch(
                    f"payment {cmd.payment_id} does not match the order: {mismatched[0].reason}",
                    order_id=cmd.order_id,
                )
        else:  # the order was paid by another payment
            raise PaymentMismatch(
                f"payment {cmd.payment_id} does not match the order", order_id=cmd.order_id
            )
        return self._view(order)

    async def _captured_payment(
        self, order_id: str, payment_id: str, order: Order
    ) -> dict[str, Any]:
        """The payment as Razorpay has it, captured now if it was only authorized."""
        try:
            payment = await self.razorpay.payment(payment_id)
            if payment.get("status") == "authorized" and order.mismatch(payment) is None:
                payment = await self.razorpay.capture(
                    payment_id, order.amount_paise, order.currency
                )
        except RazorpayError as e:
            log.warning("razorpay_refused", payment_id=payment_id, error=str(e))
            raise PaymentNotCaptured(
                f"the provider has no captured payment {payment_id}: {e.description}",
                order_id=order_id,
            ) from e
        if payment.get("status") not in CAPTURED:
            raise PaymentNotCaptured(
                f"payment {payment_id} is {payment.get('status')}, not captured: nothing is"
                " credited",
                order_id=order_id,
            )
        return payment

    async def receive(self, cmd: ReceiveWebhook, uow: UnitOfWork) -> WebhookAccepted:
        """Check the signature (current secret, then the previous one) and keep the webhook
        once per event id. No call to Razorpay: it waits 5 s at most."""
        s = self.settings
        if signature_matches(s.razorpay_webhook_secret, cmd.body, cmd.signature):
            secret = "current"
        elif signature_matches(s.razorpay_webhook_secret_previous, cmd.body, cmd.signature):
            secret = "previous"
        else:
            raise WebhookSignatureInvalid("the webhook signature does not match its body")
        if len(cmd.event_id) > 64 or not _EVENT_ID.match(cmd.event_id):
            raise BadRequest("X-Razorpay-Event-Id is not an event id")
        try:
            body = json.loads(cmd.body)
        except ValueError as e:
            raise BadRequest("the webhook body is not JSON") from e
        if not isinstance(body, dict):
            raise BadRequest("the webhook body is not a JSON object")
        webhook = await uow.get(Webhook, cmd.event_id)
        fresh = webhook.receive(cmd.event_id, body, secret, datetime.now(UTC))
        return WebhookAccepted(event_id=cmd.event_id, duplicate=not fresh)

    async def apply(self, cmd: ApplyWebhook, uow: UnitOfWork) -> WebhookApplied:
        webhook = await uow.get(Webhook, cmd.event_id)
        if not webhook.received:
            return WebhookApplied(
                event_id=cmd.event_id,
                event="",
                outcome=WebhookOutcome.skipped,
                order_id=None,
                reason="no such webhook was received",
            )
        now = datetime.now(UTC)
        name = webhook.event
        payload = webhook.payload.get("payload") or {}
        payment = _entity(payload, "payment")
        acts = ("payment.captured", "order.paid", "payment.failed", "refund.processed")
        if name not in (*acts, "payment.dispute.lost") or payment is None:
            return self._ignore(webhook, WebhookOutcome.ignored, f"payments does not act on {name}")
        order_id = str(payment.get("order_id") or "")
        order = await uow.get(Order, order_id) if order_id else None
        if order is None or not order.exists:
            log.warning("webhook_unknown_order", event_id=cmd.event_id, order_id=order_id)
            reason = f"no top-up order {order_id or '(none)'}"
            return self._ignore(webhook, WebhookOutcome.skipped, reason)
        changed = self._apply(name, payload, payment, order, now)
        for e in order.pending:
            if isinstance(e, PaymentMismatched):
                _alert(e, "webhook")
        if not changed:
            return self._ignore(webhook, WebhookOutcome.skipped, "nothing to do: applied already")
        return WebhookApplied(
            event_id=cmd.event_id,
            event=name,
            outcome=WebhookOutcome.applied,
            order_id=order.order_id,
            reason=None,
        )

    def _apply(
        self,
        name: str,
        payload: dict[str, Any],
        payment: dict[str, Any],
        order: Order,
        now: datetime,
    ) -> bool:
        if name == "payment.failed":
            return order.fail(payment, now)
        # A capture first: a refund's or dispute's webhook may come before the capture's.
        changed = False
        if was_captured(payment):
            changed = order.capture(payment, PaymentVia.webhook, now)
        if name == "refund.processed" and (refund := _entity(payload, "refund")) is not None:
            amount = int(refund.get("amount") or 0)
            changed |= order.refund(str(refund["id"]), str(refund["payment_id"]), amount, now)
        if name == "payment.dispute.lost" and (dispute := _entity(payload, "dispute")) is not None:
            amount = int(dispute.get("amount_deducted") or dispute.get("amount") or 0)
            changed |= order.lose_dispute(
                str(dispute["id"]), str(dispute["payment_id"]), amount, now
            )
        return changed

    def _ignore(self, webhook: Webhook, outcome: WebhookOutcome, reason: str) -> WebhookApplied:
        webhook.ignore(outcome.value, reason, datetime.now(UTC))
        return WebhookApplied(
            event_id=webhook.event_id,
            event=webhook.event,
            outcome=outcome,
            order_id=None,
            reason=reason,
        )

    async def record_credited(self, cmd: RecordTopUpCredited, uow: UnitOfWork) -> TopUpOrder:
        order = await uow.get(Order, cmd.order_id)
        if not order.exists:
            raise OrderNotFound(f"no top-up order {cmd.order_id}", order_id=cmd.order_id)
        order.credited(cmd.payment_id, cmd.transfer_id, datetime.now(UTC))
        return self._view(order)

    async def record_debit(self, cmd: RecordWalletDebit, uow: UnitOfWork) -> TopUpOrder:
        order = await uow.get(Order, cmd.order_id)
        if not order.exists:
            raise OrderNotFound(f"no top-up order {cmd.order_id}", order_id=cmd.order_id)
        order.debit_recorded(cmd.transfer_id, cmd.credits, datetime.now(UTC))
        return self._view(order)


def _alert(e: PaymentMismatched, via: str) -> None:
    log.error(
        "payment_mismatched",
        alert=True,
        via=via,
        order_id=e.order_id,
        payment_id=e.payment_id,
        reason=e.reason,
        amount_paise=e.amount_paise,
        currency=e.currency,
    )
