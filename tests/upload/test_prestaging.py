"""Staging as uploaded: each manifest file is copied to the farm's scene root as soon as its
upload completes, before any job exists, and a job's staging then links it instead of
fetching it from the bucket. Real PostgreSQL, NATS and S3 (MiniStack), the upload service
behind the gateway, a folder standing for the farm's scene root."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.base import Event
from contracts.staging import (
    AssetStaged,
    AssetUnstaged,
    SceneNeededFilesStaged,
    SceneStaged,
    SceneStagingProgressed,
    StageScene,
)
from libs.ids import new_id
from libs.readmodels.scenes import ScenesQuery
from libs.runtime import ServiceRuntime, build
from libs.s3 import S3Client
from services.upload.domain import asset_object_key
from services.upload.service import SERVICE
from services.upload.stager import SceneFile
from tests.conftest import Env
from tests.fixtures import Users
from tests.scenes import MiB
from tests.upload.protocol import Uploader, cut, sha256_hex
from tests.upload.test_staging import (
    blender_python,
    built,
    ended,
    history,
    send,
    stage,
    stage_root,
    staging_settings,
)
from tests.waiting import until

__all__ = ["blender_python", "built", "stage_root"]


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Upload settings of the test (parametrized where a test needs others)."""
    return {}


@pytest.fixture
async def upload_service(
    env: Env, stage_root: Path, overrides: dict[str, Any]
) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, staging_settings(env, stage_root, **overrides))
    await rt.launch()
    yield rt
    await rt.stop()


def content(stage_root: Path, owner: str, data: bytes) -> Path:
    return stage_root / "staged" / ".content" / owner / sha256_hex(data)


async def asset_events(rt: ServiceRuntime[Any], owner: str, data: bytes) -> list[Event]:
    stream = f"asset-{owner}.{sha256_hex(data)}"
    return [e.decode() for e in await rt.store.read_stream(stream)]


async def staged_event(rt: ServiceRuntime[Any], owner: str, data: bytes) -> AssetStaged | None:
    found = [e for e in await asset_events(rt, owner, data) if isinstance(e, AssetStaged)]
    return found[0] if found else None


async def manifest_of(
    api: httpx.AsyncClient,
    me: Uploader,
    main_file: str,
    contents: dict[str, bytes],
    after_each: Callable[[bytes], Any] | None = None,
) -> dict[str, Any]:
    """``contents`` sent as a manifest, file by file (``after_each`` awaited once each
    file's upload completed), then completed."""
    files = [
        {"path": p, "size_bytes": len(d), "sha256": sha256_hex(d)} for p, d in contents.items()
    ]
    r = await api.post(
        "/v1/manifests", json={"main_file": main_file, "files": files}, headers=me.headers
    )
    assert r.status_code == 201, r.text
    manifest: dict[str, Any] = r.json()
    by_sha = {sha256_hex(d): d for d in contents.values()}
    for missing in manifest["missing"]:
        session = await me.get(missing["upload_id"])
        data = by_sha[missing["sha256"]]
        await me.send(missing["upload_id"], cut(data, session["part_size_bytes"]))
        assert (await me.complete(missing["upload_id"])).status_code == 200
        if after_each is not None:
            await after_each(data)
    done = await api.post(f"/v1/manifests/{manifest['manifest_id']}/complete", headers=me.headers)
    assert done.status_code == 200, done.text
    return manifest


