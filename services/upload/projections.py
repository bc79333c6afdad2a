"""Read models of the upload service.

The gateway reads them (read-only) only through ``libs/readmodels/uploads.py``,
``libs/readmodels/scenes.py`` and ``libs/readmodels/outputs.py`` (ADR 0007). Tables:
``services/upload/migrations``.
"""

from __future__ import annotations

from contracts.outputs import (
    OutputArchiveFailed,
    OutputArchiveRequested,
    OutputArchiveStored,
    OutputKind,
    OutputsDeleted,
    OutputsRecorded,
    OutputsRetained,
    OutputStatus,
    StoredFrame,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

# --- upload sessions and manifests -------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------


class OutputsProjection(ReadModel):
    """``upload.outputs``: one row per output of a job (a rendered frame, or the archive),
    with where it is, its size and SHA-256, and how long it is kept. Deleted outputs keep
    their row (status ``deleted``), so a job's list shows what was there."""

    name = "outputs"
    table = "outputs"
    key = ("output_id",)
    columns = {
        "output_id": "text",
        "job_id": "text",
        "owner_id": "text",
        "kind": "text",
        "frame": "integer",
        "render_kind": "text",
        "status": "text",
        "bucket": "text",
        "object_key": "text",
        "file_name": "text",
        "size_bytes": "bigint",
        "sha256": "text",
        "stored_at": "timestamptz",
        "expires_at": "timestamptz",
        "deleted_at": "timestamptz",
    }

    @on(OutputsRecorded, each=lambda e: {(o.output_id,): o for o in e.outputs})
    def recorded(
        self, row: Row | None, e: OutputsRecorded, rec: RecordedEvent, o: StoredFrame
    ) -> Row | None:
        return {
            "output_id": o.output_id,
            "job_id": e.job_id,
            "owner_id": e.owner_id,
            "kind": OutputKind.frame.value,
            "frame": o.frame,
            "render_kind": e.render_kind.value,
            "status": OutputStatus.ready.value,
            "bucket": e.bucket,
            "object_key": o.object_key,
            "file_name": o.file_name,
            "size_bytes": o.size_bytes,
            "sha256": o.sha256,
            "stored_at": e.at,
            "expires_at": e.expires_at,
            "deleted_at": None,
        }

    @on(OutputsRetained, each=lambda e: {(i,): i for i in e.output_ids})
    def retained(
        self, row: Row | None, e: OutputsRetained, rec: RecordedEvent, output_id: str
    ) -> Row | None:
        return row and {**row, "expires_at": e.expires_at}

    @on(OutputArchiveRequested, key=lambda e: (e.output_id,))
    def archive_requested(
        self, row: Row | None, e: OutputArchiveRequested, rec: RecordedEvent
    ) -> Row | None:
        return {
            "output_id": e.output_id,
            "job_id": e.job_id,
            "owner_id": e.owner_id,
            "kind": OutputKind.archive.value,
            "frame": None,
            "render_kind": None,
            "status": OutputStatus.building.value,
            "bucket": e.bucket,
            "object_key": e.object_key,
            "file_name": e.file_name,
            "size_bytes": None,
            "sha256": None,
            "stored_at": None,
            "expires_at": e.expires_at,
            "deleted_at": None,
        }

    @on(OutputArchiveStored, key=lambda e: (e.output_id,))
    def archive_stored(
        self, row: Row | None, e: OutputArchiveStored, rec: RecordedEvent
    ) -> Row | None:
        return row and {
            **row,
            "status": OutputStatus.ready.value,
            "size_bytes": e.size_bytes,
            "sha256": e.sha256,
            "stored_at": e.at,
        }

    @on(OutputArchiveFailed, key=lambda e: (e.output_id,))
    def archive_failed(
        self, row: Row | None, e: OutputArchiveFailed, rec: RecordedEvent
    ) -> Row | None:
        return row and {**row, "status": OutputStatus.failed.value}

    @on(OutputsDeleted, each=lambda e: {(i,): i for i in e.output_ids})
    def deleted(
        self, row: Row | None, e: OutputsDeleted, rec: RecordedEvent, output_id: str
    ) -> Row | None:
        return row and {**row, "status": OutputStatus.deleted.value, "deleted_at": e.at}
