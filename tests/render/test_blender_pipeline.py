"""A real ``.blend`` through the whole pipeline, as an agent drives it over the API: uploaded
as a manifest with its texture, staged, checked, repathed, given the job's settings, a test
render of one frame at half size and fewer samples (with its seconds, peak memory, a download
URL and a re-estimate from the measured frame scaled to the job's settings), then the full
render started by the user; every frame rendered by Blender (Cycles on the CPU) at the job's
size, with pixels in it, and its task's seconds and peak memory on the frames page."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from services.scene.steps import bpy_python
from tests.render.conftest import RenderSystem
from tests.scene.conftest import blender_python, built
from tests.upload.protocol import Uploader, cut, sha256_hex

__all__ = ["blender_python", "built"]

WIDTH, HEIGHT = 160, 90


@pytest.fixture
def farm_blender() -> str:
    python = bpy_python()
    if python is None:
        pytest.fail("no Blender: run `make venv` (it builds .venv-blender)")
    return python


@pytest.fixture
def scene_env() -> dict[str, str]:
    return {}  # scenes must be .blend files: the scene service's defaults


async def upload_folder(system: RenderSystem, folder: Path) -> str:
    """The scene folder as a manifest (main file scene.blend); its id once complete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = [
        {
            "path": p.relative_to(folder).as_posix(),
            "size_bytes": p.stat().st_size,
            "sha256": sha256_hex(p.read_bytes()),
        }
        for p in files
    ]
    r = await system.api.post(
        "/v1/manifests",
        json={"main_file": "scene.blend", "files": entries},
        headers=system.headers,
    )
    assert r.status_code == 201, r.text
    manifest: dict[str, Any] = r.json()
    me = Uploader(system.api, system.headers)
    by_sha = {sha256_hex(p.read_bytes()): p.read_bytes() for p in files}
    for missing in manifest["missing"]:
        session = await me.get(missing["upload_id"])
        await me.send(
            missing["upload_id"], cut(by_sha[missing["sha256"]], session["part_size_bytes"])
        )
        done = await me.complete(missing["upload_id"])
        assert done.status_code == 200, done.text
    r = await system.api.post(
        f"/v1/manifests/{manifest['manifest_id']}/complete", headers=system.headers
    )
    assert r.status_code == 200, r.text
    manifest_id: str = manifest["manifest_id"]
    return manifest_id


def steps(job: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in job["steps"]}


def assert_rendered(png: bytes, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    image = Image.open(io.BytesIO(png))
    assert image.size == size
    colours = image.convert("RGB").getcolors(maxcolors=size[0] * size[1])
    assert colours is None or len(colours) > 10  # a rendered cube and texture, not a blank


async def test_a_textured_blend_is_prepared_test_rendered_then_fully_rendered_by_blender(
    render_system: RenderSystem, built: Callable[[str], Path]
) -> None:
    system = render_system
    scene_id = await upload_folder(system, built("textured"))
    job = await system.create_job(
        scene_id,
        frame_range={"start": 1, "end": 3},
        resolution={"width": WIDTH, "height": HEIGHT},
        render_settings={"samples": 4},
        start_full_render=False,
    )
    job_id = job["job_id"]
    # Prepared from the files the test frames need, a job may be ready before its stage
    # step ends (here every file is needed: it ends at once).
    job = await system.wait(
        job_id,
        lambda j: (
            j["status"] == "failed"
            or (j["status"] == "ready" and steps(j)["stage_scene"] != "running")
        ),
        timeout=180,
    )
    assert job["status"] == "ready", job
    assert [steps(job)[s] for s in ("stage_scene", "scene_check", "repath", "render_settings")] == [
        "succeeded"
    ] * 4
    assert "start_full_render" in job["allowed_actions"] and "test_render" in job["allowed_actions"]
    before = (await system.api.get(f"/v1/jobs/{job_id}/cost", headers=system.headers)).json()

    preview = {"resolution_percent": 50, "samples": 2}
    r = await system.api.post(
        f"/v1/jobs/{job_id}/test-render",
        json={"frames": [2], "quality": preview},
        headers=system.headers,
    )
    assert r.status_code == 202, r.text
    test = r.json()["test_render"]
    assert (test["frames"], test["deadline_missed"]) == ([2], False)
    assert test["quality"] == preview
    assert test["resolution"] == {"width": WIDTH // 2, "height": HEIGHT // 2}
    assert 0 < test["seconds_left"] <= 600
    again = await system.api.post(f"/v1/jobs/{job_id}/test-render", headers=system.headers)
    assert again.status_code == 409 and again.json()["code"] == "test_render_in_progress"

    job = await system.wait(
        job_id, lambda j: j["test_render"]["status"] in ("completed", "failed"), timeout=300
    )
    test = job["test_render"]
    assert (test["status"], job["status"]) == ("completed", "test_render_ready"), job
    [frame] = test["results"]
    assert frame["output"]["frame"] == 2 and frame["render_seconds"] > 0
    assert frame["peak_memory_bytes"] and frame["peak_memory_bytes"] > 10 * 2**20
    assert test["ready_in_seconds"] > 0 and test["seconds_left"] is None
    url = await system.api.post(
        f"/v1/outputs/{frame['output']['output_id']}/download-url", headers=system.headers
    )
    assert url.status_code == 200, url.text
    thumb = await system.api.post(
        f"/v1/outputs/{frame['output']['output_id']}/download-url",
        json={"thumbnail": True},
        headers=system.headers,
    )
    assert thumb.status_code == 200, thumb.text
    async with httpx.AsyncClient() as client:
        assert_rendered((await client.get(url.json()["url"])).content, (WIDTH // 2, HEIGHT // 2))
        jpeg = (await client.get(thumb.json()["url"])).content
    assert hashlib.sha256(jpeg).hexdigest() == thumb.json()["sha256"]
    assert thumb.json()["file_name"].endswith(".jpg")
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and max(image.size) <= 256

    after = (await system.api.get(f"/v1/jobs/{job_id}/cost", headers=system.headers)).json()
    assert after["estimate"]["assumptions"]["seconds_source"] == "test_render"
    assert before["estimate"]["assumptions"]["seconds_source"] == "model"

    r = await system.api.post(f"/v1/jobs/{job_id}/start", headers=system.headers)
    assert r.status_code == 200, r.text
    assert r.json()["full_render_released_by"] == "user"
    job = await system.finished(job_id, timeout=300)
    assert job["status"] == "completed", job
    assert job["frames_done"] == 3
    full_render = system.outputs.rglob(f"{job_id}.full.1/frame_*")
    full = sorted(p.name for p in full_render)
    assert full == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    for path in system.outputs.rglob(f"{job_id}.full.1/frame_*"):
        assert_rendered(path.read_bytes())
    page = (await system.api.get(f"/v1/jobs/{job_id}/frames", headers=system.headers)).json()
    assert [f["frame"] for f in page["items"]] == [1, 2, 3]
    for frame in page["items"]:
        assert frame["task_id"] is not None and frame["render_seconds"] > 0
        assert frame["peak_memory_bytes"] > 10 * 2**20