async def test_each_file_is_on_the_farm_once_uploaded_and_a_job_stages_it_with_nothing_fetched(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
    s3: S3Client,
    env: Env,
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    scene, wood, sim = os.urandom(5000), os.urandom(2000), os.urandom(3 * MiB)
    contents = {"shots/main.blend": scene, "tex/wood.png": wood, "tex/old/wood.png": wood}
    contents["cache/sim.bin"] = sim

    async def on_the_farm(data: bytes) -> None:
        """Before the next file is even sent, and before any job: the file is on the farm,
        verified, and recorded."""
        path = content(stage_root, owner, data)
        event = await until(lambda: staged_event(upload_service, owner, data), "AssetStaged")
        assert path.read_bytes() == data
        assert (event.owner_id, event.sha256, event.size_bytes) == (
            owner,
            sha256_hex(data),
            len(data),
        )
        assert event.staged_key == f"staged/.content/{owner}/{sha256_hex(data)}"
        assert event.seconds >= 0

    manifest = await manifest_of(upload_api, me, "shots/main.blend", contents, on_the_farm)
    assert len(manifest["missing"]) == 3  # wood.png twice, one content
    assert not (stage_root / "staged" / ".incoming").exists()  # no job has staged anything

    # The bucket loses the files: a job's staging needs none of them from there.
    for missing in manifest["missing"]:
        key = asset_object_key(owner, missing["sha256"])
        await s3.delete_object(Bucket=env["RF_S3_SCENES_BUCKET"], Key=key)
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None and found.ready
    job_id = await stage(upload_service, found.ref(), owner=owner)
    staged = await ended(upload_service, job_id)
    total = len(scene) + 2 * len(wood) + len(sim)
    assert isinstance(staged, SceneStaged) and not staged.reused, staged
    assert (staged.bytes_copied, staged.bytes_prestaged) == (0, total)
    folder = stage_root / f"staged/{owner}/{manifest['content_sha256']}"
    for path, data in contents.items():
        placed = folder / path
        assert placed.read_bytes() == data, path
        assert placed.stat().st_ino == content(stage_root, owner, data).stat().st_ino, path
    events = await history(upload_service, job_id)
    needed = [e for e in events if isinstance(e, SceneNeededFilesStaged)]
    assert [(e.bytes_needed, e.bytes_prestaged) for e in needed] == [(len(scene),) * 2]
    progress = [e for e in events if isinstance(e, SceneStagingProgressed)]
    assert progress[-1].bytes_done == progress[-1].bytes_prestaged == total


async def test_a_blend_scenes_needed_files_come_from_what_was_staged_as_uploaded(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
    built: Callable[[str], Path],
) -> None:
    """The needed files first, traced with BAT, readable in the needed folder, as before;
    every byte of them linked from the content staged as uploaded."""
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    folder = built("sequence")
    contents = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}

    async def on_the_farm(data: bytes) -> None:
        await until(lambda: staged_event(upload_service, owner, data), "AssetStaged")

    manifest = await manifest_of(upload_api, me, "scene.blend", contents, on_the_farm)
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None
    job_id = new_id("job")
    await send(
        upload_service,
        StageScene(job_id=job_id, owner_id=owner, scene=found.ref(), test_frames=[1, 5]),
    )
    staged = await ended(upload_service, job_id)
    assert isinstance(staged, SceneStaged) and staged.bytes_copied == 0
    [needed] = [
        e for e in await history(upload_service, job_id) if isinstance(e, SceneNeededFilesStaged)
    ]
    wanted = ["scene.blend", "seq/frame_0001.png", "seq/frame_0005.png", "textures/checker.png"]
    assert needed.files == wanted
    assert needed.bytes_prestaged == needed.bytes_needed == sum(len(contents[p]) for p in wanted)
    apart = stage_root / f"staged/.needed/{job_id}"
    for path in wanted:
        assert (apart / path).read_bytes() == contents[path], path


@pytest.mark.parametrize("overrides", [{"stage_on_upload": False}])
async def test_with_staging_on_upload_off_nothing_is_staged_before_the_job_and_all_is_fetched(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
) -> None:
    assert upload_service.wired.prestager is None
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    contents = {"main.blend": os.urandom(4000), "tex/a.png": os.urandom(3000)}
    manifest = await manifest_of(upload_api, me, "main.blend", contents)
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None
    staged = await ended(upload_service, await stage(upload_service, found.ref(), owner=owner))
    assert isinstance(staged, SceneStaged)
    assert (staged.bytes_copied, staged.bytes_prestaged) == (7000, 0)
    assert not (stage_root / "staged" / ".content").exists()
    for data in contents.values():
        assert await staged_event(upload_service, owner, data) is None


