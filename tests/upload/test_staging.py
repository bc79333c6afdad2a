"""Staging a job's scene to the farm: the upload service's StageScene command and its stager
on real PostgreSQL, NATS and S3 (MiniStack), copying into a folder that stands for the farm's
scene root. Scene files are put into the test's bucket as a completed upload leaves them (so
that their declared checksum can be wrong), a manifest is made through the upload API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.base import Event
from contracts.errors import SceneChecksumMismatch, SceneSizeMismatch
from contracts.staging import (
    STAGING_LISTING,
    CancelStaging,
    SceneFilesAwaited,
    SceneNeededFilesStaged,
    SceneRef,
    SceneStaged,
    SceneStagingCancelled,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingRequested,
    SceneStagingStarted,
    StageScene,
    StagingAccepted,
    StagingStatus,
)
from deploy.local.servers import free_port
from libs.bus.commands import Actor, CommandClient
from libs.bus.nats import connect
from libs.eventstore.store import EventStore, create_pool
from libs.ids import new_id
from libs.readmodels.scenes import ScenesQuery
from libs.runtime import ServiceRuntime, build
from libs.s3 import S3Client
from services.upload.service import SERVICE
from services.upload.settings import UploadSettings
from services.upload.stager import INCOMING, MARKER, SceneFile, fetch_ranges
from tests.conftest import Env
from tests.fixtures import Users
from tests.processes import service
from tests.scene.conftest import blender_python, built
from tests.scenes import MiB, put_scene, scene_bytes
from tests.upload.protocol import Uploader, cut, sha256_hex

__all__ = ["blender_python", "built"]

SCHEDULER = Actor(kind="service", id="scheduler")
OWNER = "usr_studio1"


@pytest.fixture
def stage_root(tmp_path: Path) -> Path:
    root = tmp_path / "farm-scenes"
    root.mkdir()
    return root


def staging_settings(env: Env, stage_root: Path, **overrides: Any) -> UploadSettings:
    values: dict[str, Any] = {
        "stage_root": str(stage_root),
        "stage_chunk_bytes": 256 * 1024,
        "stage_progress_seconds": 0.0,
        "stage_progress_bytes": MiB,
        "stage_poll_seconds": 0.2,
        "stage_retry_seconds": 0.2,
    }
    return env.settings(UploadSettings, **(values | overrides))


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


@dataclass
class Stagings:
    """The upload service as the scheduler sees it: its commands over NATS, its events."""

    commands: CommandClient
    store: EventStore

    @classmethod
    def of(cls, rt: ServiceRuntime[Any]) -> Stagings:
        return cls(CommandClient(rt.nc, rt.settings, timeout=10), rt.store)


Service = ServiceRuntime[Any] | Stagings


def stagings(of: Service) -> Stagings:
    return of if isinstance(of, Stagings) else Stagings.of(of)


async def send(of: Service, cmd: StageScene | CancelStaging) -> StagingAccepted:
    return await stagings(of).commands.send(
        cmd, StagingAccepted, command_id=uuid.uuid4().hex, actor=SCHEDULER
    )


async def stage(of: Service, scene: SceneRef, owner: str = OWNER, job_id: str | None = None) -> str:
    """Send StageScene as the scheduler does; returns the job id."""
    job_id = job_id or new_id("job")
    reply = await send(of, StageScene(job_id=job_id, owner_id=owner, scene=scene))
    assert reply.job_id == job_id and reply.staged_key is not None
    return job_id


async def history(of: Service, job_id: str) -> list[Event]:
    return [e.decode() for e in await stagings(of).store.read_stream(f"staging-{job_id}")]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def ended(of: Service, job_id: str, timeout: float = 30) -> Event:
    """The event that ended the job's staging, once there is one."""
    ends = (SceneStaged, SceneStagingFailed, SceneStagingCancelled)

    async def over() -> bool:
        return any(isinstance(e, ends) for e in await history(of, job_id))

    await until(over, timeout)
    return (await history(of, job_id))[-1]


def leftovers(stage_root: Path) -> list[Path]:
    incoming = stage_root / "staged" / INCOMING
    return list(incoming.iterdir()) if incoming.exists() else []


