"""Billing and the wallet on the real servers: a submitted job gets its hold in the wallet,
finished farm tasks become cost lines, the job's end captures the cost and releases the
rest, and a top-up retries a refused hold. The job and render events come from a stand-in
service's event store, published on the bus by its relay as the job service's are."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from contracts.jobs import JobCompleted
from libs.ids import new_id
from tests.billing.conftest import Stack, cost_status, submitted, task, wallet_row
from tests.waiting import until

D = Decimal


async def test_a_job_is_held_charged_per_task_and_settled_in_the_wallet(
    stack: Stack,
) -> None:
    source, wallets, pool = stack.source, stack.wallets, stack.pool
    user, job = new_id("usr"), new_id("job")
    await wallets.deposit(user, "10.00")
    await source.emit(f"job-{job}", submitted(job, user))

    row = await until(lambda: cost_status(pool, job, "held"))
    assert row["held_credits"] == D("0.50")
    balance = await until(lambda: wallet_row(pool, user))
    assert (balance["held"], balance["available"]) == (D("0.50"), D("9.50"))

    await source.emit(f"render-{job}", task(job, 1, 90.0))  # 0.025 -> 0.03
    await source.emit(f"render-{job}", task(job, 2, 90.0))
    await source.emit(f"render-{job}", task(job, 2, 90.0))  # the bridge said it twice

    async def lines() -> Any:
        rows = await pool.fetch(
            "SELECT line_id, amount_credits FROM billing.cost_lines WHERE job_id = $1 ORDER BY seq",
            job,
        )
        return rows if len(rows) == 2 else None

    rows = await until(lines)
    assert [r["amount_credits"] for r in rows] == [D("0.03"), D("0.03")]
    await source.emit(f"job-{job}", JobCompleted(job_id=job, at=datetime.now(UTC)))

    row = await until(lambda: cost_status(pool, job, "settled"))
    assert (row["captured_credits"], row["released_credits"]) == (D("0.06"), D("0.44"))

    async def wallet_settled() -> Any:
        row = await wallet_row(pool, user)
        return row if row is not None and row["held"] == 0 else None

    balance = await until(wallet_settled)
    assert (balance["balance"], balance["available"]) == (D("9.94"), D("9.94"))


async def test_a_top_up_retries_a_hold_the_wallet_refused(
    stack: Stack,
) -> None:
    source, wallets, pool = stack.source, stack.wallets, stack.pool
    user, job = new_id("usr"), new_id("job")
    await wallets.deposit(user, "0.20")
    await source.emit(f"job-{job}", submitted(job, user))

    row = await until(lambda: cost_status(pool, job, "awaiting_credits"))
    assert row["awaiting_reason"] == "insufficient_credits"
    await wallets.deposit(user, "5.00")
    row = await until(lambda: cost_status(pool, job, "held"))
    assert row["held_credits"] == D("0.50")