async def test_the_same_content_asked_for_twice_is_copied_once(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
    env: Env,
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    data = os.urandom(MiB)
    done = await me.upload("unused.blend", b"not an asset")  # a scene upload: not pre-staged
    manifest = await manifest_of(upload_api, me, "a.bin", {"a.bin": data, "b/a.bin": data})
    event = await until(lambda: staged_event(upload_service, owner, data), "AssetStaged")
    path = content(stage_root, owner, data)
    copied = path.stat()

    # The same asset handed to the pre-stager twice at once, as a repeated event would.
    prestager = upload_service.wired.prestager
    assert prestager is not None
    key = asset_object_key(owner, manifest["missing"][0]["sha256"])
    file = SceneFile("a.bin", len(data), sha256_hex(data), env["RF_S3_SCENES_BUCKET"], key)
    await asyncio.gather(prestager.prestage(owner, file), prestager.prestage(owner, file))
    # A second manifest of the same content uploads nothing and stages nothing again.
    again = await manifest_of(upload_api, me, "c.bin", {"c.bin": data})
    assert again["missing"] == []
    await prestager.cycle()

    assert [
        e for e in await asset_events(upload_service, owner, data) if isinstance(e, AssetStaged)
    ] == [event]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (copied.st_ino, copied.st_mtime_ns)
    assert sorted(p.name for p in path.parent.iterdir()) == [sha256_hex(data)]
    assert done["status"] == "completed"


@pytest.mark.parametrize(
    "overrides",
    [{"stage_content_retention_days": 4 / 86400, "stage_content_sweep_seconds": 0.1}],
)
async def test_content_staged_as_uploaded_is_removed_when_its_retention_ends(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
) -> None:
    """Kept 4 s here: then removed and recorded; a job's staging fetches it again, and keeps
    it as the content again: the next job on another manifest of it links it."""
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    data = os.urandom(3000)
    manifest = await manifest_of(upload_api, me, "main.blend", {"main.blend": data})
    await until(lambda: staged_event(upload_service, owner, data), "AssetStaged")

    async def removed() -> bool:
        events = await asset_events(upload_service, owner, data)
        return any(isinstance(e, AssetUnstaged) for e in events)

    await until(removed, "AssetUnstaged", timeout=30)
    assert not content(stage_root, owner, data).exists()
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None
    staged = await ended(upload_service, await stage(upload_service, found.ref(), owner=owner))
    assert isinstance(staged, SceneStaged)
    assert (staged.bytes_copied, staged.bytes_prestaged) == (len(data), 0)

    [_, kept] = [
        e for e in await asset_events(upload_service, owner, data) if isinstance(e, AssetStaged)
    ]
    assert isinstance(kept, AssetStaged) and kept.size_bytes == len(data)
    scene = stage_root / f"staged/{owner}/{manifest['content_sha256']}/main.blend"
    assert content(stage_root, owner, data).stat().st_ino == scene.stat().st_ino
    other = await manifest_of(upload_api, me, "other.blend", {"other.blend": data})
    assert other["missing"] == []  # held: nothing to upload, nothing pre-staged
    found = await ScenesQuery(upload_service.pool).scene(other["manifest_id"], owner)
    assert found is not None
    again = await ended(upload_service, await stage(upload_service, found.ref(), owner=owner))
    assert isinstance(again, SceneStaged) and not again.reused
    assert (again.bytes_copied, again.bytes_prestaged) == (0, len(data))


@pytest.mark.parametrize(
    "overrides", [{"stage_max_bytes_per_second": MiB, "stage_chunk_bytes": 64 * 1024}]
)
async def test_a_copy_cut_short_by_a_stop_is_finished_by_the_next_upload_service(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    env: Env,
    stage_root: Path,
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    data = os.urandom(4 * MiB)  # 4 s at the rate
    await manifest_of(upload_api, me, "big.bin", {"big.bin": data})
    partial = content(stage_root, owner, data).with_suffix(".incoming")

    async def copying() -> bool:
        return partial.exists()

    await until(copying, "the copy under way")
    second = await build(SERVICE, staging_settings(env, stage_root))  # waits for the lock
    await second.launch()
    try:
        await upload_service.stop()
        event = await until(lambda: staged_event(second, owner, data), "AssetStaged", timeout=30)
        assert content(stage_root, owner, data).read_bytes() == data
        assert not partial.exists()
        staged = [e for e in await asset_events(second, owner, data) if isinstance(e, AssetStaged)]
        assert staged == [event]
    finally:
        await second.stop()
