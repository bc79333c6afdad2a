"""A crash between a hold and what follows it leaves no stuck hold and no double charge, on
the real servers: billing going away after the wallet placed (or captured) a job's hold but
before it recorded so, and a hold whose job never ends released by the wallet's sweeper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts.billing import JobCostReply, OpenJobCost, SettleJobCost
from contracts.jobs import JobCompleted
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from services.billing.process import capture_chain, hold_chain, parameters_of
from services.wallet.settings import WalletSettings
from tests.billing.conftest import (
    Stack,
    cost_row,
    cost_status,
    submitted,
    task,
    transfers,
    wallet_row,
)
from tests.conftest import Env
from tests.waiting import until

D = Decimal
#: Billing's process manager, as these tests play it by hand up to a crash.
MANAGER = Actor(kind="service", id="billing")


@pytest.fixture
def wallet_settings(env: Env) -> WalletSettings:
    """The sweeper looks for expired holds five times a second."""
    return env.settings(WalletSettings, hold_sweep_seconds=0.2)


async def to_billing(billing: ServiceRuntime[Any], cmd: Any) -> JobCostReply:
    client = CommandClient(billing.nc, billing.settings, timeout=10)
    reply: JobCostReply = await client.send(
        cmd, JobCostReply, command_id=new_id("cmd"), actor=MANAGER
    )
    return reply


async def wallet_is(stack: Stack, user: str, balance: str, held: str) -> bool:
    row = await wallet_row(stack.pool, user)
    return row is not None and (row["balance"], row["held"]) == (D(balance), D(held))


async def test_billing_lost_between_the_wallets_hold_and_recording_it_holds_once_and_settles_once(
    stack: Stack,
) -> None:
    user, job = new_id("usr"), new_id("job")
    await stack.wallets.deposit(user, "10.00")
    event = submitted(job, user)
    assert stack.billing is not None
    # What billing's process manager does for the submitted job, up to the crash: the cost
    # opened, the wallet's hold placed ...
    opening = OpenJobCost(
        job_id=job,
        owner_id=user,
        api_key_id=None,
        parameters=parameters_of(event),
        cap_credits=None,
        at=event.submitted_at,
    )
    opened = await to_billing(stack.billing, opening)
    [ask] = hold_chain(opened, datetime.now(UTC))
    await stack.wallets.send(ask.command)
    await until(lambda: wallet_is(stack, user, "10.00", "0.50"))
    await until(lambda: cost_status(stack.pool, job, "holding"))
    # ... and billing gone before it recorded the hold.
    await stack.stop_billing()

    # A new replica gets the event again and runs the whole chain from the start.
    await stack.source.emit(f"job-{job}", event)
    await stack.start_billing()
    row = await until(lambda: cost_status(stack.pool, job, "held"))
    assert row["held_credits"] == D("0.50")
    assert await transfers(stack.pool, job) == [("hold", f"hold:{job}:1")]  # one hold
    await until(lambda: wallet_is(stack, user, "10.00", "0.50"))

    await stack.source.emit(f"render-{job}", task(job, 1, 90.0))  # 0.025 -> 0.03
    await until(lambda: _so_far(stack, job, "0.03"))
    # The job ends; billing asks what to capture and the wallet captures it ...
    settling = await to_billing(stack.billing, SettleJobCost(job_id=job, at=datetime.now(UTC)))
    [capture] = capture_chain(settling, datetime.now(UTC))
    await stack.wallets.send(capture.command)
    await until(lambda: wallet_is(stack, user, "9.97", "0.00"))
    # ... and billing is gone again before recording it; the next replica settles the job.
    await stack.stop_billing()
    await stack.source.emit(f"job-{job}", JobCompleted(job_id=job, at=datetime.now(UTC)))
    await stack.start_billing()
    row = await until(lambda: cost_status(stack.pool, job, "settled"))
    assert (row["captured_credits"], row["released_credits"]) == (D("0.03"), D("0.47"))
    assert await transfers(stack.pool, job) == [
        ("hold", f"hold:{job}:1"),
        ("capture", f"capture:{job}"),
    ]
    await until(lambda: wallet_is(stack, user, "9.97", "0.00"))


async def _so_far(stack: Stack, job: str, amount: str) -> bool:
    row = await cost_row(stack.pool, job)
    return row is not None and row["so_far_credits"] == D(amount)


@pytest.mark.parametrize(
    "billing_overrides", [{"hold_ttl": timedelta(seconds=1)}], ids=["holds_live_1s"]
)
async def test_a_hold_whose_job_never_ends_expires_and_its_late_settlement_charges_nothing(
    stack: Stack,
) -> None:
    user, job = new_id("usr"), new_id("job")
    await stack.wallets.deposit(user, "10.00")
    await stack.source.emit(f"job-{job}", submitted(job, user))
    await until(lambda: cost_status(stack.pool, job, "held"))
    await stack.source.emit(f"render-{job}", task(job, 1, 90.0))
    await until(lambda: _so_far(stack, job, "0.03"))

    # Nothing ended the job: past its expiry the sweeper gives the whole hold back.
    await until(lambda: wallet_is(stack, user, "10.00", "0.00"))
    assert await transfers(stack.pool, job) == [
        ("hold", f"hold:{job}:1"),
        ("expiry", f"expiry:{job}"),
    ]

    # The job ends after all: the capture finds no pending hold, and billing records the
    # job settled with nothing charged instead of charging what was already released.
    await stack.source.emit(f"job-{job}", JobCompleted(job_id=job, at=datetime.now(UTC)))
    row = await until(lambda: cost_status(stack.pool, job, "settled"))
    assert (row["captured_credits"], row["released_credits"]) == (D("0.00"), D("0.50"))
    assert await transfers(stack.pool, job) == [
        ("hold", f"hold:{job}:1"),
        ("expiry", f"expiry:{job}"),
    ]
    await until(lambda: wallet_is(stack, user, "10.00", "0.00"))