async def test_a_scene_upload_is_copied_to_the_farms_scene_root_verified_with_progress(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env, stage_root: Path
) -> None:
    data = scene_bytes(3 * MiB + 123)
    scene = await put_scene(s3, env, data, name="shot 030 (lighting).blend")
    job_id = await stage(upload_service, scene)

    done = await ended(upload_service, job_id)
    assert isinstance(done, SceneStaged) and not done.reused and done.bytes_copied == len(data)
    digest = scene.content_sha256
    assert done.staged_key == f"staged/{OWNER}/{digest}/shot_030__lighting_.blend"
    assert (stage_root / done.staged_key).read_bytes() == data
    assert (stage_root / f"staged/{OWNER}/{digest}" / MARKER).is_file()
    assert leftovers(stage_root) == []

    events = await history(upload_service, job_id)
    assert [e.event_type for e in events[:2]] == [
        SceneStagingRequested.event_type,
        SceneStagingStarted.event_type,
    ]
    started = events[1]
    assert isinstance(started, SceneStagingStarted)
    assert (started.files_total, started.bytes_total) == (1, len(data))
    progress = [e.bytes_done for e in events if isinstance(e, SceneStagingProgressed)]
    assert len(progress) >= 3 and progress == sorted(set(progress))  # at least every MiB
    assert progress[-1] == len(data)

    async def listed_as_staged() -> bool:  # the stager's to-do list catches up
        async with upload_service.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM upload.stagings WHERE job_id = $1", job_id)
        return (row["status"], row["reused"], row["bytes_done"]) == ("staged", False, len(data))

    await until(listed_as_staged)


async def test_a_second_job_on_the_same_scene_reuses_the_staged_copy_and_copies_nothing(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env, stage_root: Path
) -> None:
    scene = await put_scene(s3, env, scene_bytes(MiB))
    first = await ended(upload_service, await stage(upload_service, scene))
    assert isinstance(first, SceneStaged) and not first.reused
    staged_file = stage_root / first.staged_key
    copied_at = staged_file.stat().st_mtime_ns

    second_job = await stage(upload_service, scene)
    second = await ended(upload_service, second_job)
    assert isinstance(second, SceneStaged) and second.reused and second.bytes_copied == 0
    assert second.staged_key == first.staged_key
    assert [e.event_type for e in await history(upload_service, second_job)] == [
        SceneStagingRequested.event_type,
        SceneStaged.event_type,
    ]  # no copy started
    assert staged_file.stat().st_mtime_ns == copied_at


async def test_another_users_identical_scene_is_staged_apart_and_never_reused(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env, stage_root: Path
) -> None:
    scene = await put_scene(s3, env, scene_bytes(MiB))
    mine = await ended(upload_service, await stage(upload_service, scene))
    theirs = await ended(upload_service, await stage(upload_service, scene, owner="usr_other"))
    assert isinstance(mine, SceneStaged) and isinstance(theirs, SceneStaged)
    assert not theirs.reused and theirs.bytes_copied == MiB
    assert theirs.staged_key.startswith("staged/usr_other/")
    assert (stage_root / theirs.staged_key).read_bytes() == (
        stage_root / mine.staged_key
    ).read_bytes()


async def test_bytes_that_do_not_match_the_declared_sha256_fail_the_staging_and_leave_nothing(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env, stage_root: Path
) -> None:
    declared = hashlib.sha256(b"what the client said it uploaded").hexdigest()
    scene = await put_scene(s3, env, scene_bytes(2 * MiB), declared_sha256=declared)
    failed = await ended(upload_service, await stage(upload_service, scene))
    assert isinstance(failed, SceneStagingFailed) and failed.code == "scene_checksum_mismatch"
    assert declared in failed.reason and hashlib.sha256(scene_bytes(2 * MiB)).hexdigest() in (
        failed.reason
    )
    assert not (stage_root / f"staged/{OWNER}/{declared}").exists()
    assert leftovers(stage_root) == []


async def test_a_missing_object_or_a_wrong_size_fails_the_staging_with_its_code(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env
) -> None:
    wrong_size = await put_scene(s3, env, scene_bytes(1000), declared_size=999)
    gone = await put_scene(s3, env, scene_bytes(1000, "gone"))
    await s3.delete_object(Bucket=gone.bucket or "", Key=gone.object_key or "")
    for scene, code in ((wrong_size, "scene_size_mismatch"), (gone, "scene_file_missing")):
        failed = await ended(upload_service, await stage(upload_service, scene))
        assert isinstance(failed, SceneStagingFailed) and failed.code == code, failed


