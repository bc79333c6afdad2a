"""Credits for the tests' users: an admin's grant, as `make up` funds its demo user."""

from __future__ import annotations

import uuid
from decimal import Decimal

from nats.aio.client import Client as NATS

from contracts.wallet import CauseKind, DepositCredits, WalletBalance
from libs.bus.commands import Actor, CommandClient
from libs.config import BaseServiceSettings

ADMIN = Actor(kind="user", id="usr_admin", role="admin")


async def fund(
    nc: NATS, settings: BaseServiceSettings, user_id: str, amount: Decimal = Decimal(1000)
) -> WalletBalance:
    """Grant ``amount`` credits to ``user_id`` through the running wallet service."""
    grant = uuid.uuid4().hex
    return await CommandClient(nc, settings, timeout=10).send(
        DepositCredits(
            user_id=user_id,
            transfer_id=f"grant:{grant}",
            amount=amount,
            cause=CauseKind.grant,
            cause_id=grant,
        ),
        WalletBalance,
        command_id=grant,
        actor=ADMIN,
    )
