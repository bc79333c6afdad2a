"""The scene steps before a render: the scene check lists what a scene uses and what is wrong
with it, repathing makes a prepared copy that renders on the farm, and the settings step
applies the job's settings with Blender. Scenes are built by Blender in the set-up."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from blender_asset_tracer import blendfile, trace

from contracts.errors import ScenePathRefused
from contracts.jobs import LogLevel, OutputFormat, Renderer
from contracts.scenes import (
    AssetKind,
    AssetMatch,
    FindingCode,
    FindingSeverity,
    RepathResult,
    SceneCheckResult,
)
from libs.blendtrace import write_listing
from services.scene.steps import apply_render_settings, check_scene, repath_scene
from tests.farm.conftest import REPO
from tests.farm.test_blender import MAGENTA, orange_and_blue, png_pixels
from tests.scene.conftest import OWNER, Stage, job_settings, read_back

Built = Callable[[str], Path]
TASK_SCRIPT = REPO / "deploy" / "farm" / "blender_task.py"


class Reports:
    """What a step reported through its callbacks."""

    def __init__(self) -> None:
        self.progress: list[tuple[int, int]] = []
        self.logs: list[tuple[LogLevel, str]] = []

    async def on_progress(self, done: int, total: int) -> None:
        self.progress.append((done, total))

    async def on_log(self, level: LogLevel, message: str) -> None:
        self.logs.append((level, message))


def codes(result: SceneCheckResult) -> dict[FindingCode, FindingSeverity]:
    return {f.code: f.severity for f in result.findings}


def traced_paths(blend: Path) -> list[tuple[bytes, Path]]:
    """Every asset path BAT finds in ``blend`` (and the libraries it links), as referenced
    and as resolved."""
    try:
        return [(bytes(u.asset_path), Path(u.abspath)) for u in trace.deps(blend)]
    finally:
        blendfile.close_all_cached()


def render(blender_python: str, blend: Path, out: Path) -> list[tuple[int, int, int]]:
    """Frame 1 of ``blend`` at 64x36, 1 sample, from CAM_main, as a farm task renders it."""
    task = {
        "scene": str(blend),
        "output": str(out / "frame_####"),
        "frames": [1],
        "engine": "CYCLES",
        "samples": 1,
        "width": 64,
        "height": 36,
        "camera": "CAM_main",
        "format": "PNG",
    }
    subprocess.run(
        [blender_python, str(TASK_SCRIPT), json.dumps(task)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    width, height, pixels = png_pixels((out / "frame_0001.png").read_bytes())
    assert (width, height) == (64, 36)
    return pixels


# -- the scene check ----------------------------------------------------------------------


async def test_a_complete_scene_lists_its_assets_and_settings_and_finds_nothing(
    built: Built, stage: Stage
) -> None:
    key = stage.upload(built("textured"))
    reports = Reports()
    result = await check_scene(
        stage.root, key, job_settings(), progress=reports.on_progress, log=reports.on_log
    )
    assert result.findings == ()
    [asset] = result.assets
    texture = stage.path(key).parent / "textures" / "checker.png"
    assert asset.path == "//textures/checker.png"
    assert (asset.kind, asset.used_by, asset.referenced_from) == (
        AssetKind.image,
        "IMchecker.png",
        "scene.blend",
    )
    assert (asset.resolved, asset.matched_by, asset.present) == (
        "textures/checker.png",
        AssetMatch.path,
        True,
    )
    assert asset.size_bytes == texture.stat().st_size
    assert asset.frames == "all"
    settings = result.settings
    assert settings is not None
    assert (settings.engine, settings.samples, settings.camera) == ("CYCLES", 8, "CAM_wide")
    assert (settings.resolution_x, settings.resolution_y, settings.resolution_percentage) == (
        1920,
        1080,
        100,
    )
    assert (settings.frame_start, settings.frame_end, settings.frame_step) == (1, 3, 1)
    assert (settings.output_format, settings.blender_version) == ("PNG", "4.5")
    assert result.compressed is False
    assert reports.progress[-1] == (1, 1)
    assert any("1 assets, 0 missing" in m for _, m in reports.logs)


async def test_a_texture_not_uploaded_is_a_warning_naming_it(built: Built, stage: Stage) -> None:
    key = stage.upload(built("textured"), drop=("textures/checker.png",))
    result = await check_scene(stage.root, key, job_settings())
    [finding] = result.findings
    assert (finding.code, finding.severity, finding.path) == (
        FindingCode.asset_missing,
        FindingSeverity.warning,
        "//textures/checker.png",
    )
    [asset] = result.assets
    assert (asset.present, asset.resolved, asset.size_bytes) == (False, None, None)
    assert result.errors == ()


@pytest.mark.parametrize(
    ("uploaded_at", "matched_by", "severity"),
    [
        ("textures/checker.png", AssetMatch.tail, FindingSeverity.info),
        ("maps/checker.png", AssetMatch.basename, FindingSeverity.warning),
    ],
)
async def test_an_absolute_path_from_the_artists_machine_finds_the_uploaded_file(
    built: Built,
    stage: Stage,
    uploaded_at: str,
    matched_by: AssetMatch,
    severity: FindingSeverity,
) -> None:
    scene = built("absolute")
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    key = stage.upload(scene, extra={uploaded_at: texture})
    result = await check_scene(stage.root, key, job_settings())
    [finding] = result.findings
    assert (finding.code, finding.severity, finding.path) == (
        FindingCode.asset_outside_upload,
        severity,
        str(texture),
    )
    assert uploaded_at in finding.message
    [asset] = result.assets
    assert (asset.path, asset.resolved, asset.matched_by, asset.present) == (
        str(texture),
        uploaded_at,
        matched_by,
        True,
    )


async def test_paths_outside_the_upload_match_by_tail_then_file_name_else_are_missing(
    built: Built, stage: Stage
) -> None:
    scene = built("artist_paths")
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    key = stage.upload(
        scene,
        extra={
            "textures/checker.png": texture,
            "tex/wood.png": texture,
            "maps/metal.png": texture,
            "x/dup.png": texture,
            "y/dup.png": texture,
        },
    )
    result = await check_scene(stage.root, key, job_settings())
    found = {a.path: (a.resolved, a.matched_by) for a in result.assets}
    assert found == {
        str(texture): ("textures/checker.png", AssetMatch.tail),
        "C:/proj/tex/wood.png": ("tex/wood.png", AssetMatch.tail),  # a Windows path
        "/Users/anna/proj/Maps/Metal.PNG": ("maps/metal.png", AssetMatch.tail),  # any case
        "//../outside/leaf.png": (None, AssetMatch.none),  # leaves the folder, no such file
        "/Users/anna/proj/a/dup.png": (None, AssetMatch.none),  # two uploaded dup.png
    }
    outside = {f.path for f in result.findings if f.code is FindingCode.asset_outside_upload}
    assert outside == set(found)
    missing = {f.path for f in result.findings if f.code is FindingCode.asset_missing}
    assert missing == {"//../outside/leaf.png", "/Users/anna/proj/a/dup.png"}
    [dup] = [f for f in result.findings if f.path == "/Users/anna/proj/a/dup.png"][:1]
    assert "2 uploaded files end with dup.png" in dup.message


async def test_a_scene_set_up_for_eevee_warns_a_cycles_job(built: Built, stage: Stage) -> None:
    key = stage.upload(built("eevee"))
    result = await check_scene(stage.root, key, job_settings(samples=None))
    assert codes(result) == {FindingCode.engine_differs: FindingSeverity.warning}
    assert result.findings[0].setting == "engine"
    assert result.settings is not None and result.settings.engine == "BLENDER_EEVEE_NEXT"
    eevee_job = job_settings(renderer=Renderer.blender_eevee, samples=None)
    assert (await check_scene(stage.root, key, eevee_job)).findings == ()


async def test_settings_other_than_the_jobs_are_reported_as_the_settings_step_will_apply_them(
    built: Built, stage: Stage
) -> None:
    key = stage.upload(built("textured"))
    same_aspect = job_settings(
        frames=(2, 3, 1), size=(64, 36), samples=2, camera="CAM_main", output=OutputFormat.exr
    )
    result = await check_scene(stage.root, key, same_aspect)
    assert codes(result) == {
        FindingCode.resolution_differs: FindingSeverity.info,
        FindingCode.frame_range_differs: FindingSeverity.info,
        FindingCode.output_format_differs: FindingSeverity.info,
        FindingCode.samples_differ: FindingSeverity.info,
        FindingCode.camera_differs: FindingSeverity.info,
    }
    assert {f.setting for f in result.findings} == {
        "resolution",
        "frame_range",
        "output_format",
        "samples",
        "camera",
    }
    # Another aspect ratio changes the framing; frames the scene does not animate may hold.
    reframed = await check_scene(stage.root, key, job_settings(frames=(1, 50, 1), size=(64, 64)))
    assert codes(reframed) == {
        FindingCode.resolution_differs: FindingSeverity.warning,
        FindingCode.frame_range_differs: FindingSeverity.warning,
    }


async def test_a_camera_the_scene_lacks_is_an_error(built: Built, stage: Stage) -> None:
    key = stage.upload(built("textured"))
    result = await check_scene(stage.root, key, job_settings(camera="CAM_nope"))
    [error] = result.errors
    assert (error.code, error.setting) == (FindingCode.camera_not_found, "camera")
    assert "CAM_main, CAM_wide" in error.message


async def test_a_linked_library_and_what_it_uses_are_assets(built: Built, stage: Stage) -> None:
    key = stage.upload(built("library"))
    result = await check_scene(stage.root, key, job_settings())
    assert result.findings == ()
    assert [(a.kind, a.path, a.referenced_from, a.resolved) for a in result.assets] == [
        (AssetKind.library, "//lib/props.blend", "scene.blend", "lib/props.blend"),
        (AssetKind.image, "//../textures/checker.png", "lib/props.blend", "textures/checker.png"),
    ]


async def test_a_missing_linked_library_is_an_error(built: Built, stage: Stage) -> None:
    key = stage.upload(built("library"), drop=("lib/props.blend",))
    result = await check_scene(stage.root, key, job_settings())
    [error] = result.errors
    assert (error.code, error.path) == (FindingCode.library_missing, "//lib/props.blend")


async def test_a_compressed_blend_is_read_like_any_other(built: Built, stage: Stage) -> None:
    key = stage.upload(built("compressed"))
    result = await check_scene(stage.root, key, job_settings())
    assert codes(result) == {FindingCode.scene_compressed: FindingSeverity.info}
    assert result.compressed is True
    assert [a.resolved for a in result.assets] == ["textures/checker.png"]


@pytest.mark.parametrize(
    ("variant", "content", "code"),
    [
        ("textured", b"PK\x03\x04 a zip file, not a scene", FindingCode.scene_not_blend),
        ("textured", b"", FindingCode.scene_not_blend),
        ("textured", None, FindingCode.scene_unreadable),  # a .blend cut short
        ("compressed", None, FindingCode.scene_unreadable),  # a zstd .blend cut short
    ],
)
async def test_a_main_file_that_is_no_readable_blend_is_an_error(
    built: Built, stage: Stage, variant: str, content: bytes | None, code: FindingCode
) -> None:
    key = stage.upload(built(variant))
    main = stage.path(key)
    main.write_bytes(content if content is not None else main.read_bytes()[:5000])
    result = await check_scene(stage.root, key, job_settings())
    [error] = result.errors
    assert error.code is code
    assert (result.assets, result.settings) == ((), None)


async def test_a_main_file_not_in_the_upload_is_an_error(built: Built, stage: Stage) -> None:
    key = stage.upload(built("textured"), drop=("scene.blend",))
    result = await check_scene(stage.root, key, job_settings())
    assert [f.code for f in result.errors] == [FindingCode.main_file_missing]


async def test_a_scene_key_outside_the_staged_folders_is_refused(stage: Stage) -> None:
    with pytest.raises(ScenePathRefused):
        await check_scene(stage.root, "staged/../../etc/passwd", job_settings())
    with pytest.raises(ScenePathRefused):
        await check_scene(stage.root, "uploads/usr/x.blend", job_settings())


# -- repathing ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["textured", "absolute", "library", "artist_paths"])
async def test_the_prepared_copy_references_only_relative_paths_inside_it(
    built: Built, stage: Stage, variant: str
) -> None:
    scene = built(variant)
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    extra = {"textures/checker.png": texture} if texture.exists() else {}
    key = stage.upload(scene, extra=extra)
    before = stage.snapshot()
    reports = Reports()
    result = await repath_scene(
        stage.root, key, "job_1", progress=reports.on_progress, log=reports.on_log
    )
    assert result.prepared_key == "prepared/job_1/scene.blend"
    prepared = stage.path(result.prepared_key)
    folder = prepared.parent
    paths = traced_paths(prepared)
    assert paths, "the prepared scene uses its texture"
    for raw, resolved in paths:
        assert raw.startswith(b"//"), raw
        assert resolved.is_relative_to(folder), resolved
    present = [resolved for raw, resolved in paths if not raw.startswith(b"//_missing/")]
    assert all(p.is_file() for p in present)
    # The assets are hard links to the staged files; the staged copy is as it was.
    staged_texture = stage.path(key).parent / "textures" / "checker.png"
    assert (folder / "textures" / "checker.png").stat().st_ino == staged_texture.stat().st_ino
    assert result.files_linked >= 1
    assert stage.snapshot() == before
    assert not (folder / ".rf-staged.json").exists() and not (folder / "pack-info.txt").exists()
    done, total = reports.progress[-1]
    assert done == total > 0


async def test_paths_are_rewritten_to_the_matched_files_or_into_missing(
    built: Built, stage: Stage
) -> None:
    scene = built("artist_paths")
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    extra = {"textures/checker.png": texture, "tex/wood.png": texture, "maps/metal.png": texture}
    key = stage.upload(scene, extra=extra)
    result = await repath_scene(stage.root, key, "job_2")
    assert {(r.before, r.after, r.matched_by) for r in result.rewrites} == {
        (str(texture), "//textures/checker.png", AssetMatch.tail),
        ("C:/proj/tex/wood.png", "//tex/wood.png", AssetMatch.tail),
        ("/Users/anna/proj/Maps/Metal.PNG", "//maps/metal.png", AssetMatch.tail),
        ("//../outside/leaf.png", "//_missing/leaf.png", AssetMatch.none),
        ("/Users/anna/proj/a/dup.png", "//_missing/dup.png", AssetMatch.none),
    }
    assert set(result.missing) == {"//../outside/leaf.png", "/Users/anna/proj/a/dup.png"}
    # Only what the scene uses is in the prepared copy.
    folder = stage.path(result.prepared_key).parent
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "maps/metal.png",
        "scene.blend",
        "tex/wood.png",
        "textures/checker.png",
    ]
    assert result.files == 4


async def test_preparing_again_replaces_the_earlier_copy(built: Built, stage: Stage) -> None:
    key = stage.upload(built("textured"))
    first = await repath_scene(stage.root, key, "job_3")
    stray = stage.path(first.prepared_key).parent / "stray.txt"
    stray.write_text("left from before")
    again = await repath_scene(stage.root, key, "job_3")
    assert again.prepared_key == first.prepared_key
    assert not stray.exists()
    assert not (stage.root / "prepared" / ".incoming" / "job_3").exists()


async def test_the_prepared_scene_renders_with_its_texture(
    built: Built, stage: Stage, blender_python: str, tmp_path: Path
) -> None:
    scene = built("absolute")
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    key = stage.upload(scene, extra={"textures/checker.png": texture})
    result = await repath_scene(stage.root, key, "job_4")
    pixels = render(blender_python, stage.path(result.prepared_key), tmp_path / "out")
    orange, blue = orange_and_blue(pixels)
    assert orange > 20 and blue > 20, (orange, blue)
    assert MAGENTA not in pixels


async def test_a_prepared_scene_with_a_linked_library_renders_it(
    built: Built, stage: Stage, blender_python: str, tmp_path: Path
) -> None:
    key = stage.upload(built("library"))
    result = await repath_scene(stage.root, key, "job_5")
    pixels = render(blender_python, stage.path(result.prepared_key), tmp_path / "out")
    orange, blue = orange_and_blue(pixels)
    assert orange > 20 and blue > 20, (orange, blue)


# -- render settings ----------------------------------------------------------------------


async def test_the_jobs_settings_are_applied_to_the_prepared_scene(
    built: Built, stage: Stage, blender_python: str
) -> None:
    key = stage.upload(built("textured"))
    prepared = await repath_scene(stage.root, key, "job_6")
    job = job_settings(
        frames=(2, 9, 3), size=(64, 36), samples=2, camera="CAM_main", output=OutputFormat.exr
    )
    reports = Reports()
    result = await apply_render_settings(
        stage.root,
        prepared.prepared_key,
        job,
        blender=blender_python,
        progress=reports.on_progress,
        log=reports.on_log,
    )
    assert result.saved and result.findings == ()
    assert {(c.setting, c.before, c.after) for c in result.changes} == {
        ("resolution_x", 1920, 64),
        ("resolution_y", 1080, 36),
        ("frame_start", 1, 2),
        ("frame_end", 3, 9),
        ("frame_step", 1, 3),
        ("samples", 8, 2),
        ("camera", "CAM_wide", "CAM_main"),
        ("output_format", "PNG", "OPEN_EXR"),
    }
    assert reports.progress == [(0, 1), (1, 1)]
    assert ("info", "camera: CAM_wide -> CAM_main") in reports.logs
    saved = read_back(blender_python, stage.path(prepared.prepared_key))
    assert saved["resolution"] == [64, 36, 100]
    assert saved["frames"] == [2, 9, 3]
    assert (saved["engine"], saved["cycles_samples"], saved["camera"], saved["format"]) == (
        "CYCLES",
        2,
        "CAM_main",
        "OPEN_EXR",
    )
    assert saved["images"] == ["//textures/checker.png"]
    assert not stage.path(prepared.prepared_key).with_suffix(".blend1").exists()


async def test_an_eevee_job_switches_the_engine_and_sets_eevee_samples(
    built: Built, stage: Stage, blender_python: str
) -> None:
    key = stage.upload(built("textured"))
    prepared = await repath_scene(stage.root, key, "job_7")
    job = job_settings(renderer=Renderer.blender_eevee, size=(64, 36), samples=3)
    result = await apply_render_settings(
        stage.root, prepared.prepared_key, job, blender=blender_python
    )
    assert ("engine", "CYCLES", "BLENDER_EEVEE_NEXT") in {
        (c.setting, c.before, c.after) for c in result.changes
    }
    saved = read_back(blender_python, stage.path(prepared.prepared_key))
    assert (saved["engine"], saved["eevee_samples"]) == ("BLENDER_EEVEE_NEXT", 3)


async def test_a_camera_the_prepared_scene_lacks_leaves_it_unsaved(
    built: Built, stage: Stage, blender_python: str
) -> None:
    key = stage.upload(built("textured"))
    prepared = await repath_scene(stage.root, key, "job_8")
    blend = stage.path(prepared.prepared_key)
    before = blend.read_bytes()
    result = await apply_render_settings(
        stage.root, prepared.prepared_key, job_settings(camera="CAM_nope"), blender=blender_python
    )
    [finding] = result.findings
    assert (finding.code, finding.severity) == (FindingCode.camera_not_found, "error")
    assert (result.saved, result.changes) == (False, ())
    assert blend.read_bytes() == before


async def test_a_cancelled_step_stops_leaves_nothing_half_made_and_the_next_one_runs(
    built: Built, stage: Stage
) -> None:
    key = stage.upload(built("library"))
    before = stage.snapshot()
    step: asyncio.Task[RepathResult] | None = None

    async def cancel_on_first_progress(done: int, total: int) -> None:
        assert step is not None
        step.cancel()

    step = asyncio.create_task(
        repath_scene(stage.root, key, "job_9", progress=cancel_on_first_progress)
    )
    with pytest.raises(asyncio.CancelledError):
        await step
    assert list((stage.root / "prepared" / ".incoming").iterdir()) == []
    assert stage.snapshot() == before
    again = await repath_scene(stage.root, key, "job_9")
    assert stage.path(again.prepared_key).is_file()


async def test_a_file_outside_the_upload_is_never_read_even_when_the_farm_has_one_there(
    built: Built, stage: Stage
) -> None:
    scene = built("absolute")
    texture = scene.with_name(scene.name + ".artist") / "proj" / "textures" / "checker.png"
    assert texture.is_file()  # on this machine, at the path the scene names
    key = stage.upload(scene)
    result = await check_scene(stage.root, key, job_settings())
    assert codes(result) == {
        FindingCode.asset_outside_upload: FindingSeverity.warning,
        FindingCode.asset_missing: FindingSeverity.warning,
    }
    repathed = await repath_scene(stage.root, key, "job_10")
    [rewrite] = repathed.rewrites
    assert (rewrite.before, rewrite.after) == (str(texture), "//_missing/checker.png")
    folder = stage.path(repathed.prepared_key).parent
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["scene.blend"]


async def test_a_folder_still_being_staged_is_checked_against_its_listing_and_linked_ahead(
    stage: Stage, built: Callable[[str], Path]
) -> None:
    """The needed folder holds the main file, its texture and two of five sequence entries;
    its listing names them all. Nothing is missing, and the prepared copy links the other
    entries to where the staged folder will hold them."""
    source = built("sequence")
    sizes = {p.relative_to(source).as_posix(): p.stat().st_size for p in source.rglob("*.*")}
    staged_to = f"staged/{OWNER}/{'ab' * 32}"
    needed = stage.root / "staged" / ".needed" / "job_early"
    for rel in ("scene.blend", "textures/checker.png", "seq/frame_0001.png", "seq/frame_0003.png"):
        (needed / rel).parent.mkdir(parents=True, exist_ok=True)
        (needed / rel).write_bytes((source / rel).read_bytes())
    write_listing(needed, staged_to, sizes)
    key = "staged/.needed/job_early/scene.blend"

    checked = await check_scene(stage.root, key, job_settings(frames=(1, 5, 1)))
    assert [a.present for a in checked.assets] == [True, True]
    [sequence] = [a for a in checked.assets if a.is_sequence]
    assert sequence.size_bytes == sum(v for k, v in sizes.items() if k.startswith("seq/"))
    assert FindingCode.asset_missing not in codes(checked)

    repathed = await repath_scene(stage.root, key, "job_early")
    prepared = stage.root / "prepared" / "job_early"
    for frame in (2, 4, 5):
        entry = prepared / f"seq/frame_{frame:04d}.png"
        assert entry.is_symlink() and not entry.exists()  # not staged yet
        assert entry.resolve() == (stage.root / staged_to / entry.relative_to(prepared))
    assert (prepared / "seq/frame_0003.png").is_file()
    assert repathed.prepared_key == "prepared/job_early/scene.blend"
    # Once the staged folder is there, the links lead to its files.
    shutil.copytree(source, stage.root / staged_to)
    last = "seq/frame_0005.png"
    assert (prepared / last).read_bytes() == (source / last).read_bytes()
