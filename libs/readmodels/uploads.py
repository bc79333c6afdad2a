"""Queries on the upload service's sessions and manifests: ``<schema>.uploads``,
``<schema>.manifests`` and ``<schema>.assets``.

Owned by the upload service (``services/upload``). A change to the columns these queries
read, in ``services/upload/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_upload_queries.py`` pins the contract.

Every query takes the caller's user id: another user's session or manifest is None, exactly
like a missing one, and a manifest's files count as present only if its owner holds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from contracts.uploads import (
    ListedFile,
    ManifestStatus,
    ManifestView,
    MissingFile,
    UploadAction,
    UploadKind,
    UploadStatus,
    UploadView,
)
from libs.readmodels import check_schema

#: The schema the upload service owns (its ``Service.schema``).
SCHEMA = "upload"

V = TypeVar("V", UploadView, ManifestView)

_UPLOAD_COLUMNS = (
    "upload_id, kind, status, file_name, size_bytes, sha256, content_type, part_size_bytes,"
    " part_count, parts_confirmed, bytes_confirmed, created_at, updated_at, expires_at,"
    " completed_at, version"
)
#: What a client may do with an open session.
OPEN_ACTIONS = [
    UploadAction.create_upload_part_urls,
    UploadAction.complete_upload,
    UploadAction.abort_upload,
]


def upload_view(r: asyncpg.Record) -> UploadView:
    status = UploadStatus(r["status"])
    size, done = r["size_bytes"], r["bytes_confirmed"]
    return UploadView(
        upload_id=r["upload_id"],
        kind=UploadKind(r["kind"]),
        status=status,
        file_name=r["file_name"],
        size_bytes=size,
        sha256=r["sha256"],
        content_type=r["content_type"],
        part_size_bytes=r["part_size_bytes"],
        part_count=r["part_count"],
        parts_confirmed=r["parts_confirmed"],
        bytes_confirmed=done,
        progress_percent=round(100 * done / size, 2),
        allowed_actions=OPEN_ACTIONS if status is UploadStatus.uploading else [],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        expires_at=r["expires_at"],
        completed_at=r["completed_at"],
        version=r["version"],
    )


class UploadsQuery:
    """Read-only access to the upload service's session and manifest read models."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self.schema = s
        self._upload_sql = (
            f"SELECT {_UPLOAD_COLUMNS} FROM {s}.uploads WHERE upload_id = $1 AND owner_id = $2"
        )
        self._list_sql = (
            f"SELECT {_UPLOAD_COLUMNS} FROM {s}.uploads WHERE owner_id = $1"
            " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR upload_id < $3)"
            " ORDER BY upload_id DESC LIMIT $4"
        )
        self._manifest_sql = (
            "SELECT manifest_id, status, main_file, file_count, total_bytes, content_sha256,"
            f" files, created_at, completed_at, version FROM {s}.manifests"
            " WHERE manifest_id = $1 AND owner_id = $2"
        )
        self._held_sql = (
            f"SELECT sha256 FROM {s}.assets WHERE owner_id = $1 AND sha256 = ANY($2::text[])"
        )
        self._known_sql = f"SELECT upload_id FROM {s}.uploads WHERE upload_id = ANY($1::text[])"
        self._uploading_sql = (
            f"SELECT DISTINCT ON (sha256) sha256, upload_id FROM {s}.uploads"
            " WHERE owner_id = $1 AND kind = 'asset' AND status IN ('uploading', 'completing')"
            " AND sha256 = ANY($2::text[]) ORDER BY sha256, upload_id DESC"
        )

    async def upload(self, upload_id: str, owner_id: str) -> UploadView | None:
        """The caller's upload session, or None (missing, or another user's)."""
        row = await self.pool.fetchrow(self._upload_sql, upload_id, owner_id)
        return None if row is None else upload_view(row)

    async def wait_for_upload(
        self, upload_id: str, owner_id: str, min_version: int, wait_seconds: float
    ) -> UploadView | None:
        """The session once its view reflects at least ``min_version`` (read-your-writes),
        polling for up to ``wait_seconds``; then the last one seen, which may be older."""
        return await _wait(lambda: self.upload(upload_id, owner_id), min_version, wait_seconds)

    async def wait_until_settled(
        self, upload_id: str, owner_id: str, wait_seconds: float
    ) -> UploadView | None:
        """The session once it is no longer ``completing`` (the store has joined its parts,
        or refused to) and, for a completed asset, once its owner's contents show it (the
        manifest read next counts it present), polling for up to ``wait_seconds``; then as
        it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            found = await self.upload(upload_id, owner_id)
            settled = found is None or found.status is not UploadStatus.completing
            if settled and found is not None and _an_asset_stored(found):
                held = await self.pool.fetch(self._held_sql, owner_id, [found.sha256])
                settled = bool(held)
            if settled or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.05)

    async def uploads(
        self, owner_id: str, status: UploadStatus | None, before_upload_id: str | None, limit: int
    ) -> list[UploadView]:
        """The caller's sessions newest first (ids sort by creation time), optionally of one
        status, starting after ``before_upload_id``."""
        rows = await self.pool.fetch(
            self._list_sql, owner_id, status.value if status else None, before_upload_id, limit
        )
        return [upload_view(r) for r in rows]

    async def manifest(self, manifest_id: str, owner_id: str) -> ManifestView | None:
        """The caller's manifest with what its owner holds now, or None (read in one
        snapshot: the sessions' rows are projected while it is read)."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await self._manifest(conn, manifest_id, owner_id)

    async def _manifest(
        self, conn: asyncpg.Connection, manifest_id: str, owner_id: str
    ) -> ManifestView | None:
        row = await conn.fetchrow(self._manifest_sql, manifest_id, owner_id)
        if row is None:
            return None
        by_content: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        #: The session each content was given when the manifest was submitted.
        given: dict[str, str] = {}
        for f in map(ListedFile.model_validate, row["files"]):
            by_content.setdefault(f.sha256, []).append(f.path)
            sizes[f.sha256] = f.size_bytes
            if f.upload_id is not None:
                given[f.sha256] = f.upload_id
        shas = list(by_content)
        held = {r["sha256"] for r in await conn.fetch(self._held_sql, owner_id, shas)}
        lacking = [s for s in shas if s not in held]
        uploading = {
            r["sha256"]: r["upload_id"]
            for r in await conn.fetch(self._uploading_sql, owner_id, lacking)
        }
        # A session given at submission that this read model does not show yet (a big
        # manifest's sessions are projected after it) is open: it was just started.
        unseen = [given[s] for s in lacking if s not in uploading and s in given]
        if unseen:
            known = {r["upload_id"] for r in await conn.fetch(self._known_sql, unseen)}
            uploading.update({s: given[s] for s in lacking if s in given and given[s] not in known})
        missing = sorted(
            (
                MissingFile(
                    sha256=s,
                    size_bytes=sizes[s],
                    paths=sorted(by_content[s]),
                    upload_id=uploading.get(s),
                )
                for s in lacking
            ),
            key=lambda m: (row["main_file"] not in m.paths, m.paths[0]),  # the main file first
        )
        return ManifestView(
            manifest_id=row["manifest_id"],
            status=ManifestStatus(row["status"]),
            main_file=row["main_file"],
            file_count=row["file_count"],
            total_bytes=row["total_bytes"],
            content_sha256=row["content_sha256"],
            files_present=sum(len(by_content[s]) for s in held),
            missing=missing,
            created_at=row["created_at"],
            completed_at=row["completed_at"],
            version=row["version"],
        )

    async def wait_for_manifest(
        self, manifest_id: str, owner_id: str, min_version: int, wait_seconds: float
    ) -> ManifestView | None:
        """Like :meth:`wait_for_upload`, for a manifest."""
        return await _wait(lambda: self.manifest(manifest_id, owner_id), min_version, wait_seconds)


async def _wait(
    read: Callable[[], Awaitable[V | None]], min_version: int, wait_seconds: float
) -> V | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        found = await read()
        if (found is not None and found.version >= min_version) or loop.time() >= deadline:
            return found
        await asyncio.sleep(0.01)


def _an_asset_stored(view: UploadView) -> bool:
    return view.kind is UploadKind.asset and view.status is UploadStatus.completed
