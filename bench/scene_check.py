"""Scene check time per 1,000 assets (and repathing the same scene).

A scene with 1,000 image textures (each its own small PNG under ``//textures/``, each an
image datablock) is built by Blender once and cached under ``.run/bench/``; each round
stages a copy under a temporary scene root as the upload service does and times
:func:`services.scene.steps.check_scene` over it (BAT's trace, the upload's index, the
findings), then :func:`repath_scene` once (the prepared copy, assets hard-linked).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.infra import REPO_ROOT
from contracts.jobs import FrameRange, Renderer, Resolution
from contracts.preparation import JobSceneSettings
from services.scene.steps import bpy_python, check_scene, repath_scene

ASSETS = 1000
ROUNDS = 5

#: Run by Blender's Python: ``SCRIPT OUT.blend N``.
BUILD_SCRIPT = """
import shutil, sys
from pathlib import Path
import bpy
blend, n = Path(sys.argv[1]), int(sys.argv[2])
textures = blend.parent / "textures"
textures.mkdir(parents=True, exist_ok=True)
bpy.ops.wm.read_factory_settings(use_empty=True)
seed = bpy.data.images.new("seed", 8, 8)
seed.filepath_raw = str(textures / "t0000.png")
seed.file_format = "PNG"
seed.save()
bpy.data.images.remove(seed)
for i in range(1, n):
    shutil.copyfile(textures / "t0000.png", textures / f"t{i:04d}.png")
for i in range(n):
    image = bpy.data.images.new(f"t{i:04d}", 8, 8)
    image.source = "FILE"
    image.filepath = str(textures / f"t{i:04d}.png")
    image.use_fake_user = True
bpy.ops.object.camera_add()
bpy.context.scene.camera = bpy.context.active_object
bpy.ops.wm.save_as_mainfile(filepath=str(blend), relative_remap=True)
"""


def scene_folder(assets: int = ASSETS) -> Path:
    """The cached scene with ``assets`` textures (built by Blender the first time)."""
    digest = hashlib.sha256(BUILD_SCRIPT.encode()).hexdigest()[:8]
    folder = REPO_ROOT / ".run" / "bench" / f"scene-{assets}-assets-{digest}"
    if (folder / "scene.blend").is_file():
        return folder
    blender = os.environ.get("RF_BLENDER_PYTHON") or bpy_python()
    if blender is None:
        raise RuntimeError("no Blender: run `make venv` (it builds .venv-blender)")
    building = folder.with_name(folder.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    subprocess.run(
        [blender, "-c", BUILD_SCRIPT, str(building / "scene.blend"), str(assets)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    building.rename(folder)
    return folder


def measure_scene_check(
    tmpdir: Path, *, assets: int = ASSETS, rounds: int = ROUNDS
) -> dict[str, Any]:
    """:func:`scene_check_figures` in an event loop of its own (from async code, await that
    instead, or run this in a thread)."""
    return asyncio.run(scene_check_figures(tmpdir, assets=assets, rounds=rounds))


async def scene_check_figures(
    tmpdir: Path, *, assets: int = ASSETS, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Time the scene check (``rounds`` times) and repathing (once) of a scene with
    ``assets`` textures staged under ``tmpdir``; seconds, and per 1,000 assets."""
    source = await asyncio.to_thread(scene_folder, assets)
    root = Path(tmpdir) / "scene-check"
    shutil.rmtree(root, ignore_errors=True)
    key = "staged/usr_bench/" + "0" * 64 + "/scene.blend"
    shutil.copytree(source, root / key.rsplit("/", 1)[0])
    job = JobSceneSettings(
        renderer=Renderer.blender_cycles,
        frame_range=FrameRange(start=1, end=250),
        resolution=Resolution(width=1920, height=1080),
    )
    try:
        seconds: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = await check_scene(root, key, job)
            seconds.append(time.perf_counter() - started)
        assert len(result.assets) == assets, "every texture traced"
        assert all(a.present for a in result.assets)
        started = time.perf_counter()
        repathed = await repath_scene(root, key, "job_bench")
        repath_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per = 1000 / assets
    return {
        "assets": assets,
        "rounds": rounds,
        "check_seconds_median": statistics.median(seconds),
        "check_seconds_min": min(seconds),
        "check_seconds_per_1000_assets": statistics.median(seconds) * per,
        "repath_seconds": repath_seconds,
        "repath_seconds_per_1000_assets": repath_seconds * per,
        "repath_files_linked": repathed.files_linked,
        "findings": len(result.findings),
    }


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure_scene_check(Path(tmp)), indent=1))
