"""Read models of the wallet service (tables: ``services/wallet/migrations``).

``balances`` and ``holds`` are declarative read models. ``transfers`` records each transfer
with the wallet's balance, held and available amounts right after it: a running total,
which a per-row rule cannot see, so it is a projection of its own that folds each batch on
top of the last row of every wallet it touches (in the checkpoint's transaction, like every
projector). The gateway reads ``balances`` and ``transfers`` only through
``libs/readmodels/wallet.py`` (ADR 0007).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from contracts.envelope import Currency
from contracts.wallet import (
    CauseKind,
    CreditsDebited,
    CreditsDeposited,
    CreditsHeld,
    HoldCaptured,
    HoldExpired,
    HoldIncreased,
    HoldStatus,
    HoldVoided,
    TransferKind,
    WalletEvent,
)
from libs.eventstore.processor import Projection
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

ZERO = Decimal("0.00")
#: Every wallet event: each changes the balance, the held amount or both.
ALL_EVENTS = (
    CreditsDeposited,
    CreditsDebited,
    CreditsHeld,
    HoldIncreased,
    HoldCaptured,
    HoldVoided,
    HoldExpired,
)


@dataclass(frozen=True)
class Movement:
    """What one wallet event did: its transfer's kind, amount and changes."""

    kind: TransferKind
    amount: Decimal
    balance_change: Decimal
    held_change: Decimal
    cause: CauseKind
    cause_id: str
    job_id: str | None = None
    hold_id: str | None = None

    @property
    def direction(self) -> str:
        if self.balance_change > 0:
            return "in"
        return "out" if self.balance_change < 0 else "none"


def movement(e: WalletEvent) -> Movement:
    """The movement of a wallet event (pure; the same rule for every read model)."""
    job = CauseKind.job
    match e:
        case CreditsDeposited():
            return Movement(TransferKind.deposit, e.amount, e.amount, ZERO, e.cause, e.cause_id)
        case CreditsDebited():
            return Movement(TransferKind.debit, e.amount, -e.amount, ZERO, e.cause, e.cause_id)
        case CreditsHeld():
            return Movement(
                TransferKind.hold, e.amount, ZERO, e.amount, job, e.job_id, e.job_id, e.hold_id
            )
        case HoldIncreased():
            return Movement(
                TransferKind.hold_increase,
                e.amount,
                ZERO,
                e.amount,
                job,
                e.job_id,
                e.job_id,
                e.hold_id,
            )
        case HoldCaptured():
            return Movement(
                TransferKind.capture,
                e.captured,
                -e.captured,
                -(e.captured + e.released),
                job,
                e.job_id,
                e.job_id,
                e.hold_id,
            )
        case HoldVoided():
            return Movement(
                TransferKind.void, e.released, ZERO, -e.released, job, e.job_id, e.job_id, e.hold_id
            )
        case HoldExpired():
            return Movement(
                TransferKind.expiry,
                e.released,
                ZERO,
                -e.released,
                job,
                e.job_id,
                e.job_id,
                e.hold_id,
            )
    raise TypeError(f"not a wallet event: {type(e).__name__}")


class BalancesProjection(ReadModel):
    """``wallet.balances``: each wallet's balance, held and available credits."""

    name = "balances"
    table = "balances"
    key = ("user_id",)
    columns = {
        "user_id": "text",
        "currency": "text",
        "balance": "numeric",
        "held": "numeric",
        "available": "numeric",
        "version": "integer",
        "updated_at": "timestamptz",
    }

    @on(*ALL_EVENTS, key=lambda e: (e.user_id,))
    def moved(self, row: Row | None, e: WalletEvent, rec: RecordedEvent) -> Row:
        m = movement(e)
        balance = (row["balance"] if row else ZERO) + m.balance_change
        held = (row["held"] if row else ZERO) + m.held_change
        return {
            "user_id": e.user_id,
            "currency": Currency.credits.value,
            "balance": balance,
            "held": held,
            "available": balance - held,
            "version": rec.version,
            "updated_at": e.at,
        }


