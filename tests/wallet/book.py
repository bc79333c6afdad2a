"""A wallet with its claim streams, in memory: what one command loads, kept across commands.

The domain tests decide on it as the service does (the wallet, the transfer id's claim and
the hold id's retired record), without a store.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from contracts.base import Event
from contracts.wallet import CauseKind, TransferOutcome
from services.wallet.domain import (
    Hold,
    RetiredHold,
    TransferClaim,
    Wallet,
    claim_key,
    expiry_transfer_id,
)


class Book:
    """One wallet and every claim it took, with the wallet's decide methods."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.wallet = Wallet.rehydrate(user_id, ())
        self.claims: dict[str, TransferClaim] = {}
        self.retired: dict[str, RetiredHold] = {}

    def claim(self, transfer_id: str) -> TransferClaim:
        return self.claims.setdefault(claim_key(self.user_id, transfer_id), TransferClaim())

    def retired_hold(self, hold_id: str) -> RetiredHold:
        return self.retired.setdefault(claim_key(self.user_id, hold_id), RetiredHold())

    @property
    def balance(self) -> Decimal:
        return self.wallet.balance

    @property
    def held(self) -> Decimal:
        return self.wallet.held

    @property
    def available(self) -> Decimal:
        return self.wallet.available

    @property
    def holds(self) -> dict[str, Hold]:
        """The wallet's pending holds."""
        return self.wallet.holds

    @property
    def version(self) -> int:
        return self.wallet.version

    @property
    def pending(self) -> tuple[Event, ...]:
        """The wallet's events so far (claims apart)."""
        return self.wallet.pending

    def deposit(
        self, transfer_id: str, amount: Decimal, cause: CauseKind, cause_id: str, at: datetime
    ) -> TransferOutcome:
        return self.wallet.deposit(
            self.claim(transfer_id), transfer_id, amount, cause, cause_id, at
        )

    def debit(
        self, transfer_id: str, amount: Decimal, cause: CauseKind, cause_id: str, at: datetime
    ) -> TransferOutcome:
        return self.wallet.debit(self.claim(transfer_id), transfer_id, amount, cause, cause_id, at)

    def hold(
        self,
        transfer_id: str,
        hold_id: str,
        job_id: str,
        amount: Decimal,
        expires_at: datetime,
        at: datetime,
    ) -> TransferOutcome:
        return self.wallet.hold(
            self.claim(transfer_id),
            self.retired_hold(hold_id),
            transfer_id,
            hold_id,
            job_id,
            amount,
            expires_at,
            at,
        )

    def increase(
        self, transfer_id: str, hold_id: str, amount: Decimal, expires_at: datetime, at: datetime
    ) -> TransferOutcome:
        return self.wallet.increase(
            self.claim(transfer_id),
            self.retired_hold(hold_id),
            transfer_id,
            hold_id,
            amount,
            expires_at,
            at,
        )

    def capture(
        self, transfer_id: str, hold_id: str, amount: Decimal, at: datetime
    ) -> TransferOutcome:
        return self.wallet.capture(
            self.claim(transfer_id),
            self.retired_hold(hold_id),
            transfer_id,
            hold_id,
            amount,
            at,
        )

    def void(self, transfer_id: str, hold_id: str, reason: str, at: datetime) -> TransferOutcome:
        return self.wallet.void(
            self.claim(transfer_id),
            self.retired_hold(hold_id),
            transfer_id,
            hold_id,
            reason,
            at,
        )

    def expire(self, hold_id: str, now: datetime) -> TransferOutcome:
        return self.wallet.expire(
            self.claim(expiry_transfer_id(hold_id)),
            self.retired_hold(hold_id),
            hold_id,
            now,
        )

    def replayed(self) -> Book:
        """The same book rebuilt from every stream's events."""
        book = Book(self.user_id)
        book.wallet = Wallet.rehydrate(self.user_id, self.wallet.pending)
        book.claims = {k: TransferClaim.rehydrate(k, c.pending) for k, c in self.claims.items()}
        book.retired = {k: RetiredHold.rehydrate(k, r.pending) for k, r in self.retired.items()}
        return book
