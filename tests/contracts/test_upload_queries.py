"""The upload service's read models as the gateway reads them (libs/readmodels/uploads.py,
ADR 0007): the real service's projections over real commands, read back only through
:class:`UploadsQuery` on a read-only pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg
import pytest
from pydantic import BaseModel

from contracts.base import Command
from contracts.uploads import (
    AbortUpload,
    CreateManifestRequest,
    CreateUploadRequest,
    ManifestAccepted,
    ManifestFile,
    StartUpload,
    SubmitManifest,
    UploadAccepted,
    UploadStatus,
)
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.readmodels import read_only_pool
from libs.readmodels import uploads as upload_queries
from libs.readmodels.uploads import UploadsQuery
from libs.runtime import ServiceRuntime
from services.upload.service import SERVICE

R = TypeVar("R", bound=BaseModel)


@pytest.fixture
async def read_pool(upload_service: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(upload_service.settings.database_url, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def uploads(read_pool: asyncpg.Pool) -> UploadsQuery:
    return UploadsQuery(read_pool, SERVICE.schema)


async def send(rt: ServiceRuntime[Any], cmd: Command, reply: type[R], owner: str) -> R:
    return await CommandClient(rt.nc, rt.settings, timeout=10).send(
        cmd, reply, command_id=uuid.uuid4().hex, actor=Actor(kind="user", id=owner)
    )


async def start(rt: ServiceRuntime[Any], owner: str, name: str = "shot.blend") -> UploadAccepted:
    file = CreateUploadRequest(file_name=name, size_bytes=1000, sha256="a" * 64)
    cmd = StartUpload(upload_id=new_id("upl"), owner_id=owner, file=file)
    return await send(rt, cmd, UploadAccepted, owner)


def test_the_query_module_reads_the_schema_and_tables_the_upload_service_declares() -> None:
    assert SERVICE.schema == upload_queries.SCHEMA
    tables = {getattr(p, "table", None) for p in SERVICE.projections}
    assert {"uploads", "manifests", "assets"} <= tables


async def test_a_session_is_only_its_owners_and_shows_the_commands_version(
    upload_service: ServiceRuntime[Any], uploads: UploadsQuery
) -> None:
    accepted = await start(upload_service, "usr_a")
    view = await uploads.upload(accepted.upload_id, "usr_a")
    assert view is not None and view.version == accepted.version == 1
    assert (view.status, view.file_name, view.size_bytes) == ("uploading", "shot.blend", 1000)
    assert (view.part_count, view.parts_confirmed, view.progress_percent) == (1, 0, 0)
    assert await uploads.upload(accepted.upload_id, "usr_b") is None
    aborted = await send(
        upload_service,
        AbortUpload(upload_id=accepted.upload_id, owner_id="usr_a"),
        UploadAccepted,
        "usr_a",
    )
    seen = await uploads.wait_for_upload(accepted.upload_id, "usr_a", aborted.version, 1.0)
    assert seen is not None and seen.status is UploadStatus.aborted and seen.allowed_actions == []
    assert await uploads.wait_for_upload(accepted.upload_id, "usr_b", 1, 0.05) is None


async def test_sessions_are_listed_newest_first_by_owner_and_status(
    upload_service: ServiceRuntime[Any], uploads: UploadsQuery
) -> None:
    ids = [(await start(upload_service, "usr_a", f"{i}.blend")).upload_id for i in range(3)]
    await start(upload_service, "usr_b")
    page = await uploads.uploads("usr_a", None, None, 2)
    assert [u.upload_id for u in page] == [ids[2], ids[1]]
    assert [u.upload_id for u in await uploads.uploads("usr_a", None, ids[1], 5)] == [ids[0]]
    assert await uploads.uploads("usr_a", UploadStatus.completed, None, 5) == []


async def test_a_manifest_shows_what_its_owner_lacks_and_the_sessions_to_send_it(
    upload_service: ServiceRuntime[Any], uploads: UploadsQuery
) -> None:
    files = [
        ManifestFile(path="shot.blend", size_bytes=100, sha256="1" * 64),
        ManifestFile(path="tex/a.png", size_bytes=7, sha256="2" * 64),
        ManifestFile(path="tex/b.png", size_bytes=7, sha256="2" * 64),
    ]
    cmd = SubmitManifest(
        manifest_id=new_id("man"),
        owner_id="usr_a",
        manifest=CreateManifestRequest(main_file="shot.blend", files=files),
    )
    accepted = await send(upload_service, cmd, ManifestAccepted, "usr_a")
    view = await uploads.manifest(accepted.manifest_id, "usr_a")
    assert view is not None and view.version == accepted.version
    assert (view.status, view.file_count, view.total_bytes) == ("waiting_for_files", 3, 114)
    assert view.files_present == 0
    assert [(m.paths, m.size_bytes) for m in view.missing] == [
        (["shot.blend"], 100),
        (["tex/a.png", "tex/b.png"], 7),
    ]
    for m in view.missing:
        assert m.upload_id is not None
        session = await uploads.upload(m.upload_id, "usr_a")
        assert session is not None and session.kind == "asset" and session.sha256 == m.sha256
    assert await uploads.manifest(accepted.manifest_id, "usr_b") is None


async def test_the_query_pool_refuses_writes(read_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await read_pool.execute("CREATE TABLE upload.not_allowed (x int)")
