"""Render plugins: ``CommandLine`` and ``Blender`` (real Blender or the built-in renderer)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from deploy.farm import renderer
from deploy.farm.store import as_bool

#: How much of a failing process's output goes into the error report's Title.
STDERR_TAIL_CHARS = 2000


class RenderError(Exception):
    """The task failed; the message becomes the error report's Title."""


class Cancelled(Exception):
    """The task was taken from the worker (requeued, suspended, deleted) or the worker stops."""


@dataclass
class RenderContext:
    """What a plugin run may use: cancellation, a time limit, settings and a log."""

    cancel: threading.Event
    deadline: float | None
    outputs_root: Path
    frame_seconds: float
    blender: str | None
    log_lines: list[str] = field(default_factory=list)
    #: The render's peak memory in bytes so far (:meth:`measured`).
    ram_peak: int = 0
    #: Frames of the task rendered so far (the task's progress).
    frames_done: int = 0

    def check(self) -> None:
        """Raise if the task was cancelled or ran out of time."""
        if self.cancel.is_set():
            raise Cancelled
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RenderError("Error: Task timeout exceeded; the task was stopped.")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` while staying responsive to cancellation and the time limit."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            self.cancel.wait(min(left, 0.05))
        self.check()

    def log(self, line: str) -> None:
        """Add a line to the task's log report."""
        self.log_lines.append(line)

    def measured(self, peak_bytes: int) -> None:
        """A part of the render (a process, the in-process renderer) peaked at this much."""
        self.ram_peak = max(self.ram_peak, peak_bytes)

    def frame_done(self) -> None:
        """One more frame of the task is rendered."""
        self.frames_done += 1


@dataclass(frozen=True)
class TaskSpec:
    """One task to render."""

    plugin: str
    job_name: str
    frames: list[int]
    job_info: dict[str, str]
    plugin_info: dict[str, str]
    env: dict[str, str]
    aux: list[str]


def resolve(path: str, root: Path) -> Path:
    """A path from the job: absolute paths as given (as Deadline does: confining them is the
    submitter's job), relative ones under ``root``, which they must not leave."""
    if "\x00" in path:
        raise RenderError("Error: a path in the job contains a NUL character.")
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    joined = root / candidate
    if not joined.resolve().is_relative_to(root.resolve()):
        raise RenderError(f"Error: the relative path {path!r} leaves the farm's root {root}.")
    return joined


def _run_process(
    args: list[str] | str,
    cwd: Path | None,
    spec: TaskSpec,
    ctx: RenderContext,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run a process to the end; kill it on cancel/timeout; non-zero exit → RenderError.

    ``on_line`` sees each line of its output as it comes. The process is reaped with
    ``wait4``, whose resource usage is the process's own (with any children it waited for):
    its ``ru_maxrss`` is the render's peak memory (:meth:`RenderContext.measured`).
    """
    ctx.log(f"Running: {args if isinstance(args, str) else shlex.join(args)}")
    env = {**os.environ, **spec.env}
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            shell=isinstance(args, str),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise RenderError(f"Error: could not start the process: {exc}") from exc
    outputs: dict[str, str] = {}

    def pump(name: str, stream: IO[str] | None) -> None:
        lines: list[str] = []
        for line in stream if stream is not None else ():
            lines.append(line)
            if on_line is not None and name == "out":
                on_line(line)
        outputs[name] = "".join(lines)

    readers = [
        threading.Thread(target=pump, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=pump, args=("err", proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                ctx.measured(usage.ru_maxrss * 1024)  # Linux reports KiB
                break
            ctx.check()
            ctx.cancel.wait(0.02)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    for reader in readers:
        reader.join(timeout=5)
    out, err = outputs.get("out", ""), outputs.get("err", "")
    if out:
        ctx.log(out.rstrip())
    if err:
        ctx.log(err.rstrip())
    if proc.returncode != 0:
        tail = (err.strip() or out.strip())[-STDERR_TAIL_CHARS:]
        raise RenderError(
            f"Error: Executable returned non-zero exit code {proc.returncode}."
            + (f"\n{tail}" if tail else "")
        )


_FRAME_TOKEN = re.compile(r"<(STARTFRAME|ENDFRAME)(?:%(\d+))?>")


def expand_arguments(arguments: str, start: int, end: int, aux: list[str]) -> str:
    """Expand ``<STARTFRAME>``, ``<ENDFRAME%4>``, ``<QUOTE>`` and ``<AUXFILEn>`` tokens."""

    def frame(match: re.Match[str]) -> str:
        value = start if match.group(1) == "STARTFRAME" else end
        return f"{value:0{int(match.group(2))}d}" if match.group(2) else str(value)

    text = _FRAME_TOKEN.sub(frame, arguments)

    def aux_file(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return aux[index] if index < len(aux) else match.group(0)

    text = re.sub(r"<AUXFILE(\d+)>", aux_file, text)
    return text.replace("<QUOTE>", '"')


def command_line(spec: TaskSpec, ctx: RenderContext) -> None:
    """The ``CommandLine`` plugin: run ``Executable Arguments`` once per task (or per frame)."""
    info = spec.plugin_info
    executable = info.get("Executable", "").strip()
    if not executable:
        raise RenderError("Error: CommandLine job has no Executable in its PluginInfo.")
    cwd_text = info.get("StartupDirectory", "").strip()
    cwd = Path(cwd_text) if cwd_text else None
    shell = as_bool(info.get("ShellExecute"))
    runs = (
        [(f, f, 1) for f in spec.frames]
        if as_bool(info.get("SingleFramesOnly"))
        else [(spec.frames[0], spec.frames[-1], len(spec.frames))]
    )
    for start, end, frames in runs:
        arguments = expand_arguments(info.get("Arguments", ""), start, end, spec.aux)
        if shell:
            _run_process(f"{shlex.quote(executable)} {arguments}", cwd, spec, ctx)
        else:
            _run_process([executable, *shlex.split(arguments)], cwd, spec, ctx)
        ctx.frames_done += frames


def output_pattern(spec: TaskSpec, root: Path) -> str:
    """Where frames go: PluginInfo ``OutputFile``, else ``OutputDirectory0``/``OutputFilename0``."""
    output_file = spec.plugin_info.get("OutputFile", "").strip()
    if output_file:
        return str(resolve(output_file, root))
    directory = spec.job_info.get("OutputDirectory0", "").strip()
    name = spec.job_info.get("OutputFilename0", "").strip()
    if not directory or not name:
        raise RenderError(
            "Error: no output path: set PluginInfo OutputFile or JobInfo OutputDirectory0 and"
            " OutputFilename0."
        )
    return str(resolve(directory, root) / name)


#: Blender's ``-F`` names of the formats.
BLENDER_FORMATS = {
    renderer.ImageFormat.png: "PNG",
    renderer.ImageFormat.exr: "OPEN_EXR",
    renderer.ImageFormat.jpeg: "JPEG",
}
#: Blender engines for PluginInfo ``Renderer`` (Blender's names; ours are mapped too).
ENGINES = {
    "CYCLES": "CYCLES",
    "BLENDER_CYCLES": "CYCLES",
    "BLENDER_EEVEE": "BLENDER_EEVEE",
    "BLENDER_EEVEE_NEXT": "BLENDER_EEVEE_NEXT",
    "EEVEE": "BLENDER_EEVEE",
}


def _positive_int(info: dict[str, str], key: str) -> int | None:
    text = info.get(key, "").strip()
    if not text:
        return None
    try:
        value = int(float(text))
    except ValueError:
        raise RenderError(f"Error: PluginInfo {key} must be a number, not {text!r}.") from None
    if value < 1:
        raise RenderError(f"Error: PluginInfo {key} must be at least 1, not {value}.")
    return value


#: The script Blender runs for a task (``deploy/farm/blender_task.py``).
BLENDER_TASK_SCRIPT = Path(__file__).with_name("blender_task.py")
#: A Python interpreter with the ``bpy`` wheel that ``make venv`` builds.
BLENDER_VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv-blender" / "bin" / "python"


def blender_settings(info: dict[str, str]) -> dict[str, str | int]:
    """The task's render settings from PluginInfo (engine, samples, camera, resolution,
    threads), refusing malformed ones as Blender would."""
    settings: dict[str, str | int] = {}
    engine_text = info.get("Renderer", "").strip().upper()
    engine = ENGINES.get(engine_text)
    if engine_text and engine is None:
        raise RenderError(f"Error: unknown PluginInfo Renderer {info['Renderer']!r}.")
    if engine is not None:
        settings["engine"] = engine
    for key, name in (("Samples", "samples"), ("ResolutionX", "width"), ("ResolutionY", "height")):
        value = _positive_int(info, key)
        if value is not None:
            settings[name] = value
    camera = info.get("Camera", "").strip()
    if camera:
        settings["camera"] = camera
    threads = info.get("Threads", "").strip()
    if threads:
        try:
            settings["threads"] = max(0, int(float(threads)))  # 0: all cores
        except ValueError:
            raise RenderError(
                f"Error: PluginInfo Threads must be a number, not {threads!r}."
            ) from None
    return settings


def blender_command(executable: str, settings: dict[str, object]) -> list[str]:
    """How to run :data:`BLENDER_TASK_SCRIPT`: a Python interpreter (``python*``, with the
    ``bpy`` wheel) runs it directly; a Blender executable runs it in background mode."""
    payload = json.dumps(settings)
    if Path(executable).name.startswith("python"):
        return [executable, str(BLENDER_TASK_SCRIPT), payload]
    return [
        executable,
        "-b",
        "--factory-startup",
        "--python-exit-code",
        "2",
        "--python",
        str(BLENDER_TASK_SCRIPT),
        "--",
        payload,
    ]


def blender(spec: TaskSpec, ctx: RenderContext) -> None:
    """The ``Blender`` plugin: real Blender when the worker has one, else the built-in renderer.

    With Blender, :data:`BLENDER_TASK_SCRIPT` opens ``SceneFile``, applies PluginInfo
    ``OutputFormat`` (Blender's ``-F`` names: ``PNG``, ``OPEN_EXR``, ``JPEG``), ``Renderer``,
    ``Samples``, ``Camera``, ``ResolutionX``/``ResolutionY`` and ``Threads`` (Cycles on the
    CPU), and renders the task's frames. The built-in renderer writes PNG and OpenEXR; it fails
    the task for a format it cannot write, and logs the settings it does not apply (it has no
    scene to set them on).
    """
    info = spec.plugin_info
    scene = info.get("SceneFile", "").strip()
    if not scene:
        raise RenderError("Error: Blender job has no SceneFile in its PluginInfo.")
    pattern = output_pattern(spec, ctx.outputs_root)
    requested = info.get("OutputFormat", "")
    try:
        fmt = renderer.image_format(requested, pattern)
    except renderer.UnsupportedFormat as exc:
        raise RenderError(f"Error: {exc}.") from None
    settings = blender_settings(info)
    if ctx.blender is not None:
        scene_path = resolve(scene, ctx.outputs_root)
        if not scene_path.is_file():
            raise RenderError(f"Error: the scene file {scene_path} does not exist.")
        task: dict[str, object] = {
            **settings,
            "scene": str(scene_path),
            "output": pattern,
            "frames": spec.frames,
        }
        if requested.strip():
            task["format"] = BLENDER_FORMATS[fmt]

        def progress(line: str) -> None:
            if line.startswith("Rendered frame "):  # blender_task.py, after each frame
                ctx.frame_done()

        _run_process(blender_command(ctx.blender, task), None, spec, ctx, progress)
        return
    if fmt not in renderer.WRITABLE:
        raise RenderError(
            f"Error: the built-in renderer cannot write {fmt.name.upper()} (it writes PNG and"
            " OPEN_EXR); render this job with Blender (--blender auto or a path)."
        )
    ignored = {
        key: info[key]
        for key in ("Renderer", "Samples", "Camera", "ResolutionX", "ResolutionY")
        if info.get(key, "").strip()
    }
    if ignored:
        ctx.log(
            "Built-in renderer: no scene to apply "
            + ", ".join(f"{k}={v}" for k, v in ignored.items())
            + f" to; frames are {renderer.WIDTH}x{renderer.HEIGHT}."
        )
    # In-process, so the process's peak RSS says little about the render: its peak is the
    # most memory its Python allocations held at once (tracemalloc, for this task only).
    tracemalloc.start()
    try:
        for frame in spec.frames:
            ctx.sleep(ctx.frame_seconds)
            path = renderer.write_frame(Path(scene).stem, frame, pattern, fmt)
            ctx.log(f"Rendered frame {frame} as {fmt.name.upper()} to {path}")
            ctx.frame_done()
            ctx.measured(tracemalloc.get_traced_memory()[1])
    finally:
        ctx.measured(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


#: Plugins the farm knows, by the JobInfo ``Plugin`` name.
PLUGINS: dict[str, Callable[[TaskSpec, RenderContext], None]] = {
    "CommandLine": command_line,
    "Blender": blender,
}


def find_blender(setting: str) -> str | None:
    """What renders Blender jobs for ``--blender``: ``builtin`` (the built-in renderer), a path
    (a Blender executable, or a Python interpreter with ``bpy``), or ``auto``: ``blender`` on
    PATH, else the ``.venv-blender`` interpreter when it is installed, else built-in."""
    if setting == "builtin":
        return None
    if setting == "auto":
        return shutil.which("blender") or (
            str(BLENDER_VENV_PYTHON) if BLENDER_VENV_PYTHON.is_file() else None
        )
    return setting


def run_plugin(spec: TaskSpec, ctx: RenderContext) -> None:
    """Render a task with its job's plugin; unknown plugins fail like a missing Deadline plugin."""
    plugin = PLUGINS.get(spec.plugin)
    if plugin is None:
        raise RenderError(
            f"Error: Plugin '{spec.plugin}' is not installed on this farm"
            f" (known: {', '.join(sorted(PLUGINS))})."
        )
    plugin(spec, ctx)
