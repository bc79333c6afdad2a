"""The scheduler's state: which render each job has and how it stands.

Kept from the events the scheduler consumes, in the same transaction that marks each
event handled (the inbox), so every event changes it exactly once. Its table comes from
``services/scheduler/migrations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts.render import RenderStatus


@dataclass(frozen=True)
class RenderRow:
    job_id: str
    render_id: str
    status: RenderStatus
    farm_job_id: str | None


async def render_of(conn: asyncpg.Connection, job_id: str) -> RenderRow | None:
    row = await conn.fetchrow(
        "SELECT job_id, render_id, status, farm_job_id FROM scheduler.renders WHERE job_id = $1",
        job_id,
    )
    if row is None:
        return None
    return RenderRow(
        row["job_id"], row["render_id"], RenderStatus(row["status"]), row["farm_job_id"]
    )


async def record_render(
    conn: asyncpg.Connection,
    job_id: str,
    render_id: str,
    status: RenderStatus,
    farm_job_id: str | None,
    at: datetime,
) -> None:
    await conn.execute(
        """
        INSERT INTO scheduler.renders (job_id, render_id, status, farm_job_id, updated_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (job_id) DO UPDATE SET render_id = EXCLUDED.render_id,
            status = EXCLUDED.status,
            farm_job_id = COALESCE(EXCLUDED.farm_job_id, scheduler.renders.farm_job_id),
            updated_at = EXCLUDED.updated_at
        """,
        job_id,
        render_id,
        status.value,
        farm_job_id,
        at,
    )


async def set_status(
    conn: asyncpg.Connection, job_id: str, status: RenderStatus, at: datetime
) -> None:
    await conn.execute(
        "UPDATE scheduler.renders SET status = $2, updated_at = $3 WHERE job_id = $1",
        job_id,
        status.value,
        at,
    )
