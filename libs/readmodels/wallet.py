"""Queries on the wallet service's read models: ``<schema>.balances`` and
``<schema>.transfers``.

Owned by the wallet service (``services/wallet``). A change to the columns these queries
read, in ``services/wallet/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_wallet_queries.py`` pins the contract.

Every query takes the wallet's owner: nobody reads another user's wallet through here.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import Currency
from contracts.wallet import CauseKind, Credits, TransferKind
from libs.readmodels import check_schema

#: The schema the wallet service owns (its ``Service.schema``).
SCHEMA = "wallet"
ZERO = Decimal("0.00")


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WalletView(_View):
    """A user's wallet as the API shows it."""

    balance_credits: Credits = Field(description="Credits in minus credits out (posted).")
    held_credits: Credits = Field(description="Credits reserved by pending holds for jobs.")
    available_credits: Credits = Field(
        description="balance - held: what new jobs may reserve (below zero after a refund of"
        " credits already spent)."
    )
    currency: Currency = Field(description="Unit of every amount here.")
    updated_at: datetime | None = Field(
        description="When the wallet last changed; null for a wallet that never had credits."
    )


class WalletCause(_View):
    kind: CauseKind = Field(
        description="Why credits moved: job, payment, refund, dispute, grant or adjustment."
    )
    id: str = Field(description="The cause's id: the job, payment, refund, ... id.")


class WalletTransaction(_View):
    """One transfer on a wallet, with the wallet's amounts right after it."""

    transfer_id: str = Field(description="The transfer's id (applied at most once).")
    kind: TransferKind = Field(
        description="deposit, hold, hold_increase, capture, void, expiry or debit."
    )
    amount_credits: Credits = Field(
        description="Credits the transfer moved or reserved (a capture: what it posted)."
    )
    direction: str = Field(
        description="in (the balance grew), out (it shrank) or none (only held changed)."
    )
    balance_after_credits: Credits = Field(description="The balance right after it.")
    held_after_credits: Credits = Field(description="Credits held right after it.")
    available_after_credits: Credits = Field(description="Available credits right after it.")
    cause: WalletCause = Field(description="Why it happened.")
    debit_account: str = Field(
        description="The ledger account debited: user:<id> (this wallet), job_holds (a hold"
        " released), or the source of a deposit (payments_clearing, grants, disputes,"
        " adjustments)."
    )
    credit_account: str = Field(
        description="The ledger account credited: user:<id> (this wallet), job_holds (a hold,"
        " pending), render_revenue (a capture), or where a debit went (refunds, disputes,"
        " adjustments)."
    )
    job_id: str | None = Field(description="The job, for holds and their resolution.")
    hold_id: str | None = Field(description="The hold, for holds and their resolution.")
    at: datetime = Field(description="When it was applied.")
    sequence: int = Field(description="Its place in the wallet's history (1 is the first).")


def _transaction(r: asyncpg.Record) -> WalletTransaction:
    return WalletTransaction(
        transfer_id=r["transfer_id"],
        kind=TransferKind(r["kind"]),
        amount_credits=r["amount"],
        direction=r["direction"],
        balance_after_credits=r["balance_after"],
        held_after_credits=r["held_after"],
        available_after_credits=r["available_after"],
        cause=WalletCause(kind=CauseKind(r["cause"]), id=r["cause_id"]),
        debit_account=r["debit_account"],
        credit_account=r["credit_account"],
        job_id=r["job_id"],
        hold_id=r["hold_id"],
        at=r["at"],
        sequence=r["version"],
    )


class WalletQuery:
    """Read-only access to the wallet service's balances and transfers."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self._wallet_sql = (
            f"SELECT balance, held, available, currency, updated_at, version FROM {s}.balances"
            " WHERE user_id = $1"
        )
        self._transfers_sql = (
            "SELECT version, transfer_id, kind, amount, direction, balance_after, held_after,"
            f" available_after, cause, cause_id, debit_account, credit_account, job_id, hold_id, at"
            f" FROM {s}.transfers"
            " WHERE user_id = $1 AND ($2::integer IS NULL OR version < $2)"
            " ORDER BY version DESC LIMIT $3"
        )

    async def wallet(self, user_id: str) -> tuple[WalletView, int]:
        """The user's wallet and its version (zeros and version 0 with no transfer yet)."""
        r = await self.pool.fetchrow(self._wallet_sql, user_id)
        if r is None:
            view = WalletView(
                balance_credits=ZERO,
                held_credits=ZERO,
                available_credits=ZERO,
                currency=Currency.credits,
                updated_at=None,
            )
            return view, 0
        view = WalletView(
            balance_credits=r["balance"],
            held_credits=r["held"],
            available_credits=r["available"],
            currency=Currency(r["currency"]),
            updated_at=r["updated_at"],
        )
        return view, r["version"]

    async def transactions(
        self, user_id: str, before_sequence: int | None, limit: int
    ) -> list[WalletTransaction]:
        """The user's transfers newest first, those before ``before_sequence`` only."""
        rows = await self.pool.fetch(self._transfers_sql, user_id, before_sequence, limit)
        return [_transaction(r) for r in rows]
