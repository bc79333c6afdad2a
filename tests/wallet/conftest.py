"""Fixtures of the wallet tests: the real service and a client sending it commands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts.base import Command
from contracts.wallet import CauseKind, DepositCredits, HoldCredits, WalletBalance
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.wallet.service import SERVICE
from services.wallet.settings import WalletSettings
from tests.conftest import Env

ACTOR = Actor(kind="service", id="wallet-test")


@pytest.fixture
async def wallet_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, env.settings(WalletSettings, hold_sweep_seconds=0.2))
    await rt.launch()
    yield rt
    await rt.stop()


class Wallets:
    """Sends wallet commands over NATS, as billing and payments do."""

    def __init__(self, rt: ServiceRuntime[Any]) -> None:
        self.client = CommandClient(rt.nc, rt.settings, timeout=60)

    async def send(self, cmd: Command, command_id: str | None = None) -> WalletBalance:
        return await self.client.send(
            cmd, WalletBalance, command_id=command_id or new_id("cmd"), actor=ACTOR
        )

    async def deposit(self, user_id: str, amount: str, payment: str = "") -> WalletBalance:
        payment = payment or new_id("pay")
        return await self.send(
            DepositCredits(
                user_id=user_id,
                transfer_id=f"topup:{payment}",
                amount=Decimal(amount),
                cause=CauseKind.payment,
                cause_id=payment,
            )
        )

    async def hold(
        self, user_id: str, job_id: str, amount: str, expires_at: datetime
    ) -> WalletBalance:
        return await self.send(
            HoldCredits(
                user_id=user_id,
                transfer_id=f"hold:{job_id}:1",
                hold_id=f"hld_{job_id}",
                job_id=job_id,
                amount=Decimal(amount),
                expires_at=expires_at,
            )
        )


@pytest.fixture
def wallets(wallet_service: ServiceRuntime[Any]) -> Wallets:
    return Wallets(wallet_service)