class HoldsProjection(ReadModel):
    """``wallet.holds``: each hold's amount and state (the sweeper finds stale ones here)."""

    name = "holds"
    table = "holds"
    key = ("user_id", "hold_id")
    columns = {
        "user_id": "text",
        "hold_id": "text",
        "job_id": "text",
        "held": "numeric",
        "status": "text",
        "expires_at": "timestamptz",
        "updated_at": "timestamptz",
    }

    @on(CreditsHeld, key=lambda e: (e.user_id, e.hold_id))
    def held(self, row: Row | None, e: CreditsHeld, rec: RecordedEvent) -> Row:
        return {
            "user_id": e.user_id,
            "hold_id": e.hold_id,
            "job_id": e.job_id,
            "held": e.amount,
            "status": HoldStatus.pending.value,
            "expires_at": e.expires_at,
            "updated_at": e.at,
        }

    @on(HoldIncreased, key=lambda e: (e.user_id, e.hold_id))
    def increased(self, row: Row | None, e: HoldIncreased, rec: RecordedEvent) -> Row | None:
        return row and {**row, "held": e.held_total, "expires_at": e.expires_at, "updated_at": e.at}

    @on(HoldCaptured, HoldVoided, HoldExpired, key=lambda e: (e.user_id, e.hold_id))
    def resolved(
        self, row: Row | None, e: HoldCaptured | HoldVoided | HoldExpired, rec: RecordedEvent
    ) -> Row | None:
        status = {
            HoldCaptured: HoldStatus.captured,
            HoldVoided: HoldStatus.voided,
            HoldExpired: HoldStatus.expired,
        }[type(e)]
        return row and {**row, "status": status.value, "updated_at": e.at}


_TRANSFER_COLUMNS = (
    "user_id",
    "version",
    "transfer_id",
    "kind",
    "amount",
    "direction",
    "balance_change",
    "held_change",
    "cause",
    "cause_id",
    "job_id",
    "hold_id",
    "balance_after",
    "held_after",
    "available_after",
    "at",
)


class TransfersProjection(Projection):
    """``wallet.transfers``: one row per transfer with the wallet's amounts after it."""

    name = "transfers"
    types = tuple(sorted(cls.event_type for cls in ALL_EVENTS))

    async def apply(
        self, conn: asyncpg.Connection, events: list[RecordedEvent], schema: str
    ) -> None:
        decoded = [(rec, rec.decode()) for rec in events]
        users = sorted({e.user_id for _, e in decoded if isinstance(e, WalletEvent)})
        last = await conn.fetch(
            f"SELECT DISTINCT ON (user_id) user_id, balance_after, held_after"
            f" FROM {schema}.transfers WHERE user_id = ANY($1::text[])"
            " ORDER BY user_id, version DESC",
            users,
        )
        totals = {r["user_id"]: (r["balance_after"], r["held_after"]) for r in last}
        rows: list[tuple[object, ...]] = []
        for rec, e in decoded:
            if not isinstance(e, WalletEvent):
                continue
            m = movement(e)
            balance, held = totals.get(e.user_id, (ZERO, ZERO))
            balance, held = balance + m.balance_change, held + m.held_change
            totals[e.user_id] = (balance, held)
            rows.append(
                (
                    e.user_id,
                    rec.version,
                    e.transfer_id,
                    m.kind.value,
                    m.amount,
                    m.direction,
                    m.balance_change,
                    m.held_change,
                    m.cause.value,
                    m.cause_id,
                    m.job_id,
                    m.hold_id,
                    balance,
                    held,
                    balance - held,
                    e.at,
                )
            )
        placeholders = ", ".join(f"${i}" for i in range(1, len(_TRANSFER_COLUMNS) + 1))
        await conn.executemany(
            f"INSERT INTO {schema}.transfers ({', '.join(_TRANSFER_COLUMNS)})"
            f" VALUES ({placeholders}) ON CONFLICT (user_id, version) DO NOTHING",
            rows,
        )
