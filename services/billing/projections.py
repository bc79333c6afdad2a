"""Read models of the billing service (tables: ``services/billing/migrations``)."""

from __future__ import annotations

from decimal import Decimal

from contracts.billing import (
    JOB_COST_EVENTS,
    CostLine,
    JobCostOpened,
    JobCostSettled,
    JobHoldRequested,
    KeySpendCapsSet,
    KeySpendCommitted,
    KeySpendReleased,
    PricesPublished,
    TaskCharged,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

ZERO = Decimal("0.00")
#: Lines per event at most (a settlement's adjustments): ``seq`` = version x this + index.
SEQ_PER_VERSION = 16


class PricesProjection(ReadModel):
    """``billing.prices``: one row per price version."""

    name, table, key = "prices", "prices", ("version",)
    columns = {
        "version": "integer",
        "effective_from": "timestamptz",
        "prices": "jsonb",
        "published_by": "text",
        "published_at": "timestamptz",
    }

    @on(PricesPublished, key=lambda e: (e.version,))
    def published(self, row: Row | None, e: PricesPublished, rec: RecordedEvent) -> Row | None:
        return {
            "version": e.version,
            "effective_from": e.effective_from,
            "prices": e.prices.model_dump(mode="json"),
            "published_by": e.published_by,
            "published_at": e.at,
        }


class JobCostsProjection(ReadModel):
    """``billing.job_costs``: each job's money after its latest billing event."""

    name, table, key = "job_costs", "job_costs", ("job_id",)
    columns = {
        "job_id": "text",
        "owner_id": "text",
        "api_key_id": "text",
        "status": "text",
        "estimate": "jsonb",
        "estimate_low_credits": "numeric",
        "estimate_credits": "numeric",
        "estimate_high_credits": "numeric",
        "cap_credits": "numeric",
        "held_credits": "numeric",
        "so_far_credits": "numeric",
        "captured_credits": "numeric",
        "released_credits": "numeric",
        "awaiting_reason": "text",
        "lines": "integer",
        "version": "integer",
        "updated_at": "timestamptz",
    }

    @on(*JOB_COST_EVENTS, key=lambda e: (e.job_id,))
    def changed(self, row: Row | None, e: object, rec: RecordedEvent) -> Row | None:
        assert isinstance(e, JOB_COST_EVENTS)
        t = e.totals
        est = t.estimate
        api_key_id = e.api_key_id if isinstance(e, JobCostOpened) else (row or {}).get("api_key_id")
        return {
            "job_id": e.job_id,
            "owner_id": e.owner_id,
            "api_key_id": api_key_id,
            "status": t.status.value,
            "estimate": est.model_dump(mode="json") if est else None,
            "estimate_low_credits": est.low_credits if est else None,
            "estimate_credits": est.expected_credits if est else None,
            "estimate_high_credits": est.high_credits if est else None,
            "cap_credits": t.cap_credits,
            "held_credits": t.held_credits,
            "so_far_credits": t.so_far_credits,
            "captured_credits": t.captured_credits,
            "released_credits": t.released_credits,
            "awaiting_reason": t.awaiting_reason.value if t.awaiting_reason else None,
            "lines": t.lines,
            "version": rec.version,
            "updated_at": e.at,
        }

    @on(JobHoldRequested, key=lambda e: (e.job_id,))
    def hold_requested(
        self, row: Row | None, e: JobHoldRequested, rec: RecordedEvent
    ) -> Row | None:
        """Nothing a reader sees changes; the row's version keeps up with the stream."""
        return None if row is None else {**row, "version": rec.version}


def _line_row(job_id: str, line: CostLine, seq: int) -> Row:
    return {
        "job_id": job_id,
        "line_id": line.line_id,
        "seq": seq,
        "cause": line.cause.value,
        "render_id": line.render_id,
        "task_id": line.task_id,
        "frames": line.frames,
        "worker": line.worker,
        "instance_type": line.instance_type,
        "seconds": line.seconds,
        "price_per_hour_credits": line.price_per_hour_credits,
        "price_version": line.price_version,
        "amount_credits": line.amount_credits,
        "at": line.at,
        "work_factor": line.work_factor,
    }


class CostLinesProjection(ReadModel):
    """``billing.cost_lines``: every cost line of every job, ordered by ``seq``."""

    name, table, key = "cost_lines", "cost_lines", ("job_id", "line_id")
    columns = {
        "job_id": "text",
        "line_id": "text",
        "seq": "bigint",
        "cause": "text",
        "render_id": "text",
        "task_id": "integer",
        "frames": "jsonb",
        "worker": "text",
        "instance_type": "text",
        "seconds": "numeric",
        "price_per_hour_credits": "numeric",
        "price_version": "integer",
        "amount_credits": "numeric",
        "at": "timestamptz",
        "work_factor": "numeric",
    }

    @on(TaskCharged, key=lambda e: (e.job_id, e.line.line_id))
    def charged(self, row: Row | None, e: TaskCharged, rec: RecordedEvent) -> Row | None:
        return _line_row(e.job_id, e.line, rec.version * SEQ_PER_VERSION)

    @on(
        JobCostSettled,
        each=lambda e: {(e.job_id, ln.line_id): (i, ln) for i, ln in enumerate(e.adjustments)},
    )
    def adjusted(
        self, row: Row | None, e: JobCostSettled, rec: RecordedEvent, item: tuple[int, CostLine]
    ) -> Row | None:
        i, line = item
        return _line_row(e.job_id, line, rec.version * SEQ_PER_VERSION + i)


class KeySpendProjection(ReadModel):
    """``billing.key_spend``: each API key's caps and what it committed (today, in all)."""

    name, table, key = "key_spend", "key_spend", ("api_key_id",)
    columns = {
        "api_key_id": "text",
        "owner_id": "text",
        "daily_cap_credits": "numeric",
        "total_cap_credits": "numeric",
        "day": "date",
        "today_credits": "numeric",
        "total_credits": "numeric",
        "updated_at": "timestamptz",
    }

    @staticmethod
    def _row(row: Row | None, api_key_id: str) -> Row:
        return row or {
            "api_key_id": api_key_id,
            "owner_id": None,
            "daily_cap_credits": None,
            "total_cap_credits": None,
            "day": None,
            "today_credits": ZERO,
            "total_credits": ZERO,
        }

    @on(KeySpendCapsSet, key=lambda e: (e.api_key_id,))
    def caps_set(self, row: Row | None, e: KeySpendCapsSet, rec: RecordedEvent) -> Row | None:
        return {
            **self._row(row, e.api_key_id),
            "owner_id": e.owner_id,
            "daily_cap_credits": e.daily_cap_credits,
            "total_cap_credits": e.total_cap_credits,
            "updated_at": e.at,
        }

    @on(KeySpendCommitted, key=lambda e: (e.api_key_id,))
    def committed(self, row: Row | None, e: KeySpendCommitted, rec: RecordedEvent) -> Row | None:
        r = self._row(row, e.api_key_id)
        today = r["today_credits"] if r["day"] == e.day else ZERO
        return {
            **r,
            "day": e.day,
            "today_credits": today + e.amount,
            "total_credits": r["total_credits"] + e.amount,
            "updated_at": e.at,
        }

    @on(KeySpendReleased, key=lambda e: (e.api_key_id,))
    def released(self, row: Row | None, e: KeySpendReleased, rec: RecordedEvent) -> Row | None:
        r = self._row(row, e.api_key_id)
        return {**r, "total_credits": r["total_credits"] - e.amount, "updated_at": e.at}
