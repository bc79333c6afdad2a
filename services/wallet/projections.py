"""Read models of the wallet service (tables: ``services/wallet/migrations``).

All three are declarative read models (rebuilt and verified by ``renderctl rebuild``, with a
quarantine): every wallet event carries the wallet's balance and held amounts after it, so
``balances`` and each ``transfers`` row are a function of one event, with no running total
to carry from the row before. The gateway reads ``balances`` and ``transfers`` only through
``libs/readmodels/wallet.py`` (ADR 0007).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

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


#: The ledger's other accounts: every transfer debits one account and credits another.
#: ``user:<id>`` is the user's wallet; deposits come from the clearing account of their
#: cause, holds are pending towards ``job_holds``, captures post to ``render_revenue``, and
#: voids and expiries release what ``job_holds`` had pending.
COUNTER_ACCOUNTS = {
    CauseKind.payment: "payments_clearing",
    CauseKind.grant: "grants",
    CauseKind.refund: "refunds",
    CauseKind.dispute: "disputes",
    CauseKind.adjustment: "adjustments",
}
JOB_HOLDS, RENDER_REVENUE = "job_holds", "render_revenue"


def user_account(user_id: str) -> str:
    return f"user:{user_id}"


@dataclass(frozen=True)
class Movement:
    """What one wallet event did: its transfer's kind, amount and changes, and the two
    accounts it moved credits between (debited, credited)."""

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

    def accounts(self, user_id: str) -> tuple[str, str]:
        """(debited account, credited account) of the transfer."""
        user = user_account(user_id)
        match self.kind:
            case TransferKind.deposit:
                return COUNTER_ACCOUNTS[self.cause], user
            case TransferKind.debit:
                return user, COUNTER_ACCOUNTS[self.cause]
            case TransferKind.hold | TransferKind.hold_increase:
                return user, JOB_HOLDS  # pending
            case TransferKind.capture:
                return user, RENDER_REVENUE  # posted; the rest of the hold released
            case TransferKind.void | TransferKind.expiry:
                return JOB_HOLDS, user  # pending released


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
        return {
            "user_id": e.user_id,
            "currency": Currency.credits.value,
            "balance": e.balance_after,
            "held": e.held_after,
            "available": e.balance_after - e.held_after,
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


class TransfersProjection(ReadModel):
    """``wallet.transfers``: one row per transfer with the wallet's amounts after it (which
    the event carries), keyed by the wallet and the event's version in its stream."""

    name = "transfers"
    table = "transfers"
    key = ("user_id", "version")
    columns = {
        "user_id": "text",
        "version": "integer",
        "transfer_id": "text",
        "kind": "text",
        "amount": "numeric",
        "direction": "text",
        "balance_change": "numeric",
        "held_change": "numeric",
        "cause": "text",
        "cause_id": "text",
        "debit_account": "text",
        "credit_account": "text",
        "job_id": "text",
        "hold_id": "text",
        "balance_after": "numeric",
        "held_after": "numeric",
        "available_after": "numeric",
        "at": "timestamptz",
    }

    @on(*ALL_EVENTS, key=lambda e, rec: (e.user_id, rec.version))
    def transferred(self, row: Row | None, e: WalletEvent, rec: RecordedEvent) -> Row:
        m = movement(e)
        debit_account, credit_account = m.accounts(e.user_id)
        return {
            "user_id": e.user_id,
            "version": rec.version,
            "transfer_id": e.transfer_id,
            "kind": m.kind.value,
            "amount": m.amount,
            "direction": m.direction,
            "balance_change": m.balance_change,
            "held_change": m.held_change,
            "cause": m.cause.value,
            "cause_id": m.cause_id,
            "debit_account": debit_account,
            "credit_account": credit_account,
            "job_id": m.job_id,
            "hold_id": m.hold_id,
            "balance_after": e.balance_after,
            "held_after": e.held_after,
            "available_after": e.balance_after - e.held_after,
            "at": e.at,
        }
