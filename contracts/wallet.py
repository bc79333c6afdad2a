"""The credit ledger: events (``wallet.*``), commands and answers of each user's wallet.

Modelled on TigerBeetle's semantics. Every movement is a **transfer** with an id the sender
chooses before its first try (``topup:<payment id>``, ``hold:<job id>:<n>``,
``capture:<job id>``, ...); a transfer id is applied at most once, and a retry with the same
id and fields answers ``exists`` instead of moving credits again. A **hold** is a two-phase
(pending) transfer: it reserves credits, can grow, and resolves once: **captured** (the
actual amount is posted and the rest released in the same event), **voided** or **expired**
(a sweeper, past its ``expires_at``). Refunds and lost disputes are debits that may drive the
balance below zero; a wallet below zero takes no new hold.

``balance = credits - debits`` (posted); ``held`` = pending holds;
``available = balance - held``, never below zero through a hold. Every event carries
``balance_after`` and ``held_after``: the wallet's figures once it is applied.

Amounts are credits with two decimal places (the minor unit is 0.01 credit), exact
``Decimal`` end to end and strings in JSON. Stream: ``wallet-<user id>``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.envelope import Currency
from contracts.text import IdText, Line

#: The ledger's minor unit: amounts are whole multiples of it.
CREDIT_STEP = Decimal("0.01")
#: The largest amount one transfer may move.
MAX_TRANSFER = Decimal("1000000000.00")

#: An amount of credits as the ledger holds it: exact, two decimal places.
Credits = Annotated[
    Decimal,
    Field(
        max_digits=14,
        decimal_places=2,
        description="An amount of credits, exact to 0.01 (a string in JSON).",
    ),
]
#: An amount a transfer moves: more than zero.
PositiveCredits = Annotated[
    Decimal,
    Field(
        gt=0,
        le=MAX_TRANSFER,
        max_digits=14,
        decimal_places=2,
        description="An amount of credits above zero, exact to 0.01 (a string in JSON).",
    ),
]
#: A transfer id: chosen by the sender before the first try, reused on every retry.
TransferId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=120,
        pattern=r"^[a-z_]+:[A-Za-z0-9_.:-]+$",
        description="The transfer's id, <kind>:<cause id>[:n], e.g. topup:pay_29QQoUBi66xm2f.",
    ),
]


def credits(value: Decimal | int | str) -> Decimal:
    """``value`` rounded half up to the ledger's minor unit."""
    return Decimal(value).quantize(CREDIT_STEP, rounding=ROUND_HALF_UP)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CauseKind(StrEnum):
    """Why credits moved."""

    payment = "payment"  # a top-up paid through the payment provider
    grant = "grant"  # credits an admin granted (trial, goodwill)
    job = "job"  # a render job's hold, capture or release
    refund = "refund"  # a payment refunded to the payer
    dispute = "dispute"  # a chargeback the payer won
    adjustment = "adjustment"  # an admin's correction


class TransferKind(StrEnum):
    """What a transfer did to the wallet."""

    deposit = "deposit"  # credits in (top-up, grant)
    hold = "hold"  # credits reserved for a job (pending)
    hold_increase = "hold_increase"  # more reserved for the same job
    capture = "capture"  # the job's actual cost posted; the rest of the hold released
    void = "void"  # a hold released whole (job cancelled, failed before any cost)
    expiry = "expiry"  # a stale hold released by the sweeper
    debit = "debit"  # credits out (refund, dispute, adjustment); may go below zero


class HoldStatus(StrEnum):
    pending = "pending"
    captured = "captured"
    voided = "voided"
    expired = "expired"


class TransferOutcome(StrEnum):
    applied = "applied"  # this call moved the credits
    exists = "exists"  # the transfer id was applied before with the same fields: nothing moved


# --- events (stream wallet-<user id>) -------------------------------------------------------


class _WalletEvent(Event):
    """Every wallet event names its transfer and carries the wallet's figures right after
    it (``available`` after = ``balance_after - held_after``), so each read model row is a
    function of one event."""

    user_id: str
    transfer_id: str
    at: datetime
    balance_after: Decimal
    held_after: Decimal


@EVENTS.register
class CreditsDeposited(_WalletEvent):
    """Credits came in: a paid top-up or an admin's grant."""

    event_type = "wallet.CreditsDeposited"
    amount: Decimal
    cause: CauseKind
    cause_id: str


@EVENTS.register
class CreditsHeld(_WalletEvent):
    """Credits were reserved for a job (a pending transfer)."""

    event_type = "wallet.CreditsHeld"
    hold_id: str
    job_id: str
    amount: Decimal
    expires_at: datetime


@EVENTS.register
class HoldIncreased(_WalletEvent):
    """A pending hold grew by ``amount`` (0: only its expiry moved) to ``held_total``."""

    event_type = "wallet.HoldIncreased"
    hold_id: str
    job_id: str
    amount: Decimal
    held_total: Decimal
    expires_at: datetime


