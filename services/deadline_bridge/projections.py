"""Read models of the deadline-bridge."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from contracts.base import EVENTS
from contracts.render import (
    RenderCancelled,
    RenderCompleted,
    RenderFailed,
    RenderOrdered,
    RenderStatus,
    RenderSubmitted,
    RenderTaskCompleted,
)
from libs.eventstore.processor import Projection
from libs.eventstore.store import RecordedEvent

_FINAL = {
    RenderCompleted.event_type: RenderStatus.completed,
    RenderFailed.event_type: RenderStatus.failed,
    RenderCancelled.event_type: RenderStatus.cancelled,
}


class RendersProjection(Projection):
    """``bridge.renders``: one row per render, for the poller (which renders to watch)
    and for operators (what is on the farm under which id)."""

    name = "renders"
    tables = ("renders",)
    types = tuple(t for t in EVENTS.types() if t.startswith("render."))

    async def setup(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS bridge.renders (
                render_id text PRIMARY KEY,
                job_id text NOT NULL,
                status text NOT NULL,
                farm_job_id text,
                task_count integer NOT NULL DEFAULT 0,
                tasks_completed integer NOT NULL DEFAULT 0,
                updated_at timestamptz NOT NULL
            );
            CREATE INDEX IF NOT EXISTS renders_by_status ON bridge.renders (status, render_id);
            CREATE INDEX IF NOT EXISTS renders_by_job ON bridge.renders (job_id);
            """
        )

    async def apply(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        for rec in events:
            e = rec.decode()
            at: datetime = rec.recorded_at
            match e:
                case RenderOrdered():
                    await conn.execute(
                        "INSERT INTO bridge.renders (render_id, job_id, status, updated_at)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (render_id) DO NOTHING",
                        e.render_id,
                        e.job_id,
                        RenderStatus.ordered.value,
                        at,
                    )
                case RenderSubmitted():
                    await conn.execute(
                        "UPDATE bridge.renders SET status = $2, farm_job_id = $3,"
                        " task_count = $4, updated_at = $5 WHERE render_id = $1",
                        e.render_id,
                        RenderStatus.submitted.value,
                        e.farm_job_id,
                        e.task_count,
                        at,
                    )
                case RenderTaskCompleted():
                    await conn.execute(
                        "UPDATE bridge.renders SET tasks_completed = tasks_completed + 1,"
                        " updated_at = $2 WHERE render_id = $1",
                        e.render_id,
                        at,
                    )
                case RenderCompleted() | RenderFailed() | RenderCancelled():
                    status = _FINAL[e.event_type]
                    await conn.execute(
                        "UPDATE bridge.renders SET status = $2, updated_at = $3"
                        " WHERE render_id = $1",
                        e.render_id,
                        status.value,
                        at,
                    )
                case _:
                    pass  # task starts, failures and requeues do not change this row


async def active_renders(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(render id, farm job id) of every render the farm is working on."""
    rows = await conn.fetch(
        "SELECT render_id, farm_job_id FROM bridge.renders WHERE status = $1 ORDER BY render_id",
        RenderStatus.submitted.value,
    )
    return [(r["render_id"], r["farm_job_id"]) for r in rows]
