"""Apply a job's render settings to a prepared .blend: run by Blender's Python, never
imported by the services.

Run as ``PYTHON_WITH_BPY blender_settings.py SETTINGS_JSON`` (the ``bpy`` wheel) or
``blender -b --factory-startup --disable-autoexec --python-exit-code 2 --python
blender_settings.py -- SETTINGS_JSON`` (``services/scene/steps.py`` builds both). It opens
the file (scripts in it never run), sets the frame range, the resolution at 100 %, the
engine, the samples, the camera and the output format, saves the file (no ``.blend1``
backup) and prints one line: ``RF_SETTINGS_RESULT`` and a JSON object saying what changed,
from what to what, and the settings as saved. A camera the file lacks is reported under
``camera_not_found`` and nothing is saved. It depends on nothing but ``bpy`` and the
standard library.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import bpy  # type: ignore[import-not-found]

RESULT_PREFIX = "RF_SETTINGS_RESULT "


def settings_from_argv(argv: list[str]) -> dict[str, Any]:
    """The JSON settings: the argument after ``--`` (Blender) or the first one (bpy)."""
    args = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    if len(args) != 1:
        raise SystemExit(f"usage: blender_settings.py SETTINGS_JSON (got {args!r})")
    settings: dict[str, Any] = json.loads(args[0])
    return settings


def samples_of(scene: Any) -> int | None:
    """The render samples of the scene's engine (None for one without)."""
    engine = scene.render.engine
    if engine == "CYCLES":
        return int(scene.cycles.samples)
    if engine.startswith("BLENDER_EEVEE"):
        return int(scene.eevee.taa_render_samples)
    return None


def read(scene: Any) -> dict[str, Any]:
    """The scene's settings, as ``contracts.scenes.SceneSettings`` names them."""
    render = scene.render
    return {
        "scene": scene.name,
        "engine": render.engine,
        "resolution_x": render.resolution_x,
        "resolution_y": render.resolution_y,
        "resolution_percentage": render.resolution_percentage,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "output_format": render.image_settings.file_format,
        "output_path": render.filepath,
        "camera": scene.camera.name if scene.camera is not None else None,
        "samples": samples_of(scene),
        "blender_version": "{}.{}".format(*bpy.data.version[:2]),
    }


def set_engine(scene: Any, engines: list[str]) -> None:
    """The first of ``engines`` this Blender knows (Eevee's id changed between versions)."""
    for engine in engines:
        try:
            scene.render.engine = engine
            return
        except TypeError:
            continue
    raise SystemExit(f"this Blender knows none of the engines {engines}")


def apply(scene: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Set the job's settings; the cameras missing (none, or the one asked for)."""
    render = scene.render
    set_engine(scene, job["engines"])
    # The start first: Blender moves the end along when the start passes it.
    scene.frame_start = job["frame_start"]
    scene.frame_end = job["frame_end"]
    scene.frame_step = job["frame_step"]
    render.resolution_x = job["resolution_x"]
    render.resolution_y = job["resolution_y"]
    render.resolution_percentage = 100
    if job.get("samples") is not None:
        if render.engine == "CYCLES":
            scene.cycles.samples = job["samples"]
        else:
            scene.eevee.taa_render_samples = job["samples"]
    render.image_settings.file_format = job["output_format"]
    camera = job.get("camera")
    if camera is None:
        return []
    obj = bpy.data.objects.get(camera)
    if obj is None or obj.type != "CAMERA":
        cameras = sorted(o.name for o in bpy.data.objects if o.type == "CAMERA")
        return [{"camera": camera, "cameras": cameras}]
    scene.camera = obj
    return []


def main() -> None:
    """Open, apply, save, print the result."""
    job = settings_from_argv(sys.argv)
    preferences = bpy.context.preferences
    preferences.filepaths.use_scripts_auto_execute = False
    preferences.filepaths.save_version = 0  # no .blend1 beside the prepared file
    bpy.ops.wm.open_mainfile(filepath=job["blend"], load_ui=False)
    scene = bpy.context.scene
    before = read(scene)
    missing = apply(scene, job)
    saved = not missing
    if saved:
        bpy.ops.wm.save_mainfile(filepath=job["blend"])
        bpy.ops.wm.open_mainfile(filepath=job["blend"], load_ui=False)  # read back as saved
        scene = bpy.context.scene
    else:
        bpy.ops.wm.open_mainfile(filepath=job["blend"], load_ui=False)  # as it was
        scene = bpy.context.scene
    after = read(scene)
    changes = [
        {"setting": key, "before": before[key], "after": after[key]}
        for key in before
        if key not in ("scene", "blender_version", "output_path") and before[key] != after[key]
    ]
    answer = {
        "saved": saved,
        "changes": changes,
        "camera_not_found": missing,
        "settings": after,
        "blender_version": bpy.app.version_string,
    }
    print(RESULT_PREFIX + json.dumps(answer))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
