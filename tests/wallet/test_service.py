"""The wallet service on the real servers: commands over NATS, read models in PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from contracts.errors import DomainError, InsufficientCredits
from contracts.wallet import CaptureHold, TransferOutcome, VoidHold
from libs.eventstore.rebuild import rebuild
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from services.wallet.projections import BalancesProjection, HoldsProjection
from tests.wallet.conftest import Wallets

D = Decimal


async def balance_row(rt: ServiceRuntime[Any], user_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await rt.store.pool.fetchrow(
        "SELECT balance, held, available, version FROM wallet.balances WHERE user_id = $1",
        user_id,
    )
    return row


async def until_available(
    rt: ServiceRuntime[Any], user_id: str, amount: Decimal, timeout: float = 10.0
) -> asyncpg.Record:
    """The wallet's balance row once its available credits are ``amount``."""
    async with asyncio.timeout(timeout):
        while True:
            row = await balance_row(rt, user_id)
            if row is not None and row["available"] == amount:
                return row
            await asyncio.sleep(0.05)


async def test_a_hundred_concurrent_holds_on_one_wallet_are_each_decided_on_the_last_state(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    user = new_id("usr")
    await wallets.deposit(user, "100.00")
    expires = datetime.now(UTC) + timedelta(hours=1)

    async def hold(n: int) -> str:
        try:
            reply = await wallets.hold(user, f"job_{n:03d}", "10.00", expires)
        except DomainError as e:
            return e.code
        return reply.outcome.value

    outcomes = await asyncio.gather(*(hold(n) for n in range(100)))
    assert outcomes.count("applied") == 10
    assert outcomes.count(InsufficientCredits.code) == 90
    row = await balance_row(wallet_service, user)
    assert row is not None
    assert (row["balance"], row["held"], row["available"]) == (D("100.00"), D("100.00"), 0)
    assert row["version"] == 11  # the deposit and ten holds; refusals record nothing


async def test_a_repeated_transfer_id_answers_exists_and_moves_nothing(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    user, payment = new_id("usr"), new_id("pay")
    first = await wallets.deposit(user, "25.00", payment)
    again = await wallets.deposit(user, "25.00", payment)  # a new command id, the same transfer
    assert first.outcome is TransferOutcome.applied and again.outcome is TransferOutcome.exists
    assert again.balance_credits == D("25.00") and again.version == first.version == 1
    with pytest.raises(DomainError) as reused:
        await wallets.deposit(user, "26.00", payment)
    assert reused.value.code == "transfer_id_reused"
    row = await balance_row(wallet_service, user)
    assert row is not None and row["balance"] == D("25.00")


async def test_the_sweeper_expires_a_stale_hold_and_the_credits_come_back(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    user = new_id("usr")
    await wallets.deposit(user, "50.00")
    held = await wallets.hold(user, "job_stale", "20.00", datetime.now(UTC) + timedelta(seconds=1))
    assert held.available_credits == D("30.00")
    await until_available(wallet_service, user, D("50.00"))
    status = await wallet_service.store.pool.fetchval(
        "SELECT status FROM wallet.holds WHERE user_id = $1 AND hold_id = 'hld_job_stale'", user
    )
    assert status == "expired"


async def test_rebuilt_read_models_match_the_live_ones_to_the_minor_unit(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    users = [new_id("usr") for _ in range(3)]
    for i, user in enumerate(users):
        await wallets.deposit(user, f"{10 + i}.33")
        await wallets.hold(user, f"job_a{i}", "3.21", later)
        await wallets.hold(user, f"job_b{i}", "1.11", later)
        await wallets.send(
            CaptureHold(
                user_id=user,
                transfer_id=f"capture:job_a{i}",
                hold_id=f"hld_job_a{i}",
                amount=D("2.99"),
            )
        )
        await wallets.send(
            VoidHold(
                user_id=user, transfer_id=f"void:job_b{i}", hold_id=f"hld_job_b{i}", reason="x"
            )
        )
    live = {u: await balance_row(wallet_service, u) for u in users}
    first = live[users[0]]
    assert first is not None and first["balance"] == D("10.33") - D("2.99")
    for model in (BalancesProjection(), HoldsProjection()):
        assert (await rebuild(wallet_service.store, model, verify=True)).differences == []
        await rebuild(wallet_service.store, model)
    assert {u: await balance_row(wallet_service, u) for u in users} == live
