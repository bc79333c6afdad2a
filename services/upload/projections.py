"""Read models of the upload service.

The gateway reads them (read-only) only through ``libs/readmodels/uploads.py``,
``libs/readmodels/scenes.py`` and ``libs/readmodels/outputs.py`` (ADR 0007). Tables:
``services/upload/migrations``.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

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
from contracts.staging import (
    AssetStaged,
    AssetStagingFailed,
    AssetUnstaged,
    SceneStaged,
    SceneStagingCancelled,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingRequested,
    SceneStagingStarted,
    StagingStatus,
)
from contracts.uploads import (
    AssetStored,
    ManifestCompleted,
    ManifestFilesListed,
    ManifestStatus,
    ManifestSubmitted,
    UploadAborted,
    UploadCompleted,
    UploadCompletionFailed,
    UploadCompletionRequested,
    UploadExpired,
    UploadPartsConfirmed,
    UploadStarted,
    UploadStatus,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent

# --- upload sessions and manifests -------------------------------------------------------


class UploadsProjection(ReadModel):
    """``upload.uploads``: one row per upload session, its plan and its progress."""

    name = "uploads"
    table = "uploads"
    key = ("upload_id",)
    columns = {
        "upload_id": "text",
        "owner_id": "text",
        "kind": "text",
        "status": "text",
        "file_name": "text",
        "size_bytes": "bigint",
        "sha256": "text",
        "content_type": "text",
        "bucket": "text",
        "object_key": "text",
        "part_size_bytes": "bigint",
        "part_count": "integer",
        "parts_confirmed": "integer",
        "bytes_confirmed": "bigint",
        "created_at": "timestamptz",
        "updated_at": "timestamptz",
        "expires_at": "timestamptz",
        "completed_at": "timestamptz",
        "version": "integer",
    }

    @on(UploadStarted, key=lambda e: (e.upload_id,))
    def started(self, row: Row | None, e: UploadStarted, rec: RecordedEvent) -> Row | None:
        return {
            "upload_id": e.upload_id,
            "owner_id": e.owner_id,
            "kind": e.kind.value,
            "status": UploadStatus.uploading.value,
            "file_name": e.file_name,
            "size_bytes": e.size_bytes,
            "sha256": e.sha256,
            "content_type": e.content_type,
            "bucket": e.bucket,
            "object_key": e.object_key,
            "part_size_bytes": e.part_size_bytes,
            "part_count": e.part_count,
            "parts_confirmed": 0,
            "bytes_confirmed": 0,
            "created_at": e.started_at,
            "updated_at": rec.recorded_at,
            "expires_at": e.expires_at,
            "completed_at": None,
            "version": rec.version,
        }

    @staticmethod
    def _moved(row: Row | None, rec: RecordedEvent, **changes: object) -> Row:
        if row is None:
            raise LookupError(f"{rec.event_type} for an upload with no UploadStarted")
        return {**row, **changes, "updated_at": rec.recorded_at, "version": rec.version}

    @on(UploadPartsConfirmed, key=lambda e: (e.upload_id,))
    def confirmed(self, row: Row | None, e: UploadPartsConfirmed, rec: RecordedEvent) -> Row:
        return self._moved(
            row, rec, parts_confirmed=e.parts_confirmed, bytes_confirmed=e.bytes_confirmed
        )

    @on(UploadCompletionRequested, key=lambda e: (e.upload_id,))
    def completing(self, row: Row | None, e: UploadCompletionRequested, rec: RecordedEvent) -> Row:
        # Every part was found in the store with its size.
        moved = self._moved(row, rec, status=UploadStatus.completing.value)
        return {
            **moved,
            "parts_confirmed": moved["part_count"],
            "bytes_confirmed": moved["size_bytes"],
        }

    @on(UploadCompletionFailed, key=lambda e: (e.upload_id,))
    def reopened(self, row: Row | None, e: UploadCompletionFailed, rec: RecordedEvent) -> Row:
        return self._moved(row, rec, status=UploadStatus.uploading.value)

    @on(UploadCompleted, key=lambda e: (e.upload_id,))
    def completed(self, row: Row | None, e: UploadCompleted, rec: RecordedEvent) -> Row:
        moved = self._moved(row, rec, status=UploadStatus.completed.value, completed_at=e.at)
        return {**moved, "parts_confirmed": moved["part_count"], "bytes_confirmed": e.size_bytes}

    @on(UploadAborted, key=lambda e: (e.upload_id,))
    def aborted(self, row: Row | None, e: UploadAborted, rec: RecordedEvent) -> Row:
        return self._moved(row, rec, status=UploadStatus.aborted.value)

    @on(UploadExpired, key=lambda e: (e.upload_id,))
    def expired(self, row: Row | None, e: UploadExpired, rec: RecordedEvent) -> Row:
        return self._moved(row, rec, status=UploadStatus.expired.value)


class AssetsProjection(ReadModel):
    """``upload.assets``: the contents each user holds (per user, never shared), and each
    one's staging as uploaded (``prestage_status`` ``pending``, ``staged``, ``failed`` or
    ``removed``: the pre-stager's to-do list and its retention sweep)."""

    name = "assets"
    table = "assets"
    key = ("owner_id", "sha256")
    columns = {
        "owner_id": "text",
        "sha256": "text",
        "size_bytes": "bigint",
        "bucket": "text",
        "object_key": "text",
        "upload_id": "text",
        "stored_at": "timestamptz",
        "prestage_status": "text",
        "staged_at": "timestamptz",
        "prestage_failure_code": "text",
    }

    @on(AssetStored, key=lambda e: (e.owner_id, e.sha256))
    def stored(self, row: Row | None, e: AssetStored, rec: RecordedEvent) -> Row:
        return {
            "owner_id": e.owner_id,
            "sha256": e.sha256,
            "size_bytes": e.size_bytes,
            "bucket": e.bucket,
            "object_key": e.object_key,
            "upload_id": e.upload_id,
            "stored_at": e.at,
            "prestage_status": "pending",
            "staged_at": None,
            "prestage_failure_code": None,
        }

    @on(AssetStaged, key=lambda e: (e.owner_id, e.sha256))
    def staged(self, row: Row | None, e: AssetStaged, rec: RecordedEvent) -> Row | None:
        return row and {**row, "prestage_status": "staged", "staged_at": e.at}

    @on(AssetStagingFailed, key=lambda e: (e.owner_id, e.sha256))
    def stage_failed(
        self, row: Row | None, e: AssetStagingFailed, rec: RecordedEvent
    ) -> Row | None:
        return row and {**row, "prestage_status": "failed", "prestage_failure_code": e.code}

    @on(AssetUnstaged, key=lambda e: (e.owner_id, e.sha256))
    def unstaged(self, row: Row | None, e: AssetUnstaged, rec: RecordedEvent) -> Row | None:
        return row and {**row, "prestage_status": "removed"}


