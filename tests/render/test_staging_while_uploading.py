"""A job on a manifest whose upload is still running: a real ``.blend`` with a texture, an
image sequence, and a cache file the test frames do not need. The job and its test render
are asked for before any file is uploaded; the staging waits for the files the test frames
need, the test render renders (Blender) as soon as they are on the farm while the cache
file is still unsent, and the full render starts only once that file is uploaded and the
whole scene staged."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.scene.steps import bpy_python
from tests.render.conftest import RenderSystem
from tests.scene.conftest import blender_python, built
from tests.upload.protocol import Uploader, cut, sha256_hex
from tests.waiting import until

__all__ = ["blender_python", "built"]

#: The file the test frames do not need, uploaded last.
CACHE = "cache/sim.bin"


@pytest.fixture
def farm_blender() -> str:
    python = bpy_python()
    if python is None:
        pytest.fail("no Blender: run `make venv` (it builds .venv-blender)")
    return python


@pytest.fixture
def scene_env() -> dict[str, str]:
    return {}  # scenes must be .blend files: the scene service's defaults


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])


async def test_a_job_on_a_manifest_still_uploading_test_renders_before_its_last_file_is_sent(
    render_system: RenderSystem, built: Callable[[str], Path], tmp_path: Path
) -> None:
    system = render_system
    folder = tmp_path / "shot"
    shutil.copytree(built("sequence"), folder)
    (folder / "cache").mkdir()
    (folder / CACHE).write_bytes(os.urandom(3 * 2**20))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    data = {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}
    entries = [
        {"path": path, "size_bytes": len(b), "sha256": sha256_hex(b)}
        for path, b in sorted(data.items())
    ]
    r = await system.api.post(
        "/v1/manifests",
        json={"main_file": "scene.blend", "files": entries},
        headers=system.headers,
    )
    assert r.status_code == 201, r.text
    manifest = r.json()
    assert manifest["status"] == "waiting_for_files"
    sessions = {m["paths"][0]: m["upload_id"] for m in manifest["missing"]}

    # Nothing is uploaded yet: the job is created, its test render asked for.
    job = await system.create_job(
        manifest["manifest_id"],
        frame_range={"start": 1, "end": 5},
        resolution={"width": 64, "height": 36},
        render_settings={"samples": 2},
    )
    job_id = job["job_id"]
    assert job["status"] == "submitted"
    r = await system.api.post(
        f"/v1/jobs/{job_id}/test-render",
        json={"quality": {"resolution_percent": 50, "samples": 1}},
        headers=system.headers,
    )
    assert r.status_code == 202, r.text
    assert r.json()["test_render"]["frames"] == [1, 3, 5]
    awaiting = await wait_for_events(system, "upload.SceneFilesAwaited", job_id, 1)
    assert awaiting[0]["needed"] and awaiting[0]["paths"][0] == "scene.blend"
    assert awaiting[0]["files_waiting"] == len(data) and awaiting[0]["files_done"] == 0

    # Every file but the cache (some the test frames do not need either: frames 2 and 4).
    me = Uploader(system.api, system.headers)
    for path in sorted(p for p in sessions if p != CACHE):
        upload_id = sessions[path]
        session = await me.get(upload_id)
        await me.send(upload_id, cut(data[path], session["part_size_bytes"]))
        done = await me.complete(upload_id)
        assert done.status_code == 200, done.text

    def test_over(job: dict[str, Any]) -> bool:
        test = job["test_render"] or {}
        return test.get("status") in ("completed", "failed") or job["status"] == "failed"

    ready = await system.wait(job_id, test_over, timeout=300)
    assert ready["test_render"]["status"] == "completed", ready
    # The cache was never sent: the scene is not staged, nothing of the full render ran.
    assert (await me.get(sessions[CACHE]))["status"] == "uploading"
    assert await system.events("upload", "upload.SceneStaged", job_id) == []
    assert await system.events("job", "job.JobQueued", job_id) == []
    assert ready["status"] == "test_render_ready", ready
    steps = {s["name"]: s["status"] for s in ready["steps"]}
    assert steps["stage_scene"] == "running", steps
    rest = await wait_for_events(system, "upload.SceneFilesAwaited", job_id, 2)
    waiting_rest = [e for e in rest if not e["needed"]]
    assert waiting_rest and waiting_rest[-1]["paths"] == [CACHE], rest
    assert waiting_rest[-1]["bytes_waiting"] == len(data[CACHE])

    # The cache is sent: the scene is staged, and the full render renders every frame.
    session = await me.get(sessions[CACHE])
    await me.send(sessions[CACHE], cut(data[CACHE], session["part_size_bytes"]))
    assert (await me.complete(sessions[CACHE])).status_code == 200
    job = await system.finished(job_id, timeout=300)
    assert job["status"] == "completed", job
    assert job["frames_done"] == 5

    [needed] = await system.events("upload", "upload.SceneNeededFilesStaged", job_id)
    [staged] = await system.events("upload", "upload.SceneStaged", job_id)
    [test_done] = await system.events("job", "job.JobTestRenderCompleted", job_id)
    [queued] = await system.events("job", "job.JobQueued", job_id)
    assert at(needed) < at(test_done) < at(staged) < at(queued)
    assert CACHE not in needed["files"] and "scene.blend" in needed["files"]
    assert staged["bytes_copied"] + staged["bytes_prestaged"] == sum(map(len, data.values()))
    logged = await system.events("job", "job.JobStepLogged", job_id)
    assert any("waiting for the upload of 1 file" in e["message"] for e in logged), logged


async def wait_for_events(
    system: RenderSystem, event_type: str, job_id: str, count: int
) -> list[dict[str, Any]]:
    """The job's upload events of ``event_type``, once there are ``count`` of them."""

    async def found() -> list[dict[str, Any]] | None:
        events = await system.events("upload", event_type, job_id)
        return events if len(events) >= count else None

    events: list[dict[str, Any]] = await until(found, f"{count} {event_type}", timeout=60)
    return events
