"""Queries on the upload service's read models for the scene a job renders:
``<schema>.uploads`` (a scene file) and ``<schema>.manifests`` (a folder of files).

Owned by the upload service (``services/upload``). A change to the columns these queries
read, in its projections or migrations, comes with the matching change here in the same
commit; ``tests/contracts/test_scene_queries.py`` pins the contract.

Read of ``uploads``: ``upload_id, owner_id, kind, status, file_name, size_bytes, sha256,
bucket, object_key``; of ``manifests``: ``manifest_id, owner_id, status, main_file,
file_count, total_bytes, content_sha256``. Any other column is the upload service's own
business.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from contracts.staging import SceneKind, SceneRef
from libs.readmodels import check_schema

#: The schema the upload service owns (its ``Service.schema``).
SCHEMA = "upload"
#: The status of a scene that can be rendered: a completed upload, a complete manifest.
READY_STATUSES = frozenset({"completed", "complete"})


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
        return self.status in READY_STATUSES

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