async def test_staging_a_jobs_scene_again_changes_nothing(
    upload_service: ServiceRuntime[Any], s3: S3Client, env: Env
) -> None:
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await stage(upload_service, scene)
    await ended(upload_service, job_id)
    before = await history(upload_service, job_id)
    await stage(upload_service, scene, job_id=job_id)
    assert await history(upload_service, job_id) == before


@pytest.fixture
async def slow_upload_service(env: Env, stage_root: Path) -> AsyncIterator[ServiceRuntime[Any]]:
    """Copies in 4 KiB chunks and records progress after every one: a copy of a few MiB
    takes long enough to act on while it runs."""
    settings = staging_settings(env, stage_root, stage_chunk_bytes=4096, stage_progress_bytes=0)
    rt = await build(SERVICE, settings)
    await rt.launch()
    yield rt
    await rt.stop()


async def copying(of: Service, job_id: str) -> None:
    async def progressed() -> bool:
        return any(isinstance(e, SceneStagingProgressed) for e in await history(of, job_id))

    await until(progressed)


async def test_a_cancel_stops_the_copy_midway_and_removes_what_was_copied(
    slow_upload_service: ServiceRuntime[Any], s3: S3Client, env: Env, stage_root: Path
) -> None:
    rt = slow_upload_service
    scene = await put_scene(s3, env, scene_bytes(4 * MiB))
    job_id = await stage(rt, scene)
    await copying(rt, job_id)
    reply = await send(rt, CancelStaging(job_id=job_id, reason="the job was cancelled"))
    assert reply.status is StagingStatus.cancelled
    assert isinstance(await ended(rt, job_id), SceneStagingCancelled)

    async def stopped() -> bool:
        return not rt.wired.stager.active

    await until(stopped)
    assert leftovers(stage_root) == []
    assert not (stage_root / f"staged/{OWNER}/{scene.content_sha256}").exists()
    events = await history(rt, job_id)
    assert not any(isinstance(e, SceneStaged) for e in events)
    done = [e.bytes_done for e in events if isinstance(e, SceneStagingProgressed)]
    assert done[-1] < 4 * MiB


async def test_a_staging_left_midway_by_a_killed_upload_service_is_finished_after_restart(
    env: Env, s3: S3Client, stage_root: Path, tmp_path: Path
) -> None:
    settings = staging_settings(env, stage_root, stage_chunk_bytes=4096, stage_progress_bytes=0)
    process_env = {
        **os.environ,
        **env,
        "RF_HEALTH_PORT": str(free_port()),
        "RF_STAGE_ROOT": str(stage_root),
        "RF_STAGE_CHUNK_BYTES": str(settings.stage_chunk_bytes),
        "RF_STAGE_PROGRESS_SECONDS": "0",
        "RF_STAGE_PROGRESS_BYTES": "0",
        "RF_STAGE_POLL_SECONDS": "0.2",
    }
    upload = service("upload", process_env, tmp_path)
    upload.start()
    nc = await connect(settings, "test")
    pool = await create_pool(settings.database_url)
    try:
        await upload.ready()
        scheduler = Stagings(CommandClient(nc, settings, timeout=10), EventStore(pool, "upload"))
        data = scene_bytes(3 * MiB, "restart")
        scene = await put_scene(s3, env, data)
        job_id = await stage(scheduler, scene)
        await copying(scheduler, job_id)
        upload.stop(signal.SIGKILL)
        assert leftovers(stage_root) != []  # a half-copied scene, as a crash leaves it
        upload.start()
        done = await ended(scheduler, job_id, timeout=60)
    finally:
        upload.kill()
        await nc.close()
        await pool.close()
    assert isinstance(done, SceneStaged) and not done.reused
    assert (stage_root / done.staged_key).read_bytes() == data
    assert leftovers(stage_root) == []


