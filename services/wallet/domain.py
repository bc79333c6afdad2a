"""The wallet aggregate: one user's credit ledger (stream ``wallet-<user id>``), and the
claims that keep its state bounded.

The wallet holds its balance, held amount and **pending** holds only: its state does not
grow with the transfers it applied or the holds it resolved. Every decide method takes the
transfer id's :class:`TransferClaim` (stream ``transfer-<user id>:<transfer id>``), loaded
in the same query as the wallet: applied before with the same fields, it records nothing
and answers ``exists``; applied with other fields, it is refused with
``transfer_id_reused``; else the wallet's event and a ``TransferClaimed`` are appended
together, the claim stream expected new (a race for one id loses on the stream version). A
resolved hold leaves a :class:`RetiredHold` (stream ``hold-<user id>:<hold id>``) naming
its status, so a late capture is ``hold_not_pending``, not ``hold_not_found``, and a hold id
taken by another hold (pending or resolved) is refused as ``transfer_id_reused`` (naming
the new transfer): hold ids are chosen by the sender like transfer ids.

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
    HoldIdRetired,
    HoldIncreased,
    HoldStatus,
    HoldVoided,
    TransferClaimed,
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


def claim_key(user_id: str, transfer_or_hold_id: str) -> str:
    """The key of a wallet's claim stream: ids are the sender's, so scoped to one wallet."""
    return f"{user_id}:{transfer_or_hold_id}"


class TransferClaim(Aggregate):
    """One transfer id of one wallet (stream ``transfer-<user id>:<transfer id>``): the
    fingerprint of the fields it was applied with, or nothing yet."""

    stream_prefix = "transfer"

    kind: TransferKind | None = None
    fingerprint: str | None = None

    def apply(self, event: Event) -> None:
        match event:
            case TransferClaimed():
                self.kind, self.fingerprint = event.kind, event.fingerprint
            case _:
                return

    def seen(self, transfer_id: str, print_: str) -> bool:
        """True if the id was applied with these fields; refused if with others."""
        if self.fingerprint is None:
            return False
        if self.fingerprint != print_:
            raise TransferIdReused(
                f"transfer {transfer_id} was applied before with other fields; nothing moved",
                transfer_id=transfer_id,
            )
        return True

    def take(self, user_id: str, transfer_id: str, kind: TransferKind, print_: str) -> None:
        self.record(
            TransferClaimed(user_id=user_id, transfer_id=transfer_id, kind=kind, fingerprint=print_)
        )


class RetiredHold(Aggregate):
    """A resolved hold of one wallet (stream ``hold-<user id>:<hold id>``): its final
    status, or None while the id was never resolved."""

    stream_prefix = "hold"

    job_id: str = ""
    status: HoldStatus | None = None

    def apply(self, event: Event) -> None:
        match event:
            case HoldIdRetired():
                self.job_id, self.status = event.job_id, event.status
            case _:
                return

    def retire(
        self, user_id: str, hold_id: str, job_id: str, status: HoldStatus, transfer_id: str
    ) -> None:
        self.record(
            HoldIdRetired(
                user_id=user_id,
                hold_id=hold_id,
                job_id=job_id,
                status=status,
                transfer_id=transfer_id,
            )
        )


class Hold(BaseModel):
    """One pending two-phase transfer (resolved ones leave the wallet)."""

    job_id: str
    amount: Decimal
    expires_at: datetime


class Wallet(Aggregate):
    """A user's balance (posted credits minus debits), held amount and pending holds; its
    key is the user's id."""

    stream_prefix = "wallet"
    #: 2: no transfer fingerprints, pending holds only (claims live in their own streams).
    snapshot_version = 2

    balance: Decimal = ZERO
    held: Decimal = ZERO
    #: hold id -> the pending hold.
    holds: dict[str, Hold] = Field(default_factory=dict)

    @property
    def available(self) -> Decimal:
        return self.balance - self.held

    # -- rules --------------------------------------------------------------------------

    def _covers(self, amount: Decimal) -> None:
        if amount > self.available:
            raise InsufficientCredits(
                f"{self.available} credits available, {amount} needed; top up and retry",
                required_credits=amount,
                available_credits=self.available,
            )

    def _pending_hold(self, hold_id: str, retired: RetiredHold) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is not None:
            return hold
        if retired.status is not None:
            raise HoldNotPending(
                f"hold {hold_id} is {retired.status.value} already: it resolves once",
                hold_id=hold_id,
                status=retired.status.value,
            )
        raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)

    # -- decide -------------------------------------------------------------------------
    # Each takes the transfer id's claim (and, for a hold, the hold id's retired record) as
    # loaded with the wallet; the claim is taken in the same recording.

    def _claimed(
        self, transfer_id: str, claim: TransferClaim, event: WalletEvent, fp: str
    ) -> TransferOutcome:
        """Record ``event`` and take ``transfer_id``'s claim with it."""
        self.record(event)
        claim.take(self.key, transfer_id, _KINDS[type(event)], fp)
        return TransferOutcome.applied

    def deposit(
        self,
        claim: TransferClaim,
        transfer_id: str,
        amount: Decimal,
        cause: CauseKind,
        cause_id: str,
        at: datetime,
    ) -> TransferOutcome:
        fp = fingerprint(TransferKind.deposit, amount=amount, cause=cause.value, cause_id=cause_id)
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        event = CreditsDeposited(
            user_id=self.key,
            transfer_id=transfer_id,
            at=at,
            amount=amount,
            cause=cause,
            cause_id=cause_id,
            balance_after=self.balance + amount,
            held_after=self.held,
        )
        return self._claimed(transfer_id, claim, event, fp)

    def debit(
        self,
        claim: TransferClaim,
        transfer_id: str,
        amount: Decimal,
        cause: CauseKind,
        cause_id: str,
        at: datetime,
    ) -> TransferOutcome:
        """Credits out; the balance may go below zero (a refund of credits already spent)."""
        fp = fingerprint(TransferKind.debit, amount=amount, cause=cause.value, cause_id=cause_id)
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        event = CreditsDebited(
            user_id=self.key,
            transfer_id=transfer_id,
            at=at,
            amount=amount,
            cause=cause,
            cause_id=cause_id,
            balance_after=self.balance - amount,
            held_after=self.held,
        )
        return self._claimed(transfer_id, claim, event, fp)

    def hold(
        self,
        claim: TransferClaim,
        retired: RetiredHold,
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
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        if hold_id in self.holds or retired.status is not None:
            raise TransferIdReused(
                f"hold id {hold_id} belongs to another hold already; nothing moved",
                transfer_id=transfer_id,
            )
        self._covers(amount)
        event = CreditsHeld(
            user_id=self.key,
            transfer_id=transfer_id,
            at=at,
            hold_id=hold_id,
            job_id=job_id,
            amount=amount,
            expires_at=expires_at,
            balance_after=self.balance,
            held_after=self.held + amount,
        )
        return self._claimed(transfer_id, claim, event, fp)

    def increase(
        self,
        claim: TransferClaim,
        retired: RetiredHold,
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
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id, retired)
        self._covers(amount)
        event = HoldIncreased(
            user_id=self.key,
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
        return self._claimed(transfer_id, claim, event, fp)

    def capture(
        self,
        claim: TransferClaim,
        retired: RetiredHold,
        transfer_id: str,
        hold_id: str,
        amount: Decimal,
        at: datetime,
    ) -> TransferOutcome:
        """Post ``amount`` of the hold and release the rest, in one event."""
        fp = fingerprint(TransferKind.capture, hold_id=hold_id, amount=amount)
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id, retired)
        if amount > hold.amount:
            raise CaptureExceedsHold(
                f"hold {hold_id} reserves {hold.amount} credits; {amount} cannot be captured",
                hold_id=hold_id,
                held_credits=hold.amount,
                requested_credits=amount,
            )
        event = HoldCaptured(
            user_id=self.key,
            transfer_id=transfer_id,
            at=at,
            hold_id=hold_id,
            job_id=hold.job_id,
            captured=amount,
            released=hold.amount - amount,
            balance_after=self.balance - amount,
            held_after=self.held - hold.amount,
        )
        retired.retire(self.key, hold_id, hold.job_id, HoldStatus.captured, transfer_id)
        return self._claimed(transfer_id, claim, event, fp)

    def void(
        self,
        claim: TransferClaim,
        retired: RetiredHold,
        transfer_id: str,
        hold_id: str,
        reason: str,
        at: datetime,
    ) -> TransferOutcome:
        fp = fingerprint(TransferKind.void, hold_id=hold_id, reason=reason)
        if claim.seen(transfer_id, fp):
            return TransferOutcome.exists
        hold = self._pending_hold(hold_id, retired)
        event = HoldVoided(
            user_id=self.key,
            transfer_id=transfer_id,
            at=at,
            hold_id=hold_id,
            job_id=hold.job_id,
            released=hold.amount,
            reason=reason,
            balance_after=self.balance,
            held_after=self.held - hold.amount,
        )
        retired.retire(self.key, hold_id, hold.job_id, HoldStatus.voided, transfer_id)
        return self._claimed(transfer_id, claim, event, fp)

    def expire(
        self, claim: TransferClaim, retired: RetiredHold, hold_id: str, now: datetime
    ) -> TransferOutcome:
        """Release a pending hold past its expiry; anything else is a no-op (``exists``).
        ``claim`` is the claim of :func:`expiry_transfer_id`."""
        hold = self.holds.get(hold_id)
        if hold is None:
            if retired.status is None:
                raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
            return TransferOutcome.exists
        if now < hold.expires_at:
            return TransferOutcome.exists
        transfer_id = expiry_transfer_id(hold_id)
        event = HoldExpired(
            user_id=self.key,
            transfer_id=transfer_id,
            at=now,
            hold_id=hold_id,
            job_id=hold.job_id,
            released=hold.amount,
            balance_after=self.balance,
            held_after=self.held - hold.amount,
        )
        retired.retire(self.key, hold_id, hold.job_id, HoldStatus.expired, transfer_id)
        return self._claimed(transfer_id, claim, event, "")

    # -- evolve -------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Evolve by one event: a hold is noted while pending and dropped once resolved, and
        the balance and held amounts become the ones the event carries (decided above, once,
        from the state before)."""
        match event:
            case CreditsHeld():
                self.holds[event.hold_id] = Hold(
                    job_id=event.job_id, amount=event.amount, expires_at=event.expires_at
                )
            case HoldIncreased():
                hold = self.holds.get(event.hold_id)
                if hold is not None:
                    self.holds[event.hold_id] = hold.model_copy(
                        update={"amount": event.held_total, "expires_at": event.expires_at}
                    )
            case HoldCaptured() | HoldVoided() | HoldExpired():
                self.holds.pop(event.hold_id, None)
            case CreditsDeposited() | CreditsDebited():
                pass
            case _:
                return
        assert isinstance(event, WalletEvent)
        self.balance, self.held = event.balance_after, event.held_after


#: The transfer kind each wallet event records.
_KINDS: dict[type[Event], TransferKind] = {
    CreditsDeposited: TransferKind.deposit,
    CreditsDebited: TransferKind.debit,
    CreditsHeld: TransferKind.hold,
    HoldIncreased: TransferKind.hold_increase,
    HoldCaptured: TransferKind.capture,
    HoldVoided: TransferKind.void,
    HoldExpired: TransferKind.expiry,
}
