"""Command handlers of the wallet service: one per command of ``contracts/wallet.py``.

Every handler loads the wallet with the transfer id's claim (and the hold id's retired
record) in one query, and commits their events in one append: one read, one write.

Every command names one wallet (``user_id``) and is registered with
``serialize=wallet_key``: the commands of one wallet run one at a time in a process, from
load to commit, so a hundred holds at once are each decided on the state the previous one
left (none bounced as a version conflict). Replicas of the service still race on the stream
version; the command server re-runs the loser on fresh state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from contracts.envelope import Currency
from contracts.wallet import (
    CaptureHold,
    DebitCredits,
    DepositCredits,
    ExpireHold,
    HoldCredits,
    IncreaseHold,
    TransferOutcome,
    VoidHold,
    WalletBalance,
)
from libs.bus.commands import CommandServer
from libs.eventstore.aggregate import Aggregate
from libs.eventstore.uow import UnitOfWork
from services.wallet.domain import (
    RetiredHold,
    TransferClaim,
    Wallet,
    claim_key,
    expiry_transfer_id,
)


class _OneWallet(Protocol):
    @property
    def user_id(self) -> str: ...


def wallet_key(cmd: _OneWallet) -> str:
    """The serialization key of a wallet command: its wallet."""
    return f"wallet:{cmd.user_id}"


def balance(wallet: Wallet, outcome: TransferOutcome) -> WalletBalance:
    return WalletBalance(
        user_id=wallet.key,
        currency=Currency.credits,
        balance_credits=wallet.balance,
        held_credits=wallet.held,
        available_credits=wallet.available,
        outcome=outcome,
        version=wallet.version,
    )


class WalletCommands:
    """The wallet's handlers."""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def register(self, server: CommandServer) -> None:
        server.register(DepositCredits, self.deposit, serialize=wallet_key)
        server.register(DebitCredits, self.debit, serialize=wallet_key)
        server.register(HoldCredits, self.hold, serialize=wallet_key)
        server.register(IncreaseHold, self.increase, serialize=wallet_key)
        server.register(CaptureHold, self.capture, serialize=wallet_key)
        server.register(VoidHold, self.void, serialize=wallet_key)
        server.register(ExpireHold, self.expire, serialize=wallet_key)

    async def deposit(self, cmd: DepositCredits, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, _ = await load(uow, cmd.user_id, cmd.transfer_id)
        outcome = wallet.deposit(
            claim, cmd.transfer_id, cmd.amount, cmd.cause, cmd.cause_id, self.now()
        )
        return balance(wallet, outcome)

    async def debit(self, cmd: DebitCredits, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, _ = await load(uow, cmd.user_id, cmd.transfer_id)
        outcome = wallet.debit(
            claim, cmd.transfer_id, cmd.amount, cmd.cause, cmd.cause_id, self.now()
        )
        return balance(wallet, outcome)

    async def hold(self, cmd: HoldCredits, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, retired = await load(uow, cmd.user_id, cmd.transfer_id, cmd.hold_id)
        outcome = wallet.hold(
            claim,
            retired,
            cmd.transfer_id,
            cmd.hold_id,
            cmd.job_id,
            cmd.amount,
            cmd.expires_at,
            self.now(),
        )
        return balance(wallet, outcome)

    async def increase(self, cmd: IncreaseHold, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, retired = await load(uow, cmd.user_id, cmd.transfer_id, cmd.hold_id)
        outcome = wallet.increase(
            claim,
            retired,
            cmd.transfer_id,
            cmd.hold_id,
            cmd.amount,
            cmd.expires_at,
            self.now(),
        )
        return balance(wallet, outcome)

    async def capture(self, cmd: CaptureHold, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, retired = await load(uow, cmd.user_id, cmd.transfer_id, cmd.hold_id)
        outcome = wallet.capture(
            claim, retired, cmd.transfer_id, cmd.hold_id, cmd.amount, self.now()
        )
        return balance(wallet, outcome)

    async def void(self, cmd: VoidHold, uow: UnitOfWork) -> WalletBalance:
        wallet, claim, retired = await load(uow, cmd.user_id, cmd.transfer_id, cmd.hold_id)
        outcome = wallet.void(claim, retired, cmd.transfer_id, cmd.hold_id, cmd.reason, self.now())
        return balance(wallet, outcome)

    async def expire(self, cmd: ExpireHold, uow: UnitOfWork) -> WalletBalance:
        transfer_id = expiry_transfer_id(cmd.hold_id)
        wallet, claim, retired = await load(uow, cmd.user_id, transfer_id, cmd.hold_id)
        outcome = wallet.expire(claim, retired, cmd.hold_id, self.now())
        return balance(wallet, outcome)


async def load(
    uow: UnitOfWork, user_id: str, transfer_id: str, hold_id: str | None = None
) -> tuple[Wallet, TransferClaim, RetiredHold]:
    """The wallet, the transfer id's claim and the hold id's retired record, in one query
    (with the command's stored-reply lookup)."""
    transfer_key = claim_key(user_id, transfer_id)
    refs: list[tuple[type[Aggregate], str]] = [(Wallet, user_id), (TransferClaim, transfer_key)]
    if hold_id is None:
        await uow.prefetch(*refs)
        retired = RetiredHold()
    else:
        hold_key = claim_key(user_id, hold_id)
        await uow.prefetch(*refs, (RetiredHold, hold_key))
        retired = await uow.get(RetiredHold, hold_key)
    return await uow.get(Wallet, user_id), await uow.get(TransferClaim, transfer_key), retired