async def uploaded_manifest(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    owner: str,
    main_file: str,
    contents: dict[str, bytes],
) -> tuple[dict[str, Any], SceneRef]:
    """``contents`` sent through the upload API as a complete manifest: its description,
    and the scene as the gateway resolves it for create_job."""
    me = Uploader(upload_api, users.headers(owner))
    files = [
        {"path": p, "size_bytes": len(d), "sha256": sha256_hex(d)} for p, d in contents.items()
    ]
    r = await upload_api.post(
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
    done = await upload_api.post(
        f"/v1/manifests/{manifest['manifest_id']}/complete", headers=me.headers
    )
    assert done.status_code == 200, done.text
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None and found.ready
    return manifest, found.ref()


async def test_a_manifest_is_staged_with_every_file_at_its_relative_path(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
) -> None:
    owner = new_id("usr")
    scene, wood = os.urandom(5000), os.urandom(2000)
    contents = {"shots/main.blend": scene, "tex/wood.png": wood, "tex/old/wood.png": wood}
    manifest, found = await uploaded_manifest(
        upload_service, upload_api, users, owner, "shots/main.blend", contents
    )

    staged = await ended(upload_service, await stage(upload_service, found, owner=owner))
    assert isinstance(staged, SceneStaged) and not staged.reused
    folder = f"staged/{owner}/{manifest['content_sha256']}"
    assert staged.staged_key == f"{folder}/shots/main.blend"
    # Fetched now, or linked from what was staged as it was uploaded (test_prestaging.py).
    assert staged.bytes_copied + staged.bytes_prestaged == len(scene) + 2 * len(wood)
    for path, data in contents.items():
        assert (stage_root / folder / path).read_bytes() == data, path
    marker = json.loads((stage_root / folder / MARKER).read_text())
    assert sorted(f["path"] for f in marker["files"]) == sorted(contents)
    again = await ended(upload_service, await stage(upload_service, found, owner=owner))
    assert isinstance(again, SceneStaged) and again.reused


async def test_the_files_a_blend_scenes_test_frames_need_are_staged_first_and_readable_apart(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    stage_root: Path,
    built: Callable[[str], Path],
) -> None:
    """The main file first, then what it references (its texture, and of its image sequence
    only the test frames' entries), recorded as SceneNeededFilesStaged and readable in the
    job's needed folder; then the rest (the other entries, a big file nothing references)."""
    owner = new_id("usr")
    folder = built("sequence")
    contents = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}
    contents["cache/unreferenced.bin"] = os.urandom(3 * MiB)
    manifest, scene = await uploaded_manifest(
        upload_service, upload_api, users, owner, "scene.blend", contents
    )
    job_id = new_id("job")
    await send(
        upload_service, StageScene(job_id=job_id, owner_id=owner, scene=scene, test_frames=[1, 5])
    )
    staged = await ended(upload_service, job_id)
    assert isinstance(staged, SceneStaged) and not staged.reused

    events = await history(upload_service, job_id)
    kinds = [type(e) for e in events]
    assert kinds.count(SceneNeededFilesStaged) == 1
    needed = events[kinds.index(SceneNeededFilesStaged)]
    assert isinstance(needed, SceneNeededFilesStaged)
    assert kinds.index(SceneStagingStarted) < kinds.index(SceneNeededFilesStaged)
    wanted = ["scene.blend", "seq/frame_0001.png", "seq/frame_0005.png", "textures/checker.png"]
    assert needed.files == wanted
    assert needed.bytes_needed == sum(len(contents[p]) for p in wanted)
    scene_bytes_total = staged.bytes_copied + staged.bytes_prestaged
    assert (needed.files_total, needed.bytes_total) == (len(contents), scene_bytes_total)
    assert needed.staged_key == f"staged/.needed/{job_id}/scene.blend"
    assert needed.seconds > 0 and needed.at <= staged.at
    # Progress goes on after the needed files: the big file is copied after them.
    after = [e for e in events[kinds.index(SceneNeededFilesStaged) :]]
    done_after = [e.bytes_done for e in after if isinstance(e, SceneStagingProgressed)]
    assert done_after and done_after[-1] == needed.bytes_total > needed.bytes_needed

    # The needed folder holds hard links to the staged copies and the listing of the whole
    # scene, naming where it is staged.
    apart = stage_root / f"staged/.needed/{job_id}"
    # Once staged, the needed folder is whole too (links to the rest), with the listing.
    held = sorted(p.relative_to(apart).as_posix() for p in apart.rglob("*") if p.is_file())
    assert held == sorted([*contents, STAGING_LISTING])
    listing = json.loads((apart / STAGING_LISTING).read_text())
    assert listing["staged_to"] == f"staged/{owner}/{manifest['content_sha256']}"
    assert sorted(f["path"] for f in listing["files"]) == sorted(contents)
    final = stage_root / listing["staged_to"]
    for path in contents:
        assert (apart / path).stat().st_ino == (final / path).stat().st_ino, path
    assert not (final / STAGING_LISTING).exists()


