"""The wallet service's read models as the gateway reads them (libs/readmodels/wallet.py,
ADR 0007): the real service's projections over real commands, read back only through
:class:`WalletQuery` on a read-only pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from contracts.base import Command
from contracts.wallet import (
    CaptureHold,
    CauseKind,
    DepositCredits,
    HoldCredits,
    TransferKind,
    WalletBalance,
)
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.readmodels import read_only_pool
from libs.readmodels.wallet import WalletQuery
from libs.runtime import ServiceRuntime, build
from services.wallet.service import SERVICE
from services.wallet.settings import WalletSettings
from tests.conftest import Env

D = Decimal


@pytest.fixture
async def wallet_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, env.settings(WalletSettings))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def read_pool(wallet_service: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(wallet_service.settings.database_url, max_size=2)
    yield pool
    await pool.close()


async def send(rt: ServiceRuntime[Any], cmd: Command) -> WalletBalance:
    client = CommandClient(rt.nc, rt.settings)
    actor = Actor(kind="service", id="contract-test")
    return await client.send(cmd, WalletBalance, command_id=new_id("cmd"), actor=actor)


async def test_the_wallet_and_its_transfers_read_back_through_the_query_module(
    wallet_service: ServiceRuntime[Any], read_pool: asyncpg.Pool
) -> None:
    query = WalletQuery(read_pool, SERVICE.schema)
    user = new_id("usr")
    view, version = await query.wallet(user)
    assert (view.balance_credits, view.updated_at, version) == (D(0), None, 0)
    await send(
        wallet_service,
        DepositCredits(
            user_id=user, transfer_id="topup:pay_1", amount=D("10.00"), cause=CauseKind.payment,
            cause_id="pay_1",
        ),
    )  # fmt: skip
    expires = datetime.now(UTC) + timedelta(hours=1)
    await send(
        wallet_service,
        HoldCredits(
            user_id=user, transfer_id="hold:job_1:1", hold_id="hld_1", job_id="job_1",
            amount=D("4.00"), expires_at=expires,
        ),
    )  # fmt: skip
    done = await send(
        wallet_service,
        CaptureHold(user_id=user, transfer_id="capture:job_1", hold_id="hld_1", amount=D("1.50")),
    )
    view, version = await query.wallet(user)
    assert version == done.version == 3
    assert (view.balance_credits, view.held_credits, view.available_credits) == (
        D("8.50"),
        D("0.00"),
        D("8.50"),
    )
    newest_first = await query.transactions(user, None, 10)
    assert [t.kind for t in newest_first] == [
        TransferKind.capture,
        TransferKind.hold,
        TransferKind.deposit,
    ]
    capture = newest_first[0]
    assert (capture.amount_credits, capture.direction, capture.balance_after_credits) == (
        D("1.50"),
        "out",
        D("8.50"),
    )
    assert newest_first[1].held_after_credits == D("4.00")
    assert newest_first[1].available_after_credits == D("6.00")
    assert [t.transfer_id for t in await query.transactions(user, 2, 10)] == ["topup:pay_1"]
    assert await query.transactions(new_id("usr"), None, 10) == []
