"""Queries on the billing service's read models: ``<schema>.prices``, ``<schema>.job_costs``,
``<schema>.cost_lines`` and ``<schema>.key_spend``.

Owned by the billing service (``services/billing``). A change to the columns these queries
read, in ``services/billing/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_billing_queries.py`` pins the contract.

A job's cost and an API key's spend are returned by id: the caller checks first that the job
(``libs.readmodels.jobs``) or the key (``libs.readmodels.identity``) is the user's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from contracts.billing import CostEstimate, CostLine, KeySpend, LineCause, PriceList, PriceVersion
from contracts.envelope import AwaitingReason, CostStatus, Currency
from contracts.fleet import UserUsageDay
from libs.readmodels import check_schema

#: The schema the billing service owns (its ``Service.schema``).
SCHEMA = "billing"
ZERO = Decimal("0.00")


@dataclass(frozen=True, slots=True)
class JobCostRow:
    """A job's money after billing's latest event about it."""

    job_id: str
    owner_id: str
    api_key_id: str | None
    status: CostStatus
    estimate: CostEstimate | None
    cap_credits: Decimal | None
    held_credits: Decimal
    so_far_credits: Decimal
    captured_credits: Decimal
    released_credits: Decimal
    awaiting_reason: AwaitingReason | None
    #: How many cost lines the job has.
    lines: int
    #: The job cost stream's version the row reflects.
    version: int


@dataclass(frozen=True, slots=True)
class PlacedLine:
    """A cost line and its place in the job's order of lines (``seq``, for cursors)."""

    seq: int
    line: CostLine


@dataclass(frozen=True, slots=True)
class LineTotals:
    """Every line of a job: how many, and what they add up to."""

    count: int
    amount_credits: Decimal


def _version(r: asyncpg.Record) -> PriceVersion:
    return PriceVersion(
        version=r["version"],
        effective_from=r["effective_from"],
        prices=PriceList.model_validate(r["prices"]),
        published_by=r["published_by"],
    )


def _line(r: asyncpg.Record) -> PlacedLine:
    return PlacedLine(
        seq=r["seq"],
        line=CostLine(
            line_id=r["line_id"],
            cause=LineCause(r["cause"]),
            render_id=r["render_id"],
            task_id=r["task_id"],
            frames=list(r["frames"]),
            worker=r["worker"],
            instance_type=r["instance_type"],
            seconds=r["seconds"],
            price_per_hour_credits=r["price_per_hour_credits"],
            price_version=r["price_version"],
            amount_credits=r["amount_credits"],
            at=r["at"],
            work_factor=r["work_factor"],
        ),
    )


def _cost(r: asyncpg.Record) -> JobCostRow:
    return JobCostRow(
        job_id=r["job_id"],
        owner_id=r["owner_id"],
        api_key_id=r["api_key_id"],
        status=CostStatus(r["status"]),
        estimate=None if r["estimate"] is None else CostEstimate.model_validate(r["estimate"]),
        cap_credits=r["cap_credits"],
        held_credits=r["held_credits"],
        so_far_credits=r["so_far_credits"],
        captured_credits=r["captured_credits"],
        released_credits=r["released_credits"],
        awaiting_reason=None
        if r["awaiting_reason"] is None
        else AwaitingReason(r["awaiting_reason"]),
        lines=r["lines"],
        version=r["version"],
    )


