"""The billing service's read models as the gateway reads them (libs/readmodels/billing.py,
ADR 0007): the real service's projections over real commands, read back only through
:class:`BillingQuery` on a read-only pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest
from pydantic import BaseModel

from contracts.base import Command
from contracts.billing import (
    ChargeTask,
    EstimateParameters,
    JobCostReply,
    KeySpend,
    LineCause,
    OpenJobCost,
    PriceVersion,
    PublishPrices,
    RecordJobHold,
    SetKeySpendCaps,
)
from contracts.envelope import CostStatus
from contracts.jobs import FrameRange, Resolution
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.readmodels import read_only_pool
from libs.readmodels.billing import BillingQuery
from libs.runtime import ServiceRuntime, build
from services.billing.service import SERVICE
from services.billing.settings import BillingSettings
from tests.conftest import Env
from tests.prices import TEST_PRICES

D = Decimal
R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


@pytest.fixture
async def billing_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, env.settings(BillingSettings, default_prices=TEST_PRICES))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def query(billing_service: ServiceRuntime[Any]) -> AsyncIterator[BillingQuery]:
    pool: asyncpg.Pool = await read_only_pool(billing_service.settings.database_url, max_size=2)
    yield BillingQuery(pool, SERVICE.schema)
    await pool.close()


async def send(rt: ServiceRuntime[Any], cmd: Command, answer: type[R]) -> R:
    client = CommandClient(rt.nc, rt.settings)
    actor = Actor(kind="user", id="usr_admin")
    return await client.send(cmd, answer, command_id=new_id("cmd"), actor=actor)


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def test_the_price_in_force_and_the_next_scheduled_one(
    billing_service: ServiceRuntime[Any], query: BillingQuery
) -> None:
    first = await until(lambda: _in_force(query))
    assert (first.version, first.published_by) == (1, "billing")
    assert first.prices == TEST_PRICES
    later = datetime.now(UTC) + timedelta(days=30)
    dearer = TEST_PRICES.model_copy(update={"egress_per_gb": D("0.1200")})
    published = await send(
        billing_service, PublishPrices(prices=dearer, effective_from=later), PriceVersion
    )

    async def scheduled() -> PriceVersion | None:
        return (await query.prices(datetime.now(UTC)))[1]

    assert await until(scheduled) == published
    in_force, _ = await query.prices(datetime.now(UTC))
    assert in_force == first
    assert (await query.prices(later))[0] == published
    assert await query.prices(first.effective_from - timedelta(seconds=1)) == (None, first)


async def _in_force(query: BillingQuery) -> PriceVersion | None:
    return (await query.prices(datetime.now(UTC)))[0]


async def test_a_jobs_cost_and_its_lines_in_order_and_adding_up(
    billing_service: ServiceRuntime[Any], query: BillingQuery
) -> None:
    job, user = new_id("job"), new_id("usr")
    assert await query.job_cost(job) is None
    assert await query.lines(job, -1, 10) == []
    assert (await query.line_totals(job)).count == 0
    now = datetime.now(UTC)
    params = EstimateParameters(
        frame_range=FrameRange(start=1, end=10), resolution=Resolution(width=1920, height=1080)
    )
    opened = await send(
        billing_service,
        OpenJobCost(
            job_id=job, owner_id=user, api_key_id=None, parameters=params,
            cap_credits=D("40.00"), at=now,
        ),
        JobCostReply,
    )  # fmt: skip
    assert opened.hold is not None
    await send(
        billing_service,
        RecordJobHold(
            job_id=job, transfer_id=opened.hold.transfer_id, held_total=opened.hold.amount, at=now
        ),
        JobCostReply,
    )
    for task, seconds in ((1, 90.0), (2, 150.0), (3, 3600.0)):
        last = await send(
            billing_service,
            ChargeTask(
                job_id=job, render_id=f"{job}.full.1", task_id=task, frames=[task], worker="w1",
                render_seconds=seconds, finished_at=now,
            ),
            JobCostReply,
        )  # fmt: skip

    async def caught_up() -> Any:
        row = await query.job_cost(job)
        return row if row is not None and row.version == last.version else None

    row = await until(caught_up)
    assert await query.job_costs([job, new_id("job")]) == {job: row}  # one query, opened only
    assert (row.job_id, row.owner_id, row.api_key_id) == (job, user, None)
    assert row.status is CostStatus.held
    assert row.estimate is not None and row.estimate.assumptions.frames == 10
    assert row.cap_credits == D("40.00") and row.held_credits == opened.hold.amount
    assert row.so_far_credits == last.totals.so_far_credits and row.lines == 3
    first_two = await query.lines(job, -1, 2)
    rest = await query.lines(job, first_two[-1].seq, 10)
    placed = first_two + rest
    assert [p.line.task_id for p in placed] == [1, 2, 3]
    assert all(p.line.cause is LineCause.task for p in placed)
    assert placed[2].line.frames == [3] and placed[2].line.worker == "w1"
    assert placed[2].line.seconds == D("3600") and placed[2].line.price_version == 1
    totals = await query.line_totals(job)
    assert totals.count == 3
    assert totals.amount_credits == sum(p.line.amount_credits for p in placed)
    assert totals.amount_credits == row.so_far_credits


async def test_an_api_keys_caps_and_a_key_billing_never_saw(
    billing_service: ServiceRuntime[Any], query: BillingQuery
) -> None:
    key, today = new_id("key"), datetime.now(UTC).date()
    unseen = await query.key_spend(key, today)
    assert (unseen.daily_cap_credits, unseen.total_cap_credits) == (None, None)
    assert (unseen.today_credits, unseen.total_credits) == (D(0), D(0))
    answer = await send(
        billing_service,
        SetKeySpendCaps(
            api_key_id=key, owner_id="usr_1", daily_cap_credits=D("5.00"), total_cap_credits=None
        ),
        KeySpend,
    )

    async def capped() -> KeySpend | None:
        spend = await query.key_spend(key, today)
        return spend if spend.daily_cap_credits is not None else None

    assert await until(capped) == answer
