"""Scenes built by Blender for the scene steps' tests, staged as the upload service stages
them (``<stage root>/staged/<owner>/<sha256>/<files>``), and Blender to read them back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.jobs import FrameRange, OutputFormat, Renderer, RenderSettings, Resolution
from contracts.preparation import JobSceneSettings
from services.scene.steps import bpy_python
from tests.farm.conftest import REPO

BUILDER = REPO / "tests" / "farm" / "blender_scene.py"
OWNER = "usr_scenetest"

#: Scene variants: the builder's options; ``{artist}`` is a folder outside any upload.
VARIANTS: dict[str, list[str]] = {
    "textured": [],
    "absolute": ["--texture-dir", "{artist}/proj/textures"],
    "eevee": ["--engine", "BLENDER_EEVEE_NEXT"],
    "library": ["--library"],
    "compressed": ["--compress"],
    "sequence": ["--sequence", "5"],
    "artist_paths": [
        "--texture-dir",
        "{artist}/proj/textures",
        "--extra-image",
        "C:\\proj\\tex\\wood.png",
        "--extra-image",
        "/Users/anna/proj/Maps/Metal.PNG",
        "--extra-image",
        "//../outside/leaf.png",
        "--extra-image",
        "/Users/anna/proj/a/dup.png",
    ],
}


@pytest.fixture(scope="session")
def blender_python() -> str:
    """The interpreter with ``bpy`` that ``make venv`` installs (or ``RF_BLENDER_PYTHON``):
    it builds the scenes, so it is a Python, never a ``blender`` on PATH."""
    python = os.environ.get("RF_BLENDER_PYTHON") or bpy_python()
    if python is None or not Path(python).is_file():
        pytest.fail(
            "no Blender: run `make venv` (it builds .venv-blender) or set RF_BLENDER_PYTHON"
        )
    return python


@pytest.fixture(scope="session")
def built(blender_python: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``built(variant)``: the folder of that scene (``scene.blend`` and its files), built by
    Blender once per session; the ``absolute`` variants' textures are in ``<folder>.artist``."""
    cache: dict[str, Path] = {}

    def build(variant: str) -> Path:
        if variant not in cache:
            folder = tmp_path_factory.mktemp(variant)
            artist = folder.with_name(folder.name + ".artist")
            args = [a.replace("{artist}", str(artist)) for a in VARIANTS[variant]]
            subprocess.run(
                [blender_python, str(BUILDER), str(folder / "scene.blend"), *args],
                check=True,
                capture_output=True,
                timeout=180,
            )
            cache[variant] = folder
        return cache[variant]

    return build


class Stage:
    """A farm scene root in a test's temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def upload(
        self, source: Path, *, drop: tuple[str, ...] = (), extra: dict[str, Path] | None = None
    ) -> str:
        """Stage ``source``'s files, less ``drop``, plus ``extra`` (relative path: file), as
        one upload; its scene key."""
        extra = extra or {}
        digest = hashlib.sha256(f"{source}{drop}{sorted(extra)}".encode()).hexdigest()
        folder = self.root / "staged" / OWNER / digest
        shutil.copytree(source, folder)
        for rel in drop:
            (folder / rel).unlink()
        for rel, file in extra.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
        (folder / ".rf-staged.json").write_text("{}")  # the stager's marker, not the scene's
        return f"staged/{OWNER}/{digest}/scene.blend"

    def path(self, key: str) -> Path:
        return self.root / key

    def snapshot(self) -> dict[str, str]:
        """Every staged file's SHA-256, by path."""
        staged = self.root / "staged"
        return {
            str(p.relative_to(staged)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(staged.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def stage(tmp_path: Path) -> Stage:
    return Stage(tmp_path / "scenes")


def job_settings(
    *,
    renderer: Renderer = Renderer.blender_cycles,
    frames: tuple[int, int, int] = (1, 3, 1),
    size: tuple[int, int] = (1920, 1080),
    samples: int | None = 8,
    camera: str | None = None,
    output: OutputFormat = OutputFormat.png,
) -> JobSceneSettings:
    """A job's settings; by default the test scene's own."""
    start, end, step = frames
    return JobSceneSettings(
        renderer=renderer,
        frame_range=FrameRange(start=start, end=end, step=step),
        resolution=Resolution(width=size[0], height=size[1]),
        render_settings=RenderSettings(output_format=output, samples=samples, camera=camera),
    )


#: Read a .blend back with Blender: the active scene's settings as JSON.
READ_BACK = """
import json, sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False)
s = bpy.context.scene
r = s.render
print("READ_BACK " + json.dumps({
    "engine": r.engine, "resolution": [r.resolution_x, r.resolution_y, r.resolution_percentage],
    "frames": [s.frame_start, s.frame_end, s.frame_step], "camera": s.camera.name,
    "format": r.image_settings.file_format, "cycles_samples": s.cycles.samples,
    "eevee_samples": s.eevee.taa_render_samples,
    "images": sorted(i.filepath for i in bpy.data.images),
}))
"""


def read_back(blender_python: str, blend: Path) -> dict[str, Any]:
    """The settings Blender reads from ``blend``."""
    out = subprocess.run(
        [blender_python, "-c", READ_BACK, str(blend)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    [line] = [x for x in out.splitlines() if x.startswith("READ_BACK ")]
    answer: dict[str, Any] = json.loads(line.removeprefix("READ_BACK "))
    return answer