class BillingQuery:
    """Read-only access to the billing service's read models."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        price = f"SELECT version, effective_from, prices, published_by FROM {s}.prices"
        self._in_force_sql = f"{price} WHERE effective_from <= $1 ORDER BY version DESC LIMIT 1"
        self._usage_sql = (
            "SELECT (l.at AT TIME ZONE 'UTC')::date AS day, c.owner_id,"
            " sum(l.seconds) AS seconds, sum(l.amount_credits) AS credits"
            f" FROM {s}.cost_lines l JOIN {s}.job_costs c USING (job_id)"
            " WHERE l.cause = 'task' AND (l.at AT TIME ZONE 'UTC')::date BETWEEN $1 AND $2"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
        self._next_sql = (
            f"{price} WHERE effective_from > $1 ORDER BY effective_from, version LIMIT 1"
        )
        cost = (
            "SELECT job_id, owner_id, api_key_id, status, estimate, cap_credits, held_credits,"
            " so_far_credits, captured_credits, released_credits, awaiting_reason, lines,"
            f" version FROM {s}.job_costs"
        )
        self._cost_sql = f"{cost} WHERE job_id = $1"
        self._costs_sql = f"{cost} WHERE job_id = ANY($1::text[])"
        self._lines_sql = (
            "SELECT seq, line_id, cause, render_id, task_id, frames, worker, instance_type,"
            " seconds, price_per_hour_credits, price_version, amount_credits, at, work_factor"
            f" FROM {s}.cost_lines WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
        self._totals_sql = (
            f"SELECT count(*), coalesce(sum(amount_credits), 0) FROM {s}.cost_lines"
            " WHERE job_id = $1"
        )
        self._spend_sql = (
            "SELECT daily_cap_credits, total_cap_credits, day, today_credits, total_credits"
            f" FROM {s}.key_spend WHERE api_key_id = $1"
        )

    async def prices(self, at: datetime) -> tuple[PriceVersion | None, PriceVersion | None]:
        """The price version in force at ``at`` (the latest effective by then) and the next
        one scheduled after it, each None if there is none."""
        in_force = await self.pool.fetchrow(self._in_force_sql, at)
        scheduled = await self.pool.fetchrow(self._next_sql, at)
        return (
            None if in_force is None else _version(in_force),
            None if scheduled is None else _version(scheduled),
        )

    async def job_cost(self, job_id: str) -> JobCostRow | None:
        """The job's money; None while billing has not opened the job."""
        r = await self.pool.fetchrow(self._cost_sql, job_id)
        return None if r is None else _cost(r)

    async def job_costs(self, job_ids: Sequence[str]) -> dict[str, JobCostRow]:
        """The money of each of ``job_ids`` that billing has opened, in one query."""
        rows = await self.pool.fetch(self._costs_sql, list(job_ids))
        return {r["job_id"]: _cost(r) for r in rows}

    async def lines(self, job_id: str, after_seq: int, limit: int) -> list[PlacedLine]:
        """The job's cost lines placed after ``after_seq``, in the order they were recorded."""
        rows = await self.pool.fetch(self._lines_sql, job_id, after_seq, limit)
        return [_line(r) for r in rows]

    async def line_totals(self, job_id: str) -> LineTotals:
        """How many lines the job has and their sum (the total a client can check)."""
        r = await self.pool.fetchrow(self._totals_sql, job_id)
        assert r is not None
        return LineTotals(count=r[0], amount_credits=Decimal(r[1]).quantize(ZERO))

    async def key_spend(self, api_key_id: str, today: date) -> KeySpend:
        """The key's caps and commitments on the UTC day ``today`` (no caps and zeros for a
        key billing has not seen)."""
        r = await self.pool.fetchrow(self._spend_sql, api_key_id)
        if r is None:
            return KeySpend(
                api_key_id=api_key_id,
                daily_cap_credits=None,
                total_cap_credits=None,
                today_credits=ZERO,
                total_credits=ZERO,
                currency=Currency.credits,
            )
        return KeySpend(
            api_key_id=api_key_id,
            daily_cap_credits=r["daily_cap_credits"],
            total_cap_credits=r["total_cap_credits"],
            today_credits=r["today_credits"] if r["day"] == today else ZERO,
            total_credits=r["total_credits"],
            currency=Currency.credits,
        )

    async def task_usage(self, from_day: date, to_day: date) -> list[UserUsageDay]:
        """Per UTC day and user: the machine time their jobs' tasks were charged for (the
        busy time of the fleet, as billed) and the credits charged for it."""
        rows = await self.pool.fetch(self._usage_sql, from_day, to_day)
        return [
            UserUsageDay(
                day=r["day"],
                user_id=r["owner_id"],
                task_hours=r["seconds"] / Decimal(3600),
                charged_credits=r["credits"],
            )
            for r in rows
        ]
