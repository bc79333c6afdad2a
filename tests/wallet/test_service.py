"""The wallet service on the real servers: commands over NATS, read models in PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from contracts.errors import DomainError, InsufficientCredits
from contracts.wallet import (
    CaptureHold,
    CauseKind,
    DebitCredits,
    IncreaseHold,
    TransferOutcome,
    VoidHold,
)
from libs.config import BaseServiceSettings
from libs.eventstore.rebuild import rebuild
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from services.wallet.projections import (
    BalancesProjection,
    HoldsProjection,
    TransfersProjection,
)
from tests.conftest import Env
from tests.waiting import until
from tests.wallet.conftest import Wallets
from tools import renderctl

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

    async def hold_expired() -> bool:  # the holds read model has its own projector
        status = await wallet_service.store.pool.fetchval(
            "SELECT status FROM wallet.holds WHERE user_id = $1 AND hold_id = 'hld_job_stale'",
            user,
        )
        return bool(status == "expired")

    await until(hold_expired, "the hold listed as expired", timeout=10)


async def until_hold(
    rt: ServiceRuntime[Any], user_id: str, hold_id: str, status: str, timeout: float = 10.0
) -> None:
    """Returns once the hold's row has ``status``."""
    async with asyncio.timeout(timeout):
        while (
            await rt.store.pool.fetchval(
                "SELECT status FROM wallet.holds WHERE user_id = $1 AND hold_id = $2",
                user_id,
                hold_id,
            )
            != status
        ):
            await asyncio.sleep(0.05)


async def a_mixed_history(rt: ServiceRuntime[Any], wallets: Wallets, users: list[str]) -> None:
    """Deposits, holds (one grown), captures, voids, an expiry by the sweeper, then a refund
    driving each of ``users``' wallets below zero."""
    later = datetime.now(UTC) + timedelta(hours=1)
    for i, user in enumerate(users):
        await wallets.deposit(user, f"{10 + i}.33")
        await wallets.hold(user, f"job_a{i}", "3.21", later)
        await wallets.send(
            IncreaseHold(
                user_id=user,
                transfer_id=f"hold:job_a{i}:2",
                hold_id=f"hld_job_a{i}",
                amount=D("0.50"),
                expires_at=later,
            )
        )
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
        await wallets.hold(user, f"job_c{i}", "2.00", datetime.now(UTC) + timedelta(seconds=1))
    for i, user in enumerate(users):  # the sweeper expires job_c's hold
        await until_hold(rt, user, f"hld_job_c{i}", "expired")
    for i, user in enumerate(users):
        await wallets.send(
            DebitCredits(
                user_id=user,
                transfer_id=f"refund:rfnd_{i}",
                amount=D("10.00"),
                cause=CauseKind.refund,
                cause_id=f"rfnd_{i}",
            )
        )


async def statement(rt: ServiceRuntime[Any], user_id: str) -> list[tuple[object, ...]]:
    """The wallet's transfers, oldest first: kind, amount, balance/held/available after."""
    rows = await rt.store.pool.fetch(
        "SELECT kind, amount, balance_after, held_after, available_after FROM wallet.transfers"
        " WHERE user_id = $1 ORDER BY version",
        user_id,
    )
    return [tuple(r) for r in rows]


async def test_every_transfer_row_shows_the_wallet_after_it(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    user = new_id("usr")
    await a_mixed_history(wallet_service, wallets, [user])
    assert await statement(wallet_service, user) == [
        ("deposit", D("10.33"), D("10.33"), D("0.00"), D("10.33")),
        ("hold", D("3.21"), D("10.33"), D("3.21"), D("7.12")),
        ("hold_increase", D("0.50"), D("10.33"), D("3.71"), D("6.62")),
        ("hold", D("1.11"), D("10.33"), D("4.82"), D("5.51")),
        ("capture", D("2.99"), D("7.34"), D("1.11"), D("6.23")),
        ("void", D("1.11"), D("7.34"), D("0.00"), D("7.34")),
        ("hold", D("2.00"), D("7.34"), D("2.00"), D("5.34")),
        ("expiry", D("2.00"), D("7.34"), D("0.00"), D("7.34")),
        ("debit", D("10.00"), D("-2.66"), D("0.00"), D("-2.66")),
    ]


async def test_every_transfer_debits_one_ledger_account_and_credits_another(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    user = new_id("usr")
    await a_mixed_history(wallet_service, wallets, [user])
    rows = await wallet_service.store.pool.fetch(
        "SELECT kind, amount, balance_change, debit_account, credit_account"
        " FROM wallet.transfers WHERE user_id = $1 ORDER BY version",
        user,
    )
    me = f"user:{user}"
    assert [(r["kind"], r["debit_account"], r["credit_account"]) for r in rows] == [
        ("deposit", "payments_clearing", me),
        ("hold", me, "job_holds"),
        ("hold_increase", me, "job_holds"),
        ("hold", me, "job_holds"),
        ("capture", me, "render_revenue"),
        ("void", "job_holds", me),
        ("hold", me, "job_holds"),
        ("expiry", "job_holds", me),
        ("debit", me, "refunds"),
    ]
    # Posted money only moves between the wallet and another account: the wallet's balance
    # is what the other accounts gave it less what they took.
    posted = {"deposit", "capture", "debit"}
    into_wallet = sum(
        (r["amount"] if r["credit_account"] == me else -r["amount"])
        for r in rows
        if r["kind"] in posted
    )
    assert into_wallet == sum(r["balance_change"] for r in rows) == D("10.33") - D("2.99") - 10


async def test_rebuilt_read_models_match_the_live_ones_to_the_minor_unit(
    wallet_service: ServiceRuntime[Any], wallets: Wallets
) -> None:
    users = [new_id("usr") for _ in range(3)]
    await a_mixed_history(wallet_service, wallets, users)
    live = {u: await balance_row(wallet_service, u) for u in users}
    ledgers = {u: await statement(wallet_service, u) for u in users}
    first = live[users[0]]
    assert first is not None and first["balance"] == D("10.33") - D("2.99") - D("10.00")
    for model in (BalancesProjection(), HoldsProjection(), TransfersProjection()):
        assert (await rebuild(wallet_service.store, model, verify=True)).differences == []
        await rebuild(wallet_service.store, model)
    assert {u: await balance_row(wallet_service, u) for u in users} == live
    assert {u: await statement(wallet_service, u) for u in users} == ledgers


async def test_renderctl_verifies_and_repairs_the_transfers_read_model(
    wallet_service: ServiceRuntime[Any],
    wallets: Wallets,
    env: Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli = env.settings(BaseServiceSettings, service_name="renderctl")
    users = [new_id("usr") for _ in range(2)]
    await a_mixed_history(wallet_service, wallets, users)
    ledger = await statement(wallet_service, users[0])
    verify = ["rebuild", "--projection", "transfers", "--verify"]
    capsys.readouterr()
    assert await renderctl.run(verify, cli) == 0
    assert "verified wallet.transfers: 0 difference(s)" in capsys.readouterr().out

    await wallet_service.store.pool.execute(  # a row gone wrong by hand
        "UPDATE wallet.transfers SET balance_after = balance_after + 1"
        " WHERE user_id = $1 AND version = 2",
        users[0],
    )
    assert await renderctl.run(verify, cli) == 1
    assert "verified wallet.transfers: 1 difference(s)" in capsys.readouterr().out
    assert await renderctl.run(["rebuild", "--projection", "wallet.transfers"], cli) == 0
    assert await renderctl.run(verify, cli) == 0
    assert await statement(wallet_service, users[0]) == ledger
