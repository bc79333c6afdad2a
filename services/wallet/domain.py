"""The wallet aggregate: one user's credit ledger (stream ``wallet-<user id>``).

Every decide method first looks the transfer id up: applied before with the same fields, it
records nothing and answers ``exists``; applied with other fields, it is refused with
``transfer_id_reused``. A hold id already taken by another hold (whatever its state) is
refused the same way (``transfer_id_reused``, naming the new transfer): hold ids are chosen
by the sender like transfer ids, so reusing one is the same mistake.

``available = balance - held``. A hold or a hold increase is refused with
``insufficient_credits`` when it asks for more than is available; a refund or a lost dispute
(``debit``) may drive the balance below zero, which then blocks every new hold.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal

import orjson
from pydantic import BaseModel, Field

from contracts.base import Event
from contracts.errors import (
    CaptureExceedsHold,
    HoldNotFound,
    HoldNotPending,
    InsufficientCredits,
    TransferIdReused,
)
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
    TransferOutcome,
    WalletEvent,
)
from libs.eventstore.aggregate import Aggregate

ZERO = Decimal("0.00")


def expiry_transfer_id(hold_id: str) -> str:
    """The transfer id of a hold's expiry (the sweeper's ``ExpireHold`` carries none)."""
    return f"expiry:{hold_id}"


def fingerprint(kind: TransferKind, **fields: object) -> str:
    """What a transfer id was applied with: its kind and fields, hashed (32 hex digits).
    Amounts are normalized to two places, so ``10`` and ``10.00`` are the same field."""
    canon: dict[str, object] = {}
    for name, value in fields.items():
        if isinstance(value, Decimal):
            value = f"{value:.2f}"
        elif isinstance(value, datetime):
            value = value.isoformat()
        canon[name] = value
    blob = orjson.dumps({"kind": kind.value, **canon}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:32]


class Hold(BaseModel):
    """One two-phase transfer: reserved while pending, resolved once."""

    job_id: str
    amount: Decimal
    status: HoldStatus
    expires_at: datetime


class Wallet(Aggregate):
    """A user's balance (posted credits minus debits), pending holds and applied transfers."""

    stream_prefix = "wallet"

    user_id: str = ""
    balance: Decimal = ZERO
    held: Decimal = ZERO
    holds: dict[str, Hold] = Field(default_factory=dict)
    #: transfer id -> fingerprint of the fields it was applied with.
    transfers: dict[str, str] = Field(default_factory=dict)

    @property
    def available(self) -> Decimal:
        return self.balance - self.held

    # -- rules --------------------------------------------------------------------------

    def _seen(self, transfer_id: str, print_: str) -> bool:
        """True if ``transfer_id`` was applied with these fields; refused if with others."""
        known = self.transfers.get(transfer_id)
        if known is None:
            return False
        if known != print_:
            raise TransferIdReused(
                f"transfer {transfer_id} was applied before with other fields; nothing moved",
                transfer_id=transfer_id,
            )
        return True

    def _covers(self, amount: Decimal) -> None:
        if amount > self.available:
            raise InsufficientCredits(
                f"{self.available} credits available, {amount} needed; top up and retry",
                required_credits=amount,
                available_credits=self.available,
            )

    def _pending_hold(self, hold_id: str) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        if hold.status is not HoldStatus.pending:
            raise HoldNotPending(
                f"hold {hold_id} is {hold.status.value} already: it resolves once",
                hold_id=hold_id,
                status=hold.status.value,
            )
        return hold

    # -- decide -------------------------------------------------------------------------

    def deposit(
        self,
        user_id: str,
        transfer_id: str,
        amount: Decimal,
        cause: CauseKind,
        cause_id: str,
        at: datetime,
    ) -> TransferOutcome:
        fp = fingerprint(TransferKind.deposit, amount=amount, cause=cause.value, cause_id=cause_id)
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        self.record(
            CreditsDeposited(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                amount=amount,
                cause=cause,
                cause_id=cause_id,
                balance_after=self.balance + amount,
                held_after=self.held,
            )
        )
        return TransferOutcome.applied

    def debit(
        self,
        user_id: str,
        transfer_id: str,
        amount: Decimal,
        cause: CauseKind,
        cause_id: str,
        at: datetime,
    ) -> TransferOutcome:
        """Credits out; the balance may go below zero (a refund of credits already spent)."""
        fp = fingerprint(TransferKind.debit, amount=amount, cause=cause.value, cause_id=cause_id)
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        self.record(
            CreditsDebited(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                amount=amount,
                cause=cause,
                cause_id=cause_id,
                balance_after=self.balance - amount,
                held_after=self.held,
            )
        )
        return TransferOutcome.applied

    def hold(
        self,
        user_id: str,
        transfer_id: str,
        hold_id: str,
        job_id: str,
        amount: Decimal,
        expires_at: datetime,
        at: datetime,
    ) -> TransferOutcome:
        fp = fingerprint(
            TransferKind.hold, hold_id=hold_id, job_id=job_id, amount=amount, expires_at=expires_at
        )
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        if hold_id in self.holds:
            raise TransferIdReused(
                f"hold id {hold_id} belongs to another hold already; nothing moved",
                transfer_id=transfer_id,
            )
        self._covers(amount)
        self.record(
            CreditsHeld(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                hold_id=hold_id,
                job_id=job_id,
                amount=amount,
                expires_at=expires_at,
                balance_after=self.balance,
                held_after=self.held + amount,
            )
        )
        return TransferOutcome.applied

    def increase(
        self,
        user_id: str,
        transfer_id: str,
        hold_id: str,
        amount: Decimal,
        expires_at: datetime,
        at: datetime,
    ) -> TransferOutcome:
        """Grow a pending hold by ``amount`` (0 only moves its expiry)."""
        fp = fingerprint(
            TransferKind.hold_increase, hold_id=hold_id, amount=amount, expires_at=expires_at
        )
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id)
        self._covers(amount)
        self.record(
            HoldIncreased(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                hold_id=hold_id,
                job_id=hold.job_id,
                amount=amount,
                held_total=hold.amount + amount,
                expires_at=expires_at,
                balance_after=self.balance,
                held_after=self.held + amount,
            )
        )
        return TransferOutcome.applied

    def capture(
        self, user_id: str, transfer_id: str, hold_id: str, amount: Decimal, at: datetime
    ) -> TransferOutcome:
        """Post ``amount`` of the hold and release the rest, in one event."""
        fp = fingerprint(TransferKind.capture, hold_id=hold_id, amount=amount)
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id)
        if amount > hold.amount:
            raise CaptureExceedsHold(
                f"hold {hold_id} reserves {hold.amount} credits; {amount} cannot be captured",
                hold_id=hold_id,
                held_credits=hold.amount,
                requested_credits=amount,
            )
        self.record(
            HoldCaptured(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                hold_id=hold_id,
                job_id=hold.job_id,
                captured=amount,
                released=hold.amount - amount,
                balance_after=self.balance - amount,
                held_after=self.held - hold.amount,
            )
        )
        return TransferOutcome.applied

    def void(
        self, user_id: str, transfer_id: str, hold_id: str, reason: str, at: datetime
    ) -> TransferOutcome:
        fp = fingerprint(TransferKind.void, hold_id=hold_id, reason=reason)
        if self._seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id)
        self.record(
            HoldVoided(
                user_id=user_id,
                transfer_id=transfer_id,
                at=at,
                hold_id=hold_id,
                job_id=hold.job_id,
                released=hold.amount,
                reason=reason,
                balance_after=self.balance,
                held_after=self.held - hold.amount,
            )
        )
        return TransferOutcome.applied

    def expire(self, user_id: str, hold_id: str, now: datetime) -> TransferOutcome:
        """Release a pending hold past its expiry; anything else is a no-op (``exists``)."""
        hold = self.holds.get(hold_id)
        if hold is None:
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        if hold.status is not HoldStatus.pending or now < hold.expires_at:
            return TransferOutcome.exists
        self.record(
            HoldExpired(
                user_id=user_id,
                transfer_id=expiry_transfer_id(hold_id),
                at=now,
                hold_id=hold_id,
                job_id=hold.job_id,
                released=hold.amount,
                balance_after=self.balance,
                held_after=self.held - hold.amount,
            )
        )
        return TransferOutcome.applied

    # -- evolve -------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Evolve by one event: its hold and transfer id are noted, and the balance and held
        amounts become the ones it carries (decided above, once, from the state before)."""
        match event:
            case CreditsDeposited():
                print_ = fingerprint(
                    TransferKind.deposit,
                    amount=event.amount,
                    cause=event.cause.value,
                    cause_id=event.cause_id,
                )
            case CreditsDebited():
                print_ = fingerprint(
                    TransferKind.debit,
                    amount=event.amount,
                    cause=event.cause.value,
                    cause_id=event.cause_id,
                )
            case CreditsHeld():
                self.holds[event.hold_id] = Hold(
                    job_id=event.job_id,
                    amount=event.amount,
                    status=HoldStatus.pending,
                    expires_at=event.expires_at,
                )
                print_ = fingerprint(
                    TransferKind.hold,
                    hold_id=event.hold_id,
                    job_id=event.job_id,
                    amount=event.amount,
                    expires_at=event.expires_at,
                )
            case HoldIncreased():
                hold = self.holds.get(event.hold_id)
                if hold is not None:
                    self.holds[event.hold_id] = hold.model_copy(
                        update={"amount": event.held_total, "expires_at": event.expires_at}
                    )
                print_ = fingerprint(
                    TransferKind.hold_increase,
                    hold_id=event.hold_id,
                    amount=event.amount,
                    expires_at=event.expires_at,
                )
            case HoldCaptured():
                self._resolve(event.hold_id, HoldStatus.captured)
                print_ = fingerprint(
                    TransferKind.capture, hold_id=event.hold_id, amount=event.captured
                )
            case HoldVoided():
                self._resolve(event.hold_id, HoldStatus.voided)
                print_ = fingerprint(TransferKind.void, hold_id=event.hold_id, reason=event.reason)
            case HoldExpired():
                self._resolve(event.hold_id, HoldStatus.expired)
                print_ = ""
            case _:
                return
        assert isinstance(event, WalletEvent)
        self.user_id = self.user_id or event.user_id
        self.balance, self.held = event.balance_after, event.held_after
        self.transfers[event.transfer_id] = print_

    def _resolve(self, hold_id: str, status: HoldStatus) -> None:
        """A pending hold resolves once (the event carries what it left of the balance and
        held amounts)."""
        hold = self.holds.get(hold_id)
        if hold is not None and hold.status is HoldStatus.pending:
            self.holds[hold_id] = hold.model_copy(update={"status": status})
