"""The scaler's budgets from billing's published read model: each capped job's affordable
tasks, every job of a round in one query; a job without a cap, or billing has not opened,
does not bind; a scaler without billing's tables counts every task."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from contracts.billing import EstimateParameters, JobCostReply, OpenJobCost
from contracts.jobs import FrameRange, Resolution
from libs.ids import new_id
from libs.readmodels.billing import BillingQuery
from libs.runtime import ServiceRuntime
from services.scaler.domain import affordable_tasks
from services.scaler.service import budgets_from
from tests.conftest import Env
from tests.contracts.test_billing_queries import billing_service, query, send, until

__all__ = ["billing_service", "query"]  # the fixtures, from billing's query tests


async def open_job(rt: ServiceRuntime[Any], cap: Decimal | None) -> JobCostReply:
    params = EstimateParameters(
        frame_range=FrameRange(start=1, end=10), resolution=Resolution(width=1920, height=1080)
    )
    opened = OpenJobCost(
        job_id=new_id("job"),
        owner_id=new_id("usr"),
        api_key_id=None,
        parameters=params,
        cap_credits=cap,
        at=datetime.now(UTC),
    )
    return await send(rt, opened, JobCostReply)


async def test_capped_jobs_bind_in_one_query_and_others_do_not(
    billing_service: ServiceRuntime[Any], query: BillingQuery
) -> None:
    capped = await open_job(billing_service, Decimal("40.00"))
    free = await open_job(billing_service, None)
    ids = [capped.job_id, free.job_id, new_id("job")]

    async def opened() -> Any:
        costs = await query.job_costs(ids)
        return costs if len(costs) == 2 else None

    costs = await until(opened)
    row = costs[capped.job_id]
    assert row.estimate is not None
    expected = affordable_tasks(
        row.cap_credits,
        row.so_far_credits,
        row.lines,
        row.estimate.expected_credits,
        row.estimate.assumptions.tasks,
    )
    assert expected is not None
    assert await budgets_from(query)(ids) == {capped.job_id: expected}


async def test_without_billings_tables_no_budget_binds(env: Env) -> None:
    pool = await asyncpg.create_pool(env["RF_DATABASE_URL"], min_size=1, max_size=1)
    try:
        assert await budgets_from(BillingQuery(pool))([new_id("job")]) == {}
    finally:
        await pool.close()
