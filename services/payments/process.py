"""The payments process manager: a received webhook is applied; a checked capture credits
the wallet, a refund or a lost dispute debits it, each under a transfer id the wallet applies
once (``topup:<payment id>``, ``refund:<refund id>``, ``dispute:<dispute id>``). Pure: no I/O;
inbox, command ids, retries and refusals belong to the kit (:mod:`libs.process`)."""

from __future__ import annotations

from pydantic import BaseModel

from contracts.base import Event
from contracts.payments import (
    ApplyWebhook,
    DisputeLost,
    PaymentCaptured,
    PaymentRefunded,
    RecordTopUpCredited,
    RecordWalletDebit,
    TopUpOrder,
    WebhookApplied,
    WebhookReceived,
)
from contracts.wallet import CauseKind, DebitCredits, DepositCredits, WalletBalance
from libs.process import Cause, ProcessManager, Send
from services.payments.domain import credit_transfer, dispute_transfer, refund_transfer


class NoState(BaseModel):
    """Every step is decided by its event alone (the aggregates hold the rest)."""


class PaymentsProcess(ProcessManager[NoState]):
    name = "payments"
    subjects = (
        f"events.{WebhookReceived.event_type}",
        f"events.{PaymentCaptured.event_type}",
        f"events.{PaymentRefunded.event_type}",
        f"events.{DisputeLost.event_type}",
    )
    state_type = NoState

    def key(self, event: Event) -> str | None:
        return None

    def evolve(self, state: NoState, event: Event) -> NoState:
        return state

    def policy(self, cause: Cause, state: NoState) -> list[Send]:
        match cause.event:
            case WebhookReceived() as e:
                return [Send(ApplyWebhook(event_id=e.event_id), WebhookApplied)]
            case PaymentCaptured() as e:
                return [self._credit(e)]
            case PaymentRefunded() as e:
                return self._debit(e, refund_transfer(e.refund_id), CauseKind.refund, e.refund_id)
            case DisputeLost() as e:
                return self._debit(
                    e, dispute_transfer(e.dispute_id), CauseKind.dispute, e.dispute_id
                )
        return []

    def _credit(self, e: PaymentCaptured) -> Send:
        transfer_id = credit_transfer(e.payment_id)
        deposit = DepositCredits(
            user_id=e.user_id,
            transfer_id=transfer_id,
            amount=e.credits,
            cause=CauseKind.payment,
            cause_id=e.payment_id,
        )
        record = RecordTopUpCredited(
            order_id=e.order_id, payment_id=e.payment_id, transfer_id=transfer_id
        )
        return Send(deposit, WalletBalance, then=lambda _: [Send(record, TopUpOrder)])

    def _debit(
        self, e: PaymentRefunded | DisputeLost, transfer_id: str, cause: CauseKind, cause_id: str
    ) -> list[Send]:
        """Take the credits of a refund or a lost dispute back, then record that on the order."""
        if e.credits <= 0:
            return []
        debit = DebitCredits(
            user_id=e.user_id,
            transfer_id=transfer_id,
            amount=e.credits,
            cause=cause,
            cause_id=cause_id,
        )
        record = RecordWalletDebit(order_id=e.order_id, transfer_id=transfer_id, credits=e.credits)
        return [Send(debit, WalletBalance, then=lambda _: [Send(record, TopUpOrder)])]
