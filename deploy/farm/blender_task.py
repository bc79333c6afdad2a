"""Render one farm task inside Blender: run by Blender's Python, never imported by the farm.

Run as ``PYTHON_WITH_BPY blender_task.py SETTINGS_JSON`` (the ``bpy`` wheel) or
``blender -b --factory-startup --python-exit-code 2 --python blender_task.py -- SETTINGS_JSON``.
It opens the scene, applies the task's settings (engine, samples, camera, resolution, output
format, threads; Cycles always on the CPU), and renders each frame to the output pattern
(``#`` are the frame digits, as in Blender). One line per frame: seconds and peak memory.
It depends on nothing but ``bpy`` and the standard library.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import bpy  # type: ignore[import-not-found]

#: Exit code for a task that cannot render (bad setting, missing camera).
SETTINGS_ERROR = 2


def settings_from_argv(argv: list[str]) -> dict[str, Any]:
    """The JSON settings: the argument after ``--`` (Blender) or the first one (bpy)."""
    args = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    if len(args) != 1:
        raise SystemExit(f"usage: blender_task.py SETTINGS_JSON (got {args!r})")
    settings: dict[str, Any] = json.loads(args[0])
    return settings


def apply(scene: Any, settings: dict[str, Any]) -> None:
    """Apply the task's settings to the scene; exit with a message for one that cannot apply."""
    render = scene.render
    if settings.get("engine"):
        render.engine = settings["engine"]
    if render.engine == "CYCLES":
        scene.cycles.device = "CPU"
    if settings.get("samples"):
        if render.engine == "CYCLES":
            scene.cycles.samples = settings["samples"]
        else:
            scene.eevee.taa_render_samples = settings["samples"]
    camera = settings.get("camera")
    if camera:
        obj = bpy.data.objects.get(camera)
        if obj is None or obj.type != "CAMERA":
            cameras = sorted(o.name for o in bpy.data.objects if o.type == "CAMERA")
            print(
                f"Error: the scene has no camera {camera!r} (cameras: {cameras})", file=sys.stderr
            )
            raise SystemExit(SETTINGS_ERROR)
        scene.camera = obj
    if scene.camera is None:
        print("Error: the scene has no active camera and the task names none", file=sys.stderr)
        raise SystemExit(SETTINGS_ERROR)
    if settings.get("width"):
        render.resolution_x = settings["width"]
    if settings.get("height"):
        render.resolution_y = settings["height"]
    if settings.get("width") or settings.get("height"):
        render.resolution_percentage = 100
    if settings.get("format"):
        render.image_settings.file_format = settings["format"]
        render.use_file_extension = True
    if settings.get("threads"):
        render.threads_mode = "FIXED"
        render.threads = settings["threads"]
    render.filepath = settings["output"]
    render.use_overwrite = True
    render.use_placeholder = False


def render_frame(scene: Any, frame: int) -> None:
    """Render and write one frame; retry without denoising on a build that has no denoiser."""
    scene.frame_start = scene.frame_end = frame
    try:
        bpy.ops.render.render(animation=True, scene=scene.name)
    except RuntimeError as exc:
        if "Denoise" not in str(exc) or scene.render.engine != "CYCLES":
            raise
        print(f"No denoiser in this Blender build ({exc}); rendering without denoising")
        scene.cycles.use_denoising = False
        bpy.ops.render.render(animation=True, scene=scene.name)


def main() -> None:
    """Open the scene, apply the settings, render the frames."""
    settings = settings_from_argv(sys.argv)
    bpy.ops.wm.open_mainfile(filepath=settings["scene"])
    scene = bpy.context.scene
    apply(scene, settings)
    print(
        f"Blender {bpy.app.version_string}: {scene.render.engine},"
        f" {scene.render.resolution_x}x{scene.render.resolution_y},"
        f" camera {scene.camera.name}, format {scene.render.image_settings.file_format}"
    )
    for frame in settings["frames"]:
        started = time.monotonic()
        render_frame(scene, frame)
        seconds = time.monotonic() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        path = scene.render.frame_path(frame=frame)
        print(
            f"Rendered frame {frame} in {seconds:.2f} s (peak memory {peak_mib:.0f} MiB) to {path}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
