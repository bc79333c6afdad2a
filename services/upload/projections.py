"""Read models of the upload service.

The gateway reads them (read-only) only through ``libs/readmodels/uploads.py`` and
``libs/readmodels/scenes.py`` (ADR 0007). Tables: ``services/upload/migrations``.
"""

from __future__ import annotations

import asyncpg

from contracts.staging import (
    SceneStaged,
    SceneStagingCancelled,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingRequested,
    SceneStagingStarted,
    StagingStatus,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------


class StagingsProjection(ReadModel):
    """``upload.stagings``: one row per job's scene staging, for the stager (which to copy)
    and operators (what is staged where, reused or copied, and why one failed)."""

    name = "stagings"
    table = "stagings"
    key = ("job_id",)
    columns = {
        "job_id": "text",
        "owner_id": "text",
        "scene_id": "text",
        "content_sha256": "text",
        "staged_key": "text",
        "status": "text",
        "bytes_total": "bigint",
        "bytes_done": "bigint",
        "reused": "boolean",
        "failure_code": "text",
        "requested_at": "timestamptz",
        "updated_at": "timestamptz",
    }

    @on(SceneStagingRequested, key=lambda e: (e.job_id,))
    def requested(self, row: Row | None, e: SceneStagingRequested, rec: RecordedEvent) -> Row:
        return row or {
            "job_id": e.job_id,
            "owner_id": e.owner_id,
            "scene_id": e.scene.scene_id,
            "content_sha256": e.scene.content_sha256,
            "staged_key": e.staged_key,
            "status": StagingStatus.requested.value,
            "bytes_total": e.scene.size_bytes,
            "bytes_done": 0,
            "reused": None,
            "failure_code": None,
            "requested_at": e.at,
            "updated_at": rec.recorded_at,
        }

    @on(SceneStagingStarted, key=lambda e: (e.job_id,))
    def started(self, row: Row | None, e: SceneStagingStarted, rec: RecordedEvent) -> Row | None:
        return row and {
            **row,
            "status": StagingStatus.copying.value,
            "bytes_total": e.bytes_total,
            "updated_at": rec.recorded_at,
        }

    @on(SceneStagingProgressed, key=lambda e: (e.job_id,))
    def progressed(
        self, row: Row | None, e: SceneStagingProgressed, rec: RecordedEvent
    ) -> Row | None:
        return row and {**row, "bytes_done": e.bytes_done, "updated_at": rec.recorded_at}

    @on(SceneStaged, key=lambda e: (e.job_id,))
    def staged(self, row: Row | None, e: SceneStaged, rec: RecordedEvent) -> Row | None:
        return row and {
            **row,
            "status": StagingStatus.staged.value,
            "bytes_done": row["bytes_total"],
            "reused": e.reused,
            "updated_at": rec.recorded_at,
        }

    @on(SceneStagingFailed, key=lambda e: (e.job_id,))
    def failed(self, row: Row | None, e: SceneStagingFailed, rec: RecordedEvent) -> Row | None:
        return row and {
            **row,
            "status": StagingStatus.failed.value,
            "failure_code": e.code,
            "updated_at": rec.recorded_at,
        }

    @on(SceneStagingCancelled, key=lambda e: (e.job_id,))
    def cancelled(
        self, row: Row | None, e: SceneStagingCancelled, rec: RecordedEvent
    ) -> Row | None:
        return row and {
            **row,
            "status": StagingStatus.cancelled.value,
            "updated_at": rec.recorded_at,
        }


async def pending_stagings(conn: asyncpg.Connection, schema: str, limit: int) -> list[str]:
    """Jobs whose staging is not over (asked for, or copying when a stager stopped), oldest
    first."""
    rows = await conn.fetch(
        f"SELECT job_id FROM {schema}.stagings WHERE status IN ('requested', 'copying')"
        " ORDER BY requested_at LIMIT $1",
        limit,
    )
    return [r["job_id"] for r in rows]


# --- outputs ------------------------------------------------------------------------------
