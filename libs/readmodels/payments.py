"""Queries on the payments service's read model ``<schema>.orders``: each top-up order, its
payment and whether the wallet holds its credits.

Owned by the payments service (``services/payments``). A change to the columns read here,
in ``services/payments/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_payment_queries.py`` pins the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from contracts.payments import OrderStatus, TopUpOrder
from libs.readmodels import check_schema

#: The schema the payments service owns (its ``Service.schema``).
SCHEMA = "payments"

_COLUMNS = (
    "order_id, topup_id, user_id, amount_paise, currency, credits, receipt, status, payment_id,"
    " credited_transfer, credited_credits, refunded_paise, debit_due_credits, debited_credits,"
    " mismatch_reason, created_at, updated_at, paid_at, credited_at, version"
)


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: str
    topup_id: str
    user_id: str
    amount_paise: int
    currency: str
    credits: Decimal
    receipt: str
    status: OrderStatus
    payment_id: str | None
    credited_transfer: str | None
    credited_credits: Decimal
    refunded_paise: int
    #: Credits refunds and lost disputes take back, and how many the wallet took.
    debit_due_credits: Decimal
    debited_credits: Decimal
    mismatch_reason: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    credited_at: datetime | None
    version: int

    def view(self, key_id: str) -> TopUpOrder:
        return TopUpOrder(
            order_id=self.order_id,
            topup_id=self.topup_id,
            key_id=key_id,
            amount_paise=self.amount_paise,
            currency=self.currency,
            credits=self.credits,
            credit_currency="credits",
            receipt=self.receipt,
            status=self.status,
            payment_id=self.payment_id,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def _row(r: asyncpg.Record) -> OrderRow:
    return OrderRow(**{**dict(r), "status": OrderStatus(r["status"])})


class PaymentsQuery:
    """Read-only access to the payments service's orders."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self._order_sql = f"SELECT {_COLUMNS} FROM {s}.orders WHERE order_id = $1 AND user_id = $2"
        self._page_sql = (
            f"SELECT {_COLUMNS} FROM {s}.orders WHERE user_id = $1"
            " AND ($2::timestamptz IS NULL OR (created_at, order_id) < ($2, $3))"
            " ORDER BY created_at DESC, order_id DESC LIMIT $4"
        )
        self._window_sql = (
            f"SELECT {_COLUMNS} FROM {s}.orders WHERE created_at >= $1 AND created_at < $2"
            " ORDER BY created_at, order_id"
        )
        self._by_payment_sql = f"SELECT {_COLUMNS} FROM {s}.orders WHERE payment_id = ANY($1)"

    async def order(self, order_id: str, user_id: str) -> OrderRow | None:
        """The user's order (None for another user's)."""
        row = await self.pool.fetchrow(self._order_sql, order_id, user_id)
        return None if row is None else _row(row)

    async def orders(
        self, user_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[OrderRow]:
        """The user's orders, newest first, after the cursor ``(created_at, order_id)``."""
        at, order_id = after if after is not None else (None, "")
        rows = await self.pool.fetch(self._page_sql, user_id, at, order_id, limit)
        return [_row(r) for r in rows]

    async def window(self, start: datetime, end: datetime) -> list[OrderRow]:
        """Every order created in [start, end), oldest first (for reconciliation)."""
        return [_row(r) for r in await self.pool.fetch(self._window_sql, start, end)]

    async def by_payments(self, payment_ids: list[str]) -> list[OrderRow]:
        """The orders these payments paid."""
        return [_row(r) for r in await self.pool.fetch(self._by_payment_sql, payment_ids)]
