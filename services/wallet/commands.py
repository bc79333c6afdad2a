"""Command handlers of the wallet service: one per command of ``contracts/wallet.py``.

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
from libs.eventstore.uow import UnitOfWork
from services.wallet.domain import Wallet


class _OneWallet(Protocol):
    @property
    def user_id(self) -> str: ...


def wallet_key(cmd: _OneWallet) -> str:
    """The serialization key of a wallet command: its wallet."""
    return f"wallet:{cmd.user_id}"


def balance(user_id: str, wallet: Wallet, outcome: TransferOutcome) -> WalletBalance:
    return WalletBalance(
        user_id=user_id,
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
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.deposit(
            cmd.user_id, cmd.transfer_id, cmd.amount, cmd.cause, cmd.cause_id, self.now()
        )
        return balance(cmd.user_id, wallet, outcome)

    async def debit(self, cmd: DebitCredits, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.debit(
            cmd.user_id, cmd.transfer_id, cmd.amount, cmd.cause, cmd.cause_id, self.now()
        )
        return balance(cmd.user_id, wallet, outcome)

    async def hold(self, cmd: HoldCredits, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.hold(
            cmd.user_id,
            cmd.transfer_id,
            cmd.hold_id,
            cmd.job_id,
            cmd.amount,
            cmd.expires_at,
            self.now(),
        )
        return balance(cmd.user_id, wallet, outcome)

    async def increase(self, cmd: IncreaseHold, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.increase(
            cmd.user_id, cmd.transfer_id, cmd.hold_id, cmd.amount, cmd.expires_at, self.now()
        )
        return balance(cmd.user_id, wallet, outcome)

    async def capture(self, cmd: CaptureHold, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.capture(cmd.user_id, cmd.transfer_id, cmd.hold_id, cmd.amount, self.now())
        return balance(cmd.user_id, wallet, outcome)

    async def void(self, cmd: VoidHold, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.void(cmd.user_id, cmd.transfer_id, cmd.hold_id, cmd.reason, self.now())
        return balance(cmd.user_id, wallet, outcome)

    async def expire(self, cmd: ExpireHold, uow: UnitOfWork) -> WalletBalance:
        wallet = await uow.get(Wallet, cmd.user_id)
        outcome = wallet.expire(cmd.user_id, cmd.hold_id, self.now())
        return balance(cmd.user_id, wallet, outcome)