class ManifestsProjection(ReadModel):
    """``upload.manifests``: one row per manifest with its files, sorted by path."""

    name = "manifests"
    table = "manifests"
    key = ("manifest_id",)
    columns = {
        "manifest_id": "text",
        "owner_id": "text",
        "status": "text",
        "main_file": "text",
        "file_count": "integer",
        "total_bytes": "bigint",
        "content_sha256": "text",
        "files": "jsonb",
        "created_at": "timestamptz",
        "updated_at": "timestamptz",
        "completed_at": "timestamptz",
        "version": "integer",
    }

    @on(ManifestSubmitted, key=lambda e: (e.manifest_id,))
    def submitted(self, row: Row | None, e: ManifestSubmitted, rec: RecordedEvent) -> Row:
        return {
            "manifest_id": e.manifest_id,
            "owner_id": e.owner_id,
            "status": ManifestStatus.waiting_for_files.value,
            "main_file": e.main_file,
            "file_count": e.file_count,
            "total_bytes": e.total_bytes,
            "content_sha256": e.content_sha256,
            "files": [],
            "created_at": e.submitted_at,
            "updated_at": rec.recorded_at,
            "completed_at": None,
            "version": rec.version,
        }

    @staticmethod
    def _moved(row: Row | None, rec: RecordedEvent, **changes: object) -> Row:
        if row is None:
            raise LookupError(f"{rec.event_type} for a manifest with no ManifestSubmitted")
        return {**row, **changes, "updated_at": rec.recorded_at, "version": rec.version}

    @on(ManifestFilesListed, key=lambda e: (e.manifest_id,))
    def listed(self, row: Row | None, e: ManifestFilesListed, rec: RecordedEvent) -> Row:
        files = [f.model_dump() for f in e.files]
        return self._moved(row, rec, files=[*(row or {}).get("files", []), *files])

    @on(ManifestCompleted, key=lambda e: (e.manifest_id,))
    def completed(self, row: Row | None, e: ManifestCompleted, rec: RecordedEvent) -> Row:
        return self._moved(row, rec, status=ManifestStatus.complete.value, completed_at=e.at)


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