async def submitted_manifest(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    owner: str,
    contents: dict[str, bytes],
    main_file: str = "main.blend",
) -> tuple[dict[str, Any], SceneRef]:
    """``contents`` declared as a manifest, none of its files sent: its description, and
    the scene as the gateway resolves it for create_job (a manifest waiting for files)."""
    files = [
        {"path": p, "size_bytes": len(d), "sha256": sha256_hex(d)} for p, d in contents.items()
    ]
    r = await upload_api.post(
        "/v1/manifests",
        json={"main_file": main_file, "files": files},
        headers=users.headers(owner),
    )
    assert r.status_code == 201, r.text
    manifest: dict[str, Any] = r.json()
    found = await ScenesQuery(upload_service.pool).scene(manifest["manifest_id"], owner)
    assert found is not None and found.renderable and not found.ready
    return manifest, found.ref()


async def awaiting(of: Service, job_id: str, count: int = 1) -> list[SceneFilesAwaited]:
    """The staging's waits for uploads, once there are ``count``."""

    async def waits() -> list[SceneFilesAwaited]:
        return [e for e in await history(of, job_id) if isinstance(e, SceneFilesAwaited)]

    async def enough() -> bool:
        return len(await waits()) >= count

    await until(enough)
    return await waits()


async def test_a_staging_waits_for_uploads_without_a_copy_slot_and_an_ended_upload_fails_it(
    upload_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    users: Users,
    s3: S3Client,
    env: Env,
    stage_root: Path,
) -> None:
    """Two stagings (the stager's ``stage_concurrency``) wait for manifest files that are
    not uploaded; a third scene is staged meanwhile. One waiting staging goes on as its
    file arrives; the other's file has its session aborted: it fails scene_upload_ended."""
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    main, wood, sky = os.urandom(4000), os.urandom(3000), os.urandom(2000)
    first, scene_a = await submitted_manifest(
        upload_service, upload_api, users, owner, {"main.blend": main, "tex/wood.png": wood}
    )
    job_a = await stage(upload_service, scene_a, owner=owner)
    [wait_a] = await awaiting(upload_service, job_a)
    # The test frames' files first (only the main file is known to be needed yet).
    assert (wait_a.needed, wait_a.needed_files_waiting, wait_a.files_waiting) == (True, 1, 2)
    assert wait_a.paths == ["main.blend", "tex/wood.png"]
    assert (wait_a.files_total, wait_a.bytes_total) == (2, len(main) + len(wood))
    # The main file is there (the other manifest sends it), the sky never will be.
    second, scene_b = await submitted_manifest(
        upload_service, upload_api, users, owner, {"main.blend": main, "tex/sky.png": sky}
    )
    job_b = await stage(upload_service, scene_b, owner=owner)
    await awaiting(upload_service, job_b)
    assert upload_service.wired.stager.waiting == {job_a, job_b}

    # Neither holds a copy slot: a third scene is staged while both wait.
    other = await put_scene(s3, env, scene_bytes(MiB))
    assert isinstance(await ended(upload_service, await stage(upload_service, other)), SceneStaged)

    sent = {sha256_hex(main): main, sha256_hex(wood): wood}
    for missing in first["missing"]:
        session = await me.get(missing["upload_id"])
        data = sent[missing["sha256"]]
        await me.send(missing["upload_id"], cut(data, session["part_size_bytes"]))
        assert (await me.complete(missing["upload_id"])).status_code == 200
    done = await ended(upload_service, job_a)
    assert isinstance(done, SceneStaged), done
    folder = stage_root / f"staged/{owner}/{first['content_sha256']}"
    assert (folder / "tex/wood.png").read_bytes() == wood

    [sky_session] = [m["upload_id"] for m in second["missing"] if m["paths"] == ["tex/sky.png"]]
    assert (await me.abort(sky_session)).status_code == 200
    failed = await ended(upload_service, job_b)
    assert isinstance(failed, SceneStagingFailed) and failed.code == "scene_upload_ended", failed
    assert "tex/sky.png" in failed.reason and "aborted" in failed.reason
    assert not (stage_root / f"staged/{owner}/{second['content_sha256']}").exists()
    assert not (stage_root / f"staged/.needed/{job_b}").exists()
    assert leftovers(stage_root) == []


