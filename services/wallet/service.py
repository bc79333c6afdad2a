"""The wallet service: each user's credit ledger (transfers and two-phase holds).

Money model and semantics: ``docs/wallet.md`` and ``contracts/wallet.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.wallet.commands import WalletCommands
from services.wallet.projections import BalancesProjection, HoldsProjection, TransfersProjection
from services.wallet.settings import WalletSettings
from services.wallet.sweeper import HoldSweeper


@dataclass(frozen=True)
class WalletService:
    commands: WalletCommands
    sweeper: HoldSweeper


async def wire(rt: ServiceRuntime[WalletService]) -> WalletService:
    settings = rt.settings
    assert isinstance(settings, WalletSettings)
    commands = WalletCommands()
    commands.register(rt.commands)
    sweeper = HoldSweeper(settings, rt.store, CommandClient(rt.nc, settings, timeout=15))
    rt.background("wallet-hold-sweeper", sweeper.run)
    return WalletService(commands, sweeper)


SERVICE = Service(
    name="wallet",
    schema="wallet",
    settings=WalletSettings,
    projections=(BalancesProjection(), TransfersProjection(), HoldsProjection()),
    migrations=Path(__file__).parent / "migrations",
    secrets=frozenset(),
    wire=wire,
)
