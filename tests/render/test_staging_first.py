"""A test render before the whole scene is staged: a real ``.blend`` manifest (a texture, an
image sequence, and a big file nothing references), its copy to the farm paced so that the
rest of it takes a while. The files the test frames need are staged first, the scene is
checked, repathed and given the job's settings from them, and the test render renders on the
farm (Blender) while the rest is still being copied; the full render starts only once the
whole scene is staged, and renders from the same prepared copy."""

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
from tests.render.test_blender_pipeline import upload_folder
from tests.scene.conftest import blender_python, built

__all__ = ["blender_python", "built"]

#: The file nothing references, copied after the needed files at RATE bytes a second: the
#: rest of the scene takes about 75 s to stage (room for a test render on a busy machine),
#: while the test render needs the ~0.4 MB (about 3 s at that rate) the test frames use.
REST_BYTES = 12 * 2**20
RATE = 160 * 1024


@pytest.fixture
def farm_blender() -> str:
    python = bpy_python()
    if python is None:
        pytest.fail("no Blender: run `make venv` (it builds .venv-blender)")
    return python


@pytest.fixture
def scene_env() -> dict[str, str]:
    """Scenes must be .blend files; the stager keeps to RATE, in small chunks."""
    return {"RF_STAGE_MAX_BYTES_PER_SECOND": str(RATE), "RF_STAGE_CHUNK_BYTES": "65536"}


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])


async def test_a_test_render_renders_on_the_needed_files_while_the_rest_of_the_scene_stages(
    render_system: RenderSystem, built: Callable[[str], Path], tmp_path: Path
) -> None:
    system = render_system
    folder = tmp_path / "shot"
    shutil.copytree(built("sequence"), folder)
    (folder / "cache").mkdir()
    (folder / "cache" / "sim.bin").write_bytes(os.urandom(REST_BYTES))
    scene_id = await upload_folder(system, folder)
    job = await system.create_job(
        scene_id,
        frame_range={"start": 1, "end": 5},
        resolution={"width": 64, "height": 36},
        render_settings={"samples": 2},
    )
    job_id = job["job_id"]
    r = await system.api.post(
        f"/v1/jobs/{job_id}/test-render",
        json={"quality": {"resolution_percent": 50, "samples": 1}},
        headers=system.headers,
    )
    assert r.status_code == 202, r.text
    assert r.json()["test_render"]["frames"] == [1, 3, 5]

    job = await system.finished(job_id, timeout=300)
    assert job["status"] == "completed", job
    assert job["test_render"]["status"] == "completed"
    assert job["frames_done"] == 5

    [needed] = await system.events("upload", "upload.SceneNeededFilesStaged", job_id)
    [staged] = await system.events("upload", "upload.SceneStaged", job_id)
    [test_started] = await system.events("job", "job.JobTestRenderStarted", job_id)
    [test_done] = await system.events("job", "job.JobTestRenderCompleted", job_id)
    [queued] = await system.events("job", "job.JobQueued", job_id)
    timeline = {
        "needed": at(needed),
        "test started": at(test_started),
        "test completed": at(test_done),
        "staged": at(staged),
        "full queued": at(queued),
    }
    # The test render ran on the needed files, and was over before the rest was staged;
    # the full render waited for the whole scene.
    assert list(timeline.values()) == sorted(timeline.values()), timeline
    assert needed["files"] == [
        "scene.blend",
        "seq/frame_0001.png",
        "seq/frame_0003.png",
        "seq/frame_0005.png",
        "textures/checker.png",
    ]
    assert needed["bytes_total"] - needed["bytes_needed"] > REST_BYTES

    # The scene check judged the scene against the manifest, not against what was copied.
    [checked] = await system.events("job", "job.JobSceneChecked", job_id)
    assert (checked["assets_total"], checked["assets_missing"]) == (2, 0)
    # The prepared copy holds what the test frames used; the other entries are links to
    # where they were still being staged, there now.
    prepared = system.scenes / "prepared" / job_id
    for frame in (2, 4):
        entry = prepared / f"seq/frame_{frame:04d}.png"
        assert entry.is_symlink() and entry.resolve().is_file(), entry
    assert (prepared / "seq/frame_0003.png").is_file()
    assert not (prepared / "seq/frame_0003.png").is_symlink()
