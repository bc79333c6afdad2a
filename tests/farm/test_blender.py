"""The farm's Blender plugin renders real ``.blend`` files with Blender (the ``bpy`` wheel in
``.venv-blender``, Cycles on the CPU). Scenes are built by Blender in the set-up, with an
image texture on disk next to the ``.blend`` (referenced by a relative path)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.farm.conftest import REPO, Farm
from tests.farm.test_deadline_protocol import reports, submit, wait_stat

#: The orange and blue of the scene's checker texture, and Blender's missing-texture magenta.
MAGENTA = (255, 0, 255)


@pytest.fixture(scope="module")
def blender_python() -> str:
    """The interpreter with ``bpy`` that ``make venv`` installs (or ``RF_BLENDER_PYTHON``)."""
    python = os.environ.get("RF_BLENDER_PYTHON") or str(REPO / ".venv-blender" / "bin" / "python")
    if not Path(python).is_file():
        pytest.fail(
            f"no Blender interpreter at {python}: run `make venv` (it builds .venv-blender)"
        )
    return python


@pytest.fixture(scope="module")
def scene(blender_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scene.blend`` and its ``textures/checker.png``, built by Blender."""
    blend = tmp_path_factory.mktemp("scene") / "scene.blend"
    subprocess.run(
        [blender_python, str(Path(__file__).with_name("blender_scene.py")), str(blend)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (blend.parent / "textures" / "checker.png").is_file()
    return blend


@pytest.fixture(scope="module")
def blender_farm(blender_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("blender-farm"), "--blender", blender_python, workers=2)
    yield farm.start()
    farm.stop()
    farm.client.close()


def bridge_job(name: str, scene: Path, output: Path, **plugin_info: Any) -> dict[str, Any]:
    """A Blender job as the Deadline bridge submits it (services/deadline_bridge/commands.py)."""
    return {
        "JobInfo": {
            "Plugin": "Blender",
            "Name": name,
            "Frames": "1-3",
            "ChunkSize": 1,
            "OverrideTaskFailureDetection": True,
            "FailureDetectionTaskErrors": 1,
        },
        "PluginInfo": {
            "SceneFile": str(scene),
            "OutputFile": str(output / "frame_####.png"),
            "Threads": 0,
            "Build": "None",
            "Renderer": "CYCLES",
            "OutputFormat": "PNG",
            "ResolutionX": 96,
            "ResolutionY": 54,
            "Samples": 8,
            **plugin_info,
        },
        "AuxFiles": [],
        "IdOnly": True,
    }


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA PNG (what Blender writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, b""
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            chunks += body
        offset += 12 + length
    raw, stride = zlib.decompress(chunks), width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if method == 1:
                line[i] = (line[i] + left) & 0xFF
            elif method == 2:
                line[i] = (line[i] + up) & 0xFF
            elif method == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif method == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(line)
        previous = line
    pixels = [
        (row[x * channels], row[x * channels + 1], row[x * channels + 2])
        for row in rows
        for x in range(width)
    ]
    return width, height, pixels


def task_log(farm: Farm, job_id: str, task: int = 0) -> str:
    """The log report of one task."""
    response = farm.client.get(
        "/api/taskreports", params={"JobID": job_id, "TaskID": str(task), "Data": "allcontents"}
    )
    [log] = response.json()
    return str(log)


def orange_and_blue(pixels: list[tuple[int, int, int]]) -> tuple[int, int]:
    """How many pixels show the checker's orange and its blue."""
    orange = sum(r > 2 * b + 20 and r > g for r, g, b in pixels)
    blue = sum(b > 2 * r + 20 and b > g for r, g, b in pixels)
    return orange, blue


def test_a_textured_scene_renders_one_png_per_frame_at_the_jobs_settings(
    blender_farm: Farm, scene: Path, tmp_path: Path
) -> None:
    job_id = submit(blender_farm, bridge_job("textured", scene, tmp_path, Camera="CAM_main"))
    wait_stat(blender_farm, job_id, 3, timeout=120)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    for file in files:
        width, height, pixels = png_pixels(file.read_bytes())
        assert (width, height) == (96, 54)
        orange, blue = orange_and_blue(pixels)
        # The cube fills a good part of the frame, textured in both checker colours.
        assert orange > 100 and blue > 100, (file.name, orange, blue)
        assert MAGENTA not in pixels
    # The cube turns between frames 1 and 3: the frames differ.
    assert png_pixels(files[0].read_bytes())[2] != png_pixels(files[2].read_bytes())[2]
    log = task_log(blender_farm, job_id)
    assert "Blender 4.5" in log and "CYCLES, 96x54, camera CAM_main, format PNG" in log
    assert "Rendered frame 1 in" in log and "peak memory" in log


def test_the_scenes_active_camera_renders_when_the_job_names_none(
    blender_farm: Farm, scene: Path, tmp_path: Path
) -> None:
    job = bridge_job("wide", scene, tmp_path)
    job["JobInfo"]["Frames"] = "2"
    job_id = submit(blender_farm, job)
    wait_stat(blender_farm, job_id, 3, timeout=120)
    _, _, pixels = png_pixels((tmp_path / "frame_0002.png").read_bytes())
    # CAM_wide is 30 units away: the cube is a few pixels in the middle of the frame.
    orange, blue = orange_and_blue(pixels)
    assert 0 < orange + blue < 200, (orange, blue)


def test_a_missing_texture_renders_magenta(blender_farm: Farm, scene: Path, tmp_path: Path) -> None:
    moved = tmp_path / "scene"
    moved.mkdir()
    shutil.copy(scene, moved / "scene.blend")  # without its textures/ folder
    job = bridge_job("no-texture", moved / "scene.blend", tmp_path / "out", Camera="CAM_main")
    job["JobInfo"]["Frames"] = "1"
    job_id = submit(blender_farm, job)
    wait_stat(blender_farm, job_id, 3, timeout=120)
    _, _, pixels = png_pixels((tmp_path / "out" / "frame_0001.png").read_bytes())
    assert sum(r > 150 and b > 150 and g < 80 for r, g, b in pixels) > 100


@pytest.mark.parametrize(
    ("plugin_info", "title"),
    [
        ({"Camera": "CAM_missing"}, "the scene has no camera 'CAM_missing'"),
        ({"SceneFile": "/nowhere/scene.blend"}, "the scene file /nowhere/scene.blend does not"),
    ],
)
def test_a_task_blender_cannot_render_fails_with_the_reason(
    blender_farm: Farm,
    scene: Path,
    tmp_path: Path,
    plugin_info: dict[str, str],
    title: str,
) -> None:
    job = bridge_job("broken", scene, tmp_path, **plugin_info)
    job["JobInfo"]["Frames"] = "1"
    job_id = submit(blender_farm, job)
    wait_stat(blender_farm, job_id, 4, timeout=120)
    [error] = reports(blender_farm, job_id, "error")
    assert title in error["Title"]
    assert list(tmp_path.iterdir()) == []