async def test_a_cancel_reaches_a_staging_waiting_for_uploads(
    upload_service: ServiceRuntime[Any], upload_api: httpx.AsyncClient, users: Users
) -> None:
    owner = new_id("usr")
    _, scene = await submitted_manifest(
        upload_service, upload_api, users, owner, {"main.blend": os.urandom(1000)}
    )
    job_id = await stage(upload_service, scene, owner=owner)
    await awaiting(upload_service, job_id)
    reply = await send(upload_service, CancelStaging(job_id=job_id, reason="the job was cancelled"))
    assert reply.status is StagingStatus.cancelled
    assert isinstance(await ended(upload_service, job_id), SceneStagingCancelled)

    async def stopped() -> bool:
        return not upload_service.wired.stager.active

    await until(stopped)
    assert upload_service.wired.stager.waiting == set()


class CountingStore:
    """The store as the stager calls it, noting each GET's range; ``started`` is set once
    ``at_once`` GETs were asked for."""

    def __init__(self, s3: S3Client, at_once: int) -> None:
        self.s3, self.at_once = s3, at_once
        self.ranges: list[str | None] = []
        self.started = asyncio.Event()

    async def get_object(self, **kw: Any) -> Any:
        self.ranges.append(kw.get("Range"))
        if len(self.ranges) >= self.at_once:
            self.started.set()
        return await self.s3.get_object(**kw)


async def test_a_large_file_is_fetched_as_ranged_gets_at_once_written_in_place_and_verified(
    s3: S3Client, env: Env, tmp_path: Path
) -> None:
    data = scene_bytes(MiB + 123)
    scene = await put_scene(s3, env, data)
    file = SceneFile(
        "a.bin", len(data), scene.content_sha256, scene.bucket or "", scene.object_key or ""
    )
    store = CountingStore(s3, at_once=4)
    got: list[int] = []

    async def add(n: int) -> None:
        """No range is written before 4 GETs run: one stream after the other never gets
        past this."""
        await asyncio.wait_for(store.started.wait(), 10)
        got.append(n)

    dest = tmp_path / "a.bin"
    await fetch_ranges(store, file, dest, 64 * 1024, (256 * 1024, 4), add)  # type: ignore[arg-type]
    assert dest.read_bytes() == data and sum(got) == len(data)
    starts = [256 * 1024 * i for i in range(5)]
    assert sorted(store.ranges) == sorted(  # type: ignore[type-var]
        f"bytes={a}-{min(a + 256 * 1024, len(data)) - 1}" for a in starts
    )

    wrong = SceneFile("a.bin", len(data), "0" * 64, file.bucket, file.object_key)
    with pytest.raises(SceneChecksumMismatch):
        await fetch_ranges(s3, wrong, dest, 64 * 1024, (256 * 1024, 4), add)
    longer = SceneFile("a.bin", len(data) + 1, file.sha256, file.bucket, file.object_key)
    with pytest.raises(SceneSizeMismatch):
        await fetch_ranges(s3, longer, dest, 64 * 1024, (256 * 1024, 4), add)


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "stage_on_upload": False,
            "stage_range_min_bytes": MiB,
            "stage_range_bytes": 256 * 1024,
            "stage_range_streams": 4,
        }
    ],
)
async def test_a_large_needed_file_a_staging_fetches_comes_as_ranged_gets(
    upload_service: ServiceRuntime[Any],
    stage_root: Path,
    upload_api: httpx.AsyncClient,
    users: Users,
) -> None:
    """The main file (the test frames need it) over ``stage_range_min_bytes``: ranged GETs,
    4 at once; the rest of the scene, one GET a file."""
    rt = upload_service
    store = CountingStore(rt.wired.stager.s3, at_once=4)
    rt.wired.stager.s3 = store
    owner = new_id("usr")
    main, rest = os.urandom(2 * MiB), os.urandom(2 * MiB)
    manifest, scene = await uploaded_manifest(
        rt, upload_api, users, owner, "main.blend", {"main.blend": main, "big.bin": rest}
    )
    staged = await ended(rt, await stage(rt, scene, owner=owner))
    assert isinstance(staged, SceneStaged) and staged.bytes_copied == 4 * MiB, staged
    folder = stage_root / f"staged/{owner}/{manifest['content_sha256']}"
    assert (folder / "main.blend").read_bytes() == main
    assert (folder / "big.bin").read_bytes() == rest
    assert store.ranges.count(None) == 1  # big.bin: not needed, one GET
    assert len([r for r in store.ranges if r is not None]) == 8  # main.blend: 8 ranges