@EVENTS.register
class HoldCaptured(_WalletEvent):
    """The job's actual cost was posted from its hold; ``released`` went back, in the same
    event (``captured + released`` = what was held)."""

    event_type = "wallet.HoldCaptured"
    hold_id: str
    job_id: str
    captured: Decimal
    released: Decimal


@EVENTS.register
class HoldVoided(_WalletEvent):
    """A hold was released whole."""

    event_type = "wallet.HoldVoided"
    hold_id: str
    job_id: str
    released: Decimal
    reason: str


@EVENTS.register
class HoldExpired(_WalletEvent):
    """A hold passed its ``expires_at`` unresolved and the sweeper released it."""

    event_type = "wallet.HoldExpired"
    hold_id: str
    job_id: str
    released: Decimal


@EVENTS.register
class CreditsDebited(_WalletEvent):
    """Credits went out: a refund, a lost dispute or an adjustment. The balance may go below
    zero; such a wallet takes no new hold until topped up."""

    event_type = "wallet.CreditsDebited"
    amount: Decimal
    cause: CauseKind
    cause_id: str


# --- claims (streams transfer-<user id>:<transfer id> and hold-<user id>:<hold id>) -----------


@EVENTS.register
class TransferClaimed(Event):
    """A transfer id was applied on a wallet, with these fields (``fingerprint``: its kind
    and fields, hashed). Appended with the wallet's event, once per id (stream
    ``transfer-<user id>:<transfer id>``, expected new), so a retry finds it without the
    wallet keeping every id it ever applied."""

    event_type = "wallet.TransferClaimed"
    user_id: str
    transfer_id: str
    kind: TransferKind
    fingerprint: str


@EVENTS.register
class HoldIdRetired(Event):
    """A hold was resolved (captured, voided or expired): its id stays taken and its status
    answers a late capture (stream ``hold-<user id>:<hold id>``, one event, expected new).
    Appended with the wallet's event that resolved it."""

    event_type = "wallet.HoldIdRetired"
    user_id: str
    hold_id: str
    job_id: str
    status: HoldStatus
    transfer_id: str


WalletEvent = (
    CreditsDeposited
    | CreditsHeld
    | HoldIncreased
    | HoldCaptured
    | HoldVoided
    | HoldExpired
    | CreditsDebited
)


# --- commands (served by the wallet service) -----------------------------------------------


@COMMANDS.register
class DepositCredits(Command):
    command_type = "wallet.DepositCredits"
    user_id: IdText
    transfer_id: TransferId
    amount: PositiveCredits
    cause: CauseKind
    cause_id: IdText


@COMMANDS.register
class HoldCredits(Command):
    """Reserve ``amount`` for a job; refused (``insufficient_credits``) when the available
    balance does not cover it."""

    command_type = "wallet.HoldCredits"
    user_id: IdText
    transfer_id: TransferId
    hold_id: IdText
    job_id: IdText
    amount: PositiveCredits
    expires_at: datetime


@COMMANDS.register
class IncreaseHold(Command):
    """Grow a pending hold by ``amount`` (0 only moves its expiry to ``expires_at``)."""

    command_type = "wallet.IncreaseHold"
    user_id: IdText
    transfer_id: TransferId
    hold_id: IdText
    amount: Annotated[Decimal, Field(ge=0, le=MAX_TRANSFER, max_digits=14, decimal_places=2)]
    expires_at: datetime


@COMMANDS.register
class CaptureHold(Command):
    """Post ``amount`` (<= the hold) and release the rest, in one event."""

    command_type = "wallet.CaptureHold"
    user_id: IdText
    transfer_id: TransferId
    hold_id: IdText
    amount: Annotated[Decimal, Field(ge=0, le=MAX_TRANSFER, max_digits=14, decimal_places=2)]


@COMMANDS.register
class VoidHold(Command):
    command_type = "wallet.VoidHold"
    user_id: IdText
    transfer_id: TransferId
    hold_id: IdText
    reason: Line = Field(max_length=500)


@COMMANDS.register
class ExpireHold(Command):
    """From the sweeper: release a hold past its ``expires_at`` (a no-op otherwise)."""

    command_type = "wallet.ExpireHold"
    user_id: IdText
    hold_id: IdText


@COMMANDS.register
class DebitCredits(Command):
    command_type = "wallet.DebitCredits"
    user_id: IdText
    transfer_id: TransferId
    amount: PositiveCredits
    cause: CauseKind
    cause_id: IdText


class WalletBalance(_Model):
    """A wallet's balance, and what the command did (the reply of every wallet command)."""

    user_id: str = Field(description="The wallet's owner.")
    currency: Currency = Field(description="Unit of every amount here.")
    balance_credits: Credits = Field(description="Credits in minus credits out (posted).")
    held_credits: Credits = Field(description="Credits reserved by pending holds.")
    available_credits: Credits = Field(
        description="balance - held: what a new hold may take (below zero after a refund of"
        " credits already spent)."
    )
    outcome: TransferOutcome = Field(
        description="applied: this call moved credits; exists: the transfer id was applied"
        " before with the same fields, nothing moved."
    )
    version: int = Field(description="Version of the wallet's event stream.")
