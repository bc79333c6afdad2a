"""The upload service's read models as the gateway reads them to resolve a job's scene
(libs/readmodels/scenes.py, ADR 0007).

Uploads and manifests are made through the real upload API, so the upload service's own
projections write the rows; they are read back only through :class:`ScenesQuery` on a
read-only pool. A change to ``upload.uploads`` or ``upload.manifests`` that breaks the query
module fails here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from contracts.staging import SceneKind, SceneRef
from libs.ids import new_id
from libs.readmodels import read_only_pool
from libs.readmodels import scenes as scene_queries
from libs.readmodels.scenes import EndedFile, ScenesQuery
from libs.runtime import ServiceRuntime
from services.upload.service import SERVICE
from tests.fixtures import Users
from tests.upload.protocol import Uploader, cut, sha256_hex


@pytest.fixture
async def scenes(upload_service: ServiceRuntime[Any]) -> AsyncIterator[ScenesQuery]:
    pool = await read_only_pool(upload_service.settings.database_url, max_size=2)
    yield ScenesQuery(pool, SERVICE.schema)
    await pool.close()


def test_the_query_module_reads_the_schema_and_tables_the_upload_service_declares() -> None:
    assert SERVICE.schema == scene_queries.SCHEMA
    tables = {getattr(p, "table", None) for p in SERVICE.projections}
    assert {"uploads", "manifests"} <= tables


async def test_a_completed_upload_is_a_ready_scene_of_its_owner_only(
    upload_api: httpx.AsyncClient, users: Users, scenes: ScenesQuery
) -> None:
    owner = new_id("usr")
    data = os.urandom(4000)
    done = await Uploader(upload_api, users.headers(owner)).upload("shot_040.blend", data)
    found = await scenes.scene(done["upload_id"], owner)
    assert found is not None and found.ready and found.upload_kind == "scene"
    ref = found.ref()
    assert ref == SceneRef(
        scene_id=done["upload_id"],
        kind=SceneKind.upload,
        main_file="shot_040.blend",
        file_count=1,
        size_bytes=len(data),
        content_sha256=sha256_hex(data),
        bucket=ref.bucket,
        object_key=ref.object_key,
    )
    assert ref.bucket and ref.object_key
    assert await scenes.scene(done["upload_id"], new_id("usr")) is None  # not theirs
    assert await scenes.scene(new_id("upl"), owner) is None
    assert await scenes.scene(new_id("job"), owner) is None  # not a scene's id at all


async def test_an_open_upload_is_a_scene_not_ready_with_its_status(
    upload_api: httpx.AsyncClient, users: Users, scenes: ScenesQuery
) -> None:
    owner = new_id("usr")
    session = await Uploader(upload_api, users.headers(owner)).create("a.blend", b"x" * 10)
    found = await scenes.scene(session["upload_id"], owner)
    assert found is not None and (found.ready, found.status) == (False, "uploading")


async def test_a_manifest_is_a_scene_of_its_files_ready_once_complete(
    upload_api: httpx.AsyncClient, users: Users, scenes: ScenesQuery
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    scene, texture = os.urandom(3000), os.urandom(1000)
    files = [
        {"path": "main.blend", "size_bytes": len(scene), "sha256": sha256_hex(scene)},
        {"path": "tex/wood.png", "size_bytes": len(texture), "sha256": sha256_hex(texture)},
    ]
    r = await upload_api.post(
        "/v1/manifests", json={"main_file": "main.blend", "files": files}, headers=me.headers
    )
    assert r.status_code == 201, r.text
    manifest = r.json()
    waiting = await scenes.scene(manifest["manifest_id"], owner)
    assert waiting is not None and (waiting.ready, waiting.status) == (False, "waiting_for_files")
    assert waiting.renderable  # a job may be created on it: its staging waits for the files
    assert await scenes.ended_file(manifest["manifest_id"], owner) is None
    for missing, data in zip(manifest["missing"], (scene, texture), strict=True):
        session = await me.get(missing["upload_id"])
        await me.send(missing["upload_id"], cut(data, session["part_size_bytes"]))
        assert (await me.complete(missing["upload_id"])).status_code == 200
        asset = await scenes.scene(missing["upload_id"], owner)
        assert asset is not None and asset.upload_kind == "asset"
    r = await upload_api.post(
        f"/v1/manifests/{manifest['manifest_id']}/complete", headers=me.headers
    )
    assert r.status_code == 200, r.text
    found = await scenes.scene(manifest["manifest_id"], owner)
    assert found is not None and found.ready
    assert found.ref() == SceneRef(
        scene_id=manifest["manifest_id"],
        kind=SceneKind.manifest,
        main_file="main.blend",
        file_count=2,
        size_bytes=len(scene) + len(texture),
        content_sha256=manifest["content_sha256"],
    )
    assert await scenes.scene(manifest["manifest_id"], new_id("usr")) is None


async def test_a_manifest_file_whose_upload_session_ended_is_named(
    upload_api: httpx.AsyncClient, users: Users, scenes: ScenesQuery
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    scene, texture = os.urandom(3000), os.urandom(1000)
    files = [
        {"path": "main.blend", "size_bytes": len(scene), "sha256": sha256_hex(scene)},
        {"path": "tex/wood.png", "size_bytes": len(texture), "sha256": sha256_hex(texture)},
    ]
    r = await upload_api.post(
        "/v1/manifests", json={"main_file": "main.blend", "files": files}, headers=me.headers
    )
    assert r.status_code == 201, r.text
    manifest = r.json()
    assert (await me.abort(manifest["missing"][1]["upload_id"])).status_code == 200
    ended = await scenes.ended_file(manifest["manifest_id"], owner)
    assert ended == EndedFile(path="tex/wood.png", sha256=sha256_hex(texture), status="aborted")
    assert await scenes.ended_file(manifest["manifest_id"], new_id("usr")) is None  # not theirs