async def stored_contents(
    conn: asyncpg.Connection, schema: str, owner_id: str, sha256s: list[str]
) -> dict[str, tuple[str, str]]:
    """Of ``sha256s``, the contents ``owner_id`` holds: sha256 -> (bucket, object key)."""
    rows = await conn.fetch(
        f"SELECT sha256, bucket, object_key FROM {schema}.assets"
        " WHERE owner_id = $1 AND sha256 = ANY($2::text[])",
        owner_id,
        sha256s,
    )
    return {r["sha256"]: (r["bucket"], r["object_key"]) for r in rows}


async def contents_uploading(
    conn: asyncpg.Connection, schema: str, owner_id: str, sha256s: list[str]
) -> set[str]:
    """Of ``sha256s``, the contents with an open upload session of ``owner_id``."""
    rows = await conn.fetch(
        f"SELECT DISTINCT sha256 FROM {schema}.uploads WHERE owner_id = $1 AND kind = 'asset'"
        " AND status IN ('uploading', 'completing') AND sha256 = ANY($2::text[])",
        owner_id,
        sha256s,
    )
    return {r["sha256"] for r in rows}


async def last_upload_status(
    conn: asyncpg.Connection, schema: str, owner_id: str, sha256: str
) -> str | None:
    """How the latest upload session of a content ended (None: it never had one)."""
    status: str | None = await conn.fetchval(
        f"SELECT status FROM {schema}.uploads WHERE owner_id = $1 AND kind = 'asset'"
        " AND sha256 = $2 ORDER BY created_at DESC, upload_id DESC LIMIT 1",
        owner_id,
        sha256,
    )
    return status


async def pending_prestages(
    conn: asyncpg.Connection, schema: str, stored_after: datetime, limit: int
) -> list[asyncpg.Record]:
    """Assets stored after ``stored_after`` whose content is not staged yet, oldest first
    (a manifest's files in the order they were uploaded)."""
    return list(
        await conn.fetch(
            f"SELECT owner_id, sha256, size_bytes, bucket, object_key FROM {schema}.assets"
            " WHERE prestage_status = 'pending' AND stored_at > $1 ORDER BY stored_at LIMIT $2",
            stored_after,
            limit,
        )
    )


async def expired_prestages(
    conn: asyncpg.Connection, schema: str, staged_before: datetime, limit: int
) -> list[tuple[str, str]]:
    """(owner, sha256) of contents staged as uploaded before ``staged_before``."""
    rows = await conn.fetch(
        f"SELECT owner_id, sha256 FROM {schema}.assets"
        " WHERE prestage_status = 'staged' AND staged_at < $1 ORDER BY staged_at LIMIT $2",
        staged_before,
        limit,
    )
    return [(r["owner_id"], r["sha256"]) for r in rows]


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
