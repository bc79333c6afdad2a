"""``payments.orders``: one row per top-up order, for the API (``libs/readmodels/payments.py``)
and reconciliation (``tools/reconcile.py``)."""

from __future__ import annotations

from decimal import Decimal

from contracts.payments import (
    DisputeLost,
    OrderStatus,
    PaymentCaptured,
    PaymentFailed,
    PaymentMismatched,
    PaymentRefunded,
    TopUpCredited,
    TopUpOrdered,
    WalletDebitRecorded,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent


class OrdersProjection(ReadModel):
    name = "orders"
    table = "orders"
    key = ("order_id",)
    columns = {
        "order_id": "text",
        "topup_id": "text",
        "user_id": "text",
        "amount_paise": "bigint",
        "currency": "text",
        "credits": "numeric",
        "receipt": "text",
        "status": "text",
        "payment_id": "text",
        "credited_transfer": "text",
        "credited_credits": "numeric",
        "refunded_paise": "bigint",
        "debit_due_credits": "numeric",
        "debited_credits": "numeric",
        "mismatch_reason": "text",
        "created_at": "timestamptz",
        "updated_at": "timestamptz",
        "paid_at": "timestamptz",
        "credited_at": "timestamptz",
        "version": "integer",
    }

    @staticmethod
    def _moved(row: Row, rec: RecordedEvent, **changes: object) -> Row:
        return {**row, **changes, "updated_at": rec.recorded_at, "version": rec.version}

    @on(TopUpOrdered, key=lambda e: (e.order_id,))
    def ordered(self, row: Row | None, e: TopUpOrdered, rec: RecordedEvent) -> Row | None:
        return {
            "order_id": e.order_id,
            "topup_id": e.topup_id,
            "user_id": e.user_id,
            "amount_paise": e.amount_paise,
            "currency": e.currency,
            "credits": e.credits,
            "receipt": e.receipt,
            "status": OrderStatus.created.value,
            "payment_id": None,
            "credited_transfer": None,
            "credited_credits": Decimal(0),
            "refunded_paise": 0,
            "debit_due_credits": Decimal(0),
            "debited_credits": Decimal(0),
            "mismatch_reason": None,
            "created_at": e.at,
            "updated_at": e.at,
            "paid_at": None,
            "credited_at": None,
            "version": rec.version,
        }

    @on(PaymentFailed, key=lambda e: (e.order_id,))
    def failed(self, row: Row | None, e: PaymentFailed, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        status = OrderStatus.failed.value if row["payment_id"] is None else row["status"]
        return self._moved(row, rec, status=status)

    @on(PaymentCaptured, key=lambda e: (e.order_id,))
    def captured(self, row: Row | None, e: PaymentCaptured, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        return self._moved(
            row, rec, status=OrderStatus.paid.value, payment_id=e.payment_id, paid_at=e.at
        )

    @on(PaymentMismatched, key=lambda e: (e.order_id,))
    def mismatched(self, row: Row | None, e: PaymentMismatched, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        status = OrderStatus.mismatched.value if row["payment_id"] is None else row["status"]
        return self._moved(row, rec, status=status, mismatch_reason=e.reason)

    @on(TopUpCredited, key=lambda e: (e.order_id,))
    def credited(self, row: Row | None, e: TopUpCredited, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        status = OrderStatus.credited.value if row["status"] == "paid" else row["status"]
        return self._moved(
            row,
            rec,
            status=status,
            credited_transfer=e.transfer_id,
            credited_credits=e.credits,
            credited_at=e.at,
        )

    @on(PaymentRefunded, key=lambda e: (e.order_id,))
    def refunded(self, row: Row | None, e: PaymentRefunded, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        refunded = row["refunded_paise"] + e.amount_paise
        full = refunded >= row["amount_paise"]
        return self._moved(
            row,
            rec,
            status=OrderStatus.refunded.value if full else row["status"],
            refunded_paise=refunded,
            debit_due_credits=row["debit_due_credits"] + e.credits,
        )

    @on(DisputeLost, key=lambda e: (e.order_id,))
    def dispute_lost(self, row: Row | None, e: DisputeLost, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        return self._moved(row, rec, debit_due_credits=row["debit_due_credits"] + e.credits)

    @on(WalletDebitRecorded, key=lambda e: (e.order_id,))
    def debited(self, row: Row | None, e: WalletDebitRecorded, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        return self._moved(row, rec, debited_credits=row["debited_credits"] + e.credits)
