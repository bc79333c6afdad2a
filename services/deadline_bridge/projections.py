"""Read models of the deadline-bridge (tables: ``services/deadline_bridge/migrations``)."""

from __future__ import annotations

import asyncpg

from contracts.render import (
    RenderCancelled,
    RenderCompleted,
    RenderFailed,
    RenderOrdered,
    RenderResumed,
    RenderStatus,
    RenderSubmitted,
    RenderSuspended,
    RenderTaskCompleted,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

#: Statuses of a render the farm has (the poller watches these).
ON_FARM = frozenset({RenderStatus.submitted.value, RenderStatus.suspended.value})
_FINAL = {
    RenderCompleted.event_type: RenderStatus.completed,
    RenderFailed.event_type: RenderStatus.failed,
    RenderCancelled.event_type: RenderStatus.cancelled,
}


class RendersProjection(ReadModel):
    """``bridge.renders``: one row per render, for the poller (which renders to watch)
    and for operators (what is on the farm under which id).

    Task starts, failures and requeues do not change the row, so it does not read them.
    """

    name = "renders"
    table = "renders"
    key = ("render_id",)
    columns = {
        "render_id": "text",
        "job_id": "text",
        "status": "text",
        "farm_job_id": "text",
        "task_count": "integer",
        "tasks_completed": "integer",
        "updated_at": "timestamptz",
    }

    @on(RenderOrdered, key=lambda e: (e.render_id,))
    def ordered(self, row: Row | None, e: RenderOrdered, rec: RecordedEvent) -> Row | None:
        if row is not None:
            return row
        return {
            "render_id": e.render_id,
            "job_id": e.job_id,
            "status": RenderStatus.ordered.value,
            "farm_job_id": None,
            "task_count": 0,
            "tasks_completed": 0,
            "updated_at": rec.recorded_at,
        }

    @on(RenderSubmitted, key=lambda e: (e.render_id,))
    def submitted(self, row: Row | None, e: RenderSubmitted, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        return {
            **row,
            "status": RenderStatus.submitted.value,
            "farm_job_id": e.farm_job_id,
            "task_count": e.task_count,
            "updated_at": rec.recorded_at,
        }

    @on(RenderSuspended, RenderResumed, key=lambda e: (e.render_id,))
    def suspended(
        self, row: Row | None, e: RenderSuspended | RenderResumed, rec: RecordedEvent
    ) -> Row | None:
        if row is None or row["status"] not in ON_FARM:
            return row  # a render that ended keeps its end
        status = (
            RenderStatus.suspended if isinstance(e, RenderSuspended) else RenderStatus.submitted
        )
        return {**row, "status": status.value, "updated_at": rec.recorded_at}

    @on(RenderTaskCompleted, key=lambda e: (e.render_id,))
    def task_completed(
        self, row: Row | None, e: RenderTaskCompleted, rec: RecordedEvent
    ) -> Row | None:
        if row is None:
            return None
        return {**row, "tasks_completed": row["tasks_completed"] + 1, "updated_at": rec.recorded_at}

    @on(RenderCompleted, RenderFailed, RenderCancelled, key=lambda e: (e.render_id,))
    def ended(
        self,
        row: Row | None,
        e: RenderCompleted | RenderFailed | RenderCancelled,
        rec: RecordedEvent,
    ) -> Row | None:
        if row is None:
            return None
        return {**row, "status": _FINAL[e.event_type].value, "updated_at": rec.recorded_at}


async def active_renders(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(render id, farm job id) of every render the farm has, working on it or suspended."""
    rows = await conn.fetch(
        "SELECT render_id, farm_job_id FROM bridge.renders WHERE status = ANY($1::text[])"
        " ORDER BY render_id",
        sorted(ON_FARM),
    )
    return [(r["render_id"], r["farm_job_id"]) for r in rows]
