"""Every credit movement is explained by events, on the real servers: a top-up paid through
the Razorpay stand-in, then a job held, charged and settled by billing. Each row of the
user's ``wallet.transfers`` has its cause in another service's events (the same transfer
id), and the balance follows from the wallet's own events alone, to the minor unit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from contracts.jobs import JobCompleted
from libs.config import BaseServiceSettings
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.billing.service import SERVICE as BILLING
from services.billing.settings import BillingSettings
from tests.billing.conftest import SOURCE, Source, cost_status, submitted, task
from tests.conftest import Env
from tests.fixtures import Users
from tests.payments.test_service import TopUps
from tests.prices import TEST_PRICES
from tests.waiting import until as poll

D = Decimal


@pytest.fixture
async def jobs(env: Env, wallet_service: ServiceRuntime[Any]) -> AsyncIterator[Source]:
    """Billing beside the wallet, and the stand-in for the job service and the bridge."""
    started = [
        await build(BILLING, env.settings(BillingSettings, default_prices=TEST_PRICES)),
        await build(SOURCE, env.settings(BaseServiceSettings, service_name="jobsource")),
    ]
    for rt in started:
        await rt.launch()
    yield Source(started[1])
    for rt in reversed(started):
        await rt.stop()


async def events(pool: asyncpg.Pool, schema: str, user: str) -> list[tuple[str, dict[str, Any]]]:
    """A service's events about ``user`` (its ``user_id`` or ``owner_id``), in order."""
    rows = await pool.fetch(
        f"SELECT type, data FROM {schema}.events"
        " WHERE data->>'user_id' = $1 OR data->>'owner_id' = $1 ORDER BY global_position",
        user,
    )
    return [(r["type"], _json(r["data"])) for r in rows]


def _json(data: Any) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(data) if isinstance(data, str) else data
    return found


async def test_every_credit_movement_has_its_cause_in_another_services_events(
    pay_api: httpx.AsyncClient,
    standin: httpx.AsyncClient,
    webhook_url: str,
    users: Users,
    payments_service: ServiceRuntime[Any],
    jobs: Source,
) -> None:
    user, job = new_id("usr"), new_id("job")
    topups = TopUps(pay_api, standin, webhook_url, users.headers(user))
    order = await topups.order(1_000)  # ₹10.00: 10.00 credits
    await topups.pay(order["order_id"])
    await topups.credited(order["order_id"])

    await jobs.emit(f"job-{job}", submitted(job, user))
    pool = payments_service.store.pool
    await poll(lambda: cost_status(pool, job, "held"))
    await jobs.emit(f"render-{job}", task(job, 1, 90.0))  # 0.03
    await jobs.emit(f"render-{job}", task(job, 2, 1500.0))  # 0.42: the hold grows
    await poll(lambda: _hold_grown(pool, job))
    await jobs.emit(f"job-{job}", JobCompleted(job_id=job, at=datetime.now(UTC)))
    await poll(lambda: cost_status(pool, job, "settled"))

    async def wallet_done() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT kind, transfer_id, job_id FROM wallet.transfers WHERE user_id = $1"
            " ORDER BY version",
            user,
        )
        if not rows or rows[-1]["kind"] != "capture":
            return None
        # Billing records the settlement once the wallet answered the capture: wait for it.
        billed = await events(pool, "billing", user)
        return rows if any(t == "billing.JobCostSettled" for t, _ in billed) else None

    rows: list[asyncpg.Record] = await poll(wallet_done)
    assert [r["kind"] for r in rows] == ["deposit", "hold", "hold_increase", "capture"]

    paid = await events(pool, "payments", user)
    billed = await events(pool, "billing", user)
    topped_up = {e["transfer_id"] for t, e in paid if t == "payment.TopUpCredited"}
    asked = {e["request"]["transfer_id"] for t, e in billed if t == "billing.JobHoldRequested"}
    held = {e["transfer_id"] for t, e in billed if t == "billing.JobCostHeld"}
    settled = {e["transfer_id"] for t, e in billed if t == "billing.JobCostSettled"}
    for row in rows:
        match row["kind"]:
            case "deposit":
                assert row["transfer_id"] in topped_up
            case "hold" | "hold_increase":
                assert row["transfer_id"] in asked & held and row["job_id"] == job
            case "capture" | "void":
                assert row["transfer_id"] in settled and row["job_id"] == job
            case other:
                pytest.fail(f"a {other} transfer with no cause in the events: {row}")

    # The balance from the wallet's events alone: Σ deposits - Σ captures - Σ debits.
    moved = await events(pool, "wallet", user)
    amounts = {
        "wallet.CreditsDeposited": "amount",
        "wallet.HoldCaptured": "captured",
        "wallet.CreditsDebited": "amount",
    }
    sign = {"wallet.CreditsDeposited": 1, "wallet.HoldCaptured": -1, "wallet.CreditsDebited": -1}
    computed = sum((sign[t] * D(e[amounts[t]]) for t, e in moved if t in amounts), D(0))
    last = [e for _, e in moved if "balance_after" in e][-1]  # claims carry no figures
    assert computed == D(last["balance_after"]) == D("9.55")

    async def balance_shown() -> bool:  # wallet.balances is a read model of its own
        sql = "SELECT balance FROM wallet.balances WHERE user_id = $1"
        return bool(await pool.fetchval(sql, user) == computed)

    assert await poll(balance_shown) is True


async def _hold_grown(pool: asyncpg.Pool, job: str) -> bool:
    grown = await pool.fetchval(
        "SELECT count(*) FROM wallet.transfers WHERE job_id = $1 AND kind = 'hold_increase'", job
    )
    return bool(grown)
