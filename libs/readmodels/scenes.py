"""Queries on the upload service's read models for the scene a job renders:
``<schema>.uploads`` (a scene file) and ``<schema>.manifests`` (a folder of files).

Owned by the upload service (``services/upload``). A change to the columns these queries
read, in its projections or migrations, comes with the matching change here in the same
commit; ``tests/contracts/test_scene_queries.py`` pins the contract.

Read of ``uploads``: ``upload_id, owner_id, kind, status, file_name, size_bytes, sha256,
bucket, object_key, created_at``; of ``manifests``: ``manifest_id, owner_id, status,
main_file, file_count, total_bytes, content_sha256, files`` (each file's ``path`` and
``sha256``); of ``assets``: ``owner_id, sha256``. Any other column is the upload service's
own business.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from contracts.staging import SceneKind, SceneRef
from libs.readmodels import check_schema

#: The schema the upload service owns (its ``Service.schema``).
SCHEMA = "upload"
#: The status of a scene that can be rendered: a completed upload, a complete manifest, or
#: a manifest still waiting for files (its staging waits for each one's upload).
READY_STATUSES = frozenset({"completed", "complete"})
RENDERABLE_STATUSES = READY_STATUSES | {"waiting_for_files"}
#: How an upload session ends without its file.
ENDED_UPLOAD_STATUSES = ("aborted", "expired")


@dataclass(frozen=True, slots=True)
class EndedFile:
    """A file of a manifest that is not uploaded and whose last upload session ended."""

    path: str
    sha256: str
    status: str


@dataclass(frozen=True, slots=True)
class StoredScene:
    """An upload or a manifest, as far as rendering it is concerned."""

    scene_id: str
    kind: SceneKind
    #: An upload's ``uploading | completed | aborted | expired``, a manifest's
    #: ``waiting_for_files | complete``.
    status: str
    #: An upload's ``scene | asset``; None for a manifest.
    upload_kind: str | None
    main_file: str
    file_count: int
    size_bytes: int
    content_sha256: str
    bucket: str | None
    object_key: str | None

    @property
    def ready(self) -> bool:
        """Complete: every file is uploaded."""
        return self.status in READY_STATUSES

    @property
    def renderable(self) -> bool:
        """A job can be created on it: complete, or a manifest still waiting for files."""
        renderable = RENDERABLE_STATUSES if self.kind is SceneKind.manifest else READY_STATUSES
        return self.status in renderable

    def ref(self) -> SceneRef:
        return SceneRef(
            scene_id=self.scene_id,
            kind=self.kind,
            main_file=self.main_file,
            file_count=self.file_count,
            size_bytes=self.size_bytes,
            content_sha256=self.content_sha256,
            bucket=self.bucket,
            object_key=self.object_key,
        )


class ScenesQuery:
    """Read-only access to the uploads and manifests a job can render."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self._upload_sql = (
            "SELECT upload_id, status, kind, file_name, size_bytes, sha256, bucket, object_key"
            f" FROM {s}.uploads WHERE upload_id = $1 AND owner_id = $2"
        )
        self._manifest_sql = (
            "SELECT manifest_id, status, main_file, file_count, total_bytes, content_sha256"
            f" FROM {s}.manifests WHERE manifest_id = $1 AND owner_id = $2"
        )
        # A file not held whose latest session ended: the manifest can never be complete
        # (unless it is submitted again). A file with no session row yet is not judged here:
        # the row may be on its way to the read model; the job's staging judges it then.
        self._ended_sql = (
            "SELECT f->>'path' AS path, f->>'sha256' AS sha256, last.status"
            f" FROM {s}.manifests m CROSS JOIN LATERAL jsonb_array_elements(m.files) f"
            " CROSS JOIN LATERAL ("
            f"   SELECT u.status FROM {s}.uploads u WHERE u.owner_id = m.owner_id"
            "    AND u.kind = 'asset' AND u.sha256 = f->>'sha256'"
            "    ORDER BY u.created_at DESC, u.upload_id DESC LIMIT 1) last"
            " WHERE m.manifest_id = $1 AND m.owner_id = $2 AND last.status = ANY($3::text[])"
            f" AND NOT EXISTS (SELECT 1 FROM {s}.assets a"
            "   WHERE a.owner_id = m.owner_id AND a.sha256 = f->>'sha256')"
            " ORDER BY f->>'path' LIMIT 1"
        )

    async def scene(self, scene_id: str, owner_id: str) -> StoredScene | None:
        """The upload (``upl_...``) or manifest (``man_...``) if it is ``owner_id``'s;
        another user's is None, as a missing one."""
        if scene_id.startswith("upl_"):
            row = await self.pool.fetchrow(self._upload_sql, scene_id, owner_id)
            if row is None:
                return None
            return StoredScene(
                scene_id=row["upload_id"],
                kind=SceneKind.upload,
                status=row["status"],
                upload_kind=row["kind"],
                main_file=row["file_name"],
                file_count=1,
                size_bytes=row["size_bytes"],
                content_sha256=row["sha256"],
                bucket=row["bucket"],
                object_key=row["object_key"],
            )
        if scene_id.startswith("man_"):
            row = await self.pool.fetchrow(self._manifest_sql, scene_id, owner_id)
            if row is None:
                return None
            return StoredScene(
                scene_id=row["manifest_id"],
                kind=SceneKind.manifest,
                status=row["status"],
                upload_kind=None,
                main_file=row["main_file"],
                file_count=row["file_count"],
                size_bytes=row["total_bytes"],
                content_sha256=row["content_sha256"],
                bucket=None,
                object_key=None,
            )
        return None

    async def ended_file(self, manifest_id: str, owner_id: str) -> EndedFile | None:
        """A file of the manifest that is not uploaded and whose last upload session was
        aborted or expired (the first by path), or None."""
        row = await self.pool.fetchrow(
            self._ended_sql, manifest_id, owner_id, list(ENDED_UPLOAD_STATUSES)
        )
        if row is None:
            return None
        return EndedFile(path=row["path"], sha256=row["sha256"], status=row["status"])
