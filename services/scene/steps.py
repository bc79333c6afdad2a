"""The scene steps a job goes through before any render: the scene check, repathing and the
render settings (``docs/pipeline.md``).

Each step is an async function over the farm's scene root (``stage_root``):

* :func:`check_scene` opens the staged main ``.blend`` with blender-asset-tracer (BAT, no
  Blender), lists every file it uses and reports findings (:class:`SceneCheckResult`);
* :func:`repath_scene` makes the job's prepared copy under ``prepared/<job id>/`` with
  BAT's packer: every asset path in it relative (``//...``) and inside that folder, the
  assets hard-linked from the staged copy (which is never changed: other jobs reuse it);
* :func:`apply_render_settings` has Blender apply the job's settings to the prepared copy
  (``blender_settings.py``, run by a Python with ``bpy`` or by a Blender executable).

The blocking work runs in a thread (or in Blender's process); ``progress(done, total)`` and
``log(level, message)`` are optional coroutine functions awaited on the caller's event loop,
in order, progress at most every :data:`PROGRESS_SECONDS` (and always at the end).
Cancelling the awaiting task stops the step: between assets, through BAT's packer abort, or
by killing Blender; a half-made prepared folder is removed.

BAT keeps the ``.blend`` files it opened in a process-wide cache, so the steps of one process
use BAT one at a time (:data:`BAT_LOCK`); run several workers to check scenes in parallel.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from blender_asset_tracer import blendfile
from blender_asset_tracer.blendfile import exceptions as bat_errors
from blender_asset_tracer.blendfile import iterators
from blender_asset_tracer.pack import Packer
from blender_asset_tracer.pack import filesystem as bat_filesystem
from blender_asset_tracer.pack import progress as bat_progress
from blender_asset_tracer.trace import result

from contracts.errors import ScenePathRefused, SceneRepathFailed, SceneSettingsFailed
from contracts.jobs import LogLevel, OutputFormat, Renderer
from contracts.preparation import JobSceneSettings
from contracts.scenes import (
    AssetKind,
    AssetMatch,
    FindingCode,
    FindingSeverity,
    PathRewrite,
    RepathResult,
    SceneAsset,
    SceneCheckResult,
    SceneFinding,
    SceneSettings,
    SettingsResult,
)
from contracts.staging import STAGED_DIR
from libs.blendtrace import BAT_LOCK, SceneFolder, TraceStopped, Use, read_listing, trace_scene
from libs.blendtrace import text as _text
from libs.keys import KeyRefused, check_key

#: Prepared copies live under ``<stage root>/<PREPARED_DIR>/<job id>/``.
PREPARED_DIR = "prepared"
#: Folders being filled, under the prepared root: ``<job id>`` (the copy) and
#: ``<job id>.src`` (the upload, hard-linked, its ``.blend`` files rewritten).
INCOMING = ".incoming"
#: Where a prepared copy points an asset that is outside the upload and matches no file.
MISSING_DIR = "_missing"
#: Progress is handed to the caller at most this often.
PROGRESS_SECONDS = 0.25
#: The bpy script of the settings step.
SETTINGS_SCRIPT = Path(__file__).with_name("blender_settings.py")
#: What the settings script prints before its JSON result line.
RESULT_PREFIX = "RF_SETTINGS_RESULT "
#: Characters of Blender's output kept in an error.
OUTPUT_TAIL_CHARS = 2000
#: Cycles' default render samples: what a file that stores none renders with.
CYCLES_DEFAULT_SAMPLES = 4096

Progress = Callable[[int, int], Awaitable[None]]
Log = Callable[[LogLevel, str], Awaitable[None]]
T = TypeVar("T")

#: Blender's engine ids for a job's renderer (Eevee is BLENDER_EEVEE_NEXT in 4.2-4.5).
ENGINES: dict[Renderer, tuple[str, ...]] = {
    Renderer.blender_cycles: ("CYCLES",),
    Renderer.blender_eevee: ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
}
#: Blender's file format ids for a job's output format.
FORMATS = {OutputFormat.png: "PNG", OutputFormat.exr: "OPEN_EXR", OutputFormat.jpeg: "JPEG"}
#: ``RenderData.im_format.imtype`` (DNA ``R_IMF_IMTYPE_*``) -> Blender's file format id.
IMTYPES = {
    0: "TARGA",
    1: "IRIS",
    4: "JPEG",
    14: "TARGA_RAW",
    17: "PNG",
    20: "BMP",
    21: "HDR",
    22: "TIFF",
    23: "OPEN_EXR",
    24: "FFMPEG",
    26: "CINEON",
    27: "DPX",
    28: "OPEN_EXR_MULTILAYER",
    30: "JPEG2000",
    35: "WEBP",
}
_OB_CAMERA = 11
_MAGIC = {b"BLENDER": "plain", b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


class StepCancelled(TraceStopped):
    """The step's task was cancelled while its thread worked (raised in that thread)."""


# -- keys ---------------------------------------------------------------------------------


def split_scene_key(scene_key: str) -> tuple[str, str]:
    """The staged folder (``staged/<owner>/<sha256>``) and the main file's path inside it,
    of a scene key as the upload service stages it (``services/upload/domain.py``)."""
    try:
        check_key(scene_key, "scene key")
    except KeyRefused as e:
        raise ScenePathRefused(str(e), path=scene_key) from e
    parts = scene_key.split("/")
    if len(parts) < 4 or parts[0] != STAGED_DIR:
        raise ScenePathRefused(
            f"{scene_key!r} is not a staged scene (staged/<owner>/<sha256>/<file>)",
            path=scene_key,
        )
    return "/".join(parts[:3]), "/".join(parts[3:])


def prepared_key(job_id: str, main_file: str) -> str:
    """The prepared main file of a job, relative to the scene root."""
    try:
        check_key(job_id, "job id")
    except KeyRefused as e:
        raise ScenePathRefused(str(e), path=job_id) from e
    if "/" in job_id or job_id.startswith("."):
        raise ScenePathRefused(f"job id {job_id!r} is not one path segment", path=job_id)
    return f"{PREPARED_DIR}/{job_id}/{main_file}"


def _confined(stage_root: Path, key: str) -> Path:
    try:
        check_key(key, "scene key")
    except KeyRefused as e:
        raise ScenePathRefused(str(e), path=key) from e
    return stage_root / key


def find_blender(setting: str = "auto") -> str | None:
    """The Blender the settings step runs: a path (a Python interpreter with ``bpy``, or a
    Blender executable), or ``auto``: ``blender`` on PATH, else the ``.venv-blender`` that
    ``make venv`` builds (at the repository's root, or beside the running venv)."""
    if setting != "auto":
        return setting
    return shutil.which("blender") or bpy_python()


def bpy_python() -> str | None:
    """The Python of the ``.venv-blender`` that ``make venv`` builds (the ``bpy`` wheel), at
    the repository's root or beside the running venv; None when there is none."""
    for folder in (Path(__file__).resolve().parents[2], Path(sys.prefix).parent):
        python = folder / ".venv-blender" / "bin" / "python"
        if python.is_file():
            return str(python)
    return None


# -- reporting from a thread --------------------------------------------------------------


class _Reporter:
    """Used by the step's thread: hands progress and log lines to the event loop, where the
    caller's coroutines are awaited one after the other; says when the step is cancelled."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, progress: Progress | None, log: Log | None
    ) -> None:
        self._loop = loop
        self._progress, self._log = progress, log
        self._queue: asyncio.Queue[tuple[str, Any, Any] | None] = asyncio.Queue()
        self._sent_at = 0.0
        self._last: tuple[int, int] | None = None
        self.cancelled = threading.Event()
        self.on_cancel: list[Callable[[], None]] = []

    def progress(self, done: int, total: int, *, force: bool = False) -> None:
        """Report ``done`` of ``total``; ``force``: the step is done (once it said so, no
        more is sent)."""
        last = self._last
        if self._progress is None or (last is not None and last[0] >= last[1] > 0):
            return
        now = time.monotonic()
        if force or done >= total or now - self._sent_at >= PROGRESS_SECONDS:
            self._sent_at, self._last = now, (done, total)
            self._loop.call_soon_threadsafe(self._queue.put_nowait, ("progress", done, total))

    def log(self, level: LogLevel, message: str) -> None:
        if self._log is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, ("log", level, message))

    def check(self) -> None:
        if self.cancelled.is_set():
            raise StepCancelled

    def cancel(self) -> None:
        self.cancelled.set()
        for hook in self.on_cancel:
            hook()

    async def deliver(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, a, b = item
            if kind == "progress" and self._progress is not None:
                await self._progress(a, b)
            elif kind == "log" and self._log is not None:
                await self._log(a, b)

    def close(self) -> None:
        self._queue.put_nowait(None)


async def _in_thread(
    work: Callable[[_Reporter], T], progress: Progress | None, log: Log | None
) -> T:
    """Run ``work`` in a thread, delivering its reports; on cancel, stop it and wait for it."""
    loop = asyncio.get_running_loop()
    reporter = _Reporter(loop, progress, log)
    delivery = asyncio.create_task(reporter.deliver())
    future = loop.run_in_executor(None, work, reporter)
    try:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            reporter.cancel()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # StepCancelled, or what stopped it first: retrieved
            raise
    finally:
        reporter.close()
        await delivery


# -- the scene's settings, read by BAT ----------------------------------------------------


def _read_settings(bfile: blendfile.BlendFile) -> tuple[SceneSettings, set[str]]:
    """The active scene's render settings, and the names of the file's camera objects
    (linked objects count too: BAT cannot see their type)."""
    scene = _block(bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene"), "scene")
    engine = _text(_bytes(scene.get((b"r", b"engine"))))
    camera = scene.get_pointer(b"camera")
    imtype = scene.get((b"r", b"im_format", b"imtype"))
    samples: int | None = None
    if engine == "CYCLES":
        samples = _cycles_samples(scene)
    elif engine in ENGINES[Renderer.blender_eevee]:
        samples = int(scene.get((b"eevee", b"taa_render_samples")))
    cameras = {
        _text(_bytes(ob.id_name)[2:])
        for ob in bfile.find_blocks_from_code(b"OB")
        if ob[b"type"] == _OB_CAMERA
    }
    cameras |= {
        _text(name[2:])
        for b in bfile.find_blocks_from_code(b"ID")
        if (name := _bytes(b[b"name"])).startswith(b"OB")
    }
    version = bfile.header.version
    settings = SceneSettings(
        scene=_text(_bytes(scene.id_name)[2:]),
        engine=engine,
        resolution_x=scene.get((b"r", b"xsch")),
        resolution_y=scene.get((b"r", b"ysch")),
        resolution_percentage=scene.get((b"r", b"size")),
        frame_start=scene.get((b"r", b"sfra")),
        frame_end=scene.get((b"r", b"efra")),
        frame_step=scene.get((b"r", b"frame_step")),
        output_format=IMTYPES.get(imtype, f"imtype:{imtype}"),
        output_path=_text(_bytes(scene.get((b"r", b"pic")))),
        camera=_text(_bytes(camera.id_name)[2:]) if camera is not None else None,
        samples=samples,
        blender_version=f"{version // 100}.{version % 100}",
    )
    return settings, cameras


def _block(block: blendfile.BlendFileBlock | None, what: str) -> blendfile.BlendFileBlock:
    if block is None:
        raise ValueError(f"the file has no {what}")
    return block


def _bytes(value: object) -> bytes:
    """A char array BAT read, up to its NUL."""
    if not isinstance(value, bytes):
        raise ValueError(f"expected text, read {value!r}")
    return value.split(b"\x00", 1)[0]


def _cycles_samples(scene: blendfile.BlendFileBlock) -> int:
    """``scene.cycles.samples``: an ID property, stored only when it is not the default."""
    props = scene.get_pointer((b"id", b"properties"))
    group = _idp_child(props, b"cycles") if props is not None else None
    samples = _idp_child(group, b"samples") if group is not None else None
    if samples is None:
        return CYCLES_DEFAULT_SAMPLES
    return int(samples.get((b"data", b"val")))


def _idp_child(group: blendfile.BlendFileBlock, name: bytes) -> blendfile.BlendFileBlock | None:
    for child in iterators.listbase(group.get_pointer((b"data", b"group", b"first"))):
        if child[b"name"] == name:
            return child
    return None


# -- the scene check ----------------------------------------------------------------------


async def check_scene(
    stage_root: Path,
    scene_key: str,
    job: JobSceneSettings,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
) -> SceneCheckResult:
    """Check the staged scene ``scene_key`` (relative to ``stage_root``) for the job:
    the files it uses, and its settings against the job's. Findings of severity error must
    stop the job (the caller does). Progress: assets looked at, of those the trace found."""
    return await _in_thread(lambda r: _check(stage_root, scene_key, job, r), progress, log)


def _check(
    stage_root: Path, scene_key: str, job: JobSceneSettings, reporter: _Reporter
) -> SceneCheckResult:
    folder, main = split_scene_key(scene_key)
    root = stage_root / folder
    findings: list[SceneFinding] = []

    def done(
        assets: tuple[SceneAsset, ...] = (),
        settings: SceneSettings | None = None,
        compressed: bool | None = None,
    ) -> SceneCheckResult:
        return SceneCheckResult(
            scene_key=scene_key,
            findings=tuple(findings),
            assets=assets,
            settings=settings,
            compressed=compressed,
        )

    path = root / main
    if not path.is_file():
        findings.append(_finding(FindingCode.main_file_missing, f"{main} is not in the upload"))
        return done()
    with path.open("rb") as f:
        head = f.read(8)
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        findings.append(_not_blend(main, f"it starts with {head[:8]!r}"))
        return done()
    reporter.log(LogLevel.info, f"Tracing {main} ({kind}) with blender-asset-tracer")
    upload = SceneFolder.scan(root)
    with BAT_LOCK:
        try:
            uses, unreadable = trace_scene(upload, main, reporter.check)
            bfile = blendfile.open_cached(path)
            settings, cameras = _read_settings(bfile)
            compressed = bool(bfile.is_compressed)
        except StepCancelled:
            raise
        except Exception as e:  # BAT raises many kinds on a damaged file
            findings.append(_unreadable(main, e))
            return done()
        finally:
            blendfile.close_all_cached()
    if compressed:
        findings.append(
            _finding(
                FindingCode.scene_compressed,
                f"{main} is {kind}-compressed; it was read as it is",
                severity=FindingSeverity.info,
            )
        )
    assets = []
    for i, use in enumerate(uses):
        reporter.check()
        assets.append(_asset(use))
        findings.extend(_asset_findings(use, unreadable))
        reporter.progress(i + 1, len(uses))
    reporter.progress(len(uses), len(uses), force=True)
    findings.extend(_settings_findings(settings, cameras, job))
    missing = sum(not a.present for a in assets)
    reporter.log(
        LogLevel.info,
        f"{len(assets)} assets, {missing} missing; {len(findings)} findings",
    )
    return done(tuple(assets), settings, compressed)


def _asset(use: Use) -> SceneAsset:
    found = use.found
    return SceneAsset(
        path=_text(use.raw),
        kind=use.kind,
        used_by=_text(use.usage.block_name),
        referenced_from=_text(use.blend_rel),
        resolved=_text(found.rel) if found.rel is not None else None,
        matched_by=found.matched_by,
        present=found.rel is not None,
        is_sequence=use.usage.is_sequence,
        size_bytes=found.size if found.rel is not None else None,
    )


def _asset_findings(use: Use, unreadable: dict[str, str]) -> Iterator[SceneFinding]:
    found, path, name = use.found, _text(use.raw), _text(use.usage.block_name)
    library = use.kind is AssetKind.library
    if found.outside:
        if found.rel is not None:
            how = "path's last segments" if found.matched_by is AssetMatch.tail else "file name"
            yield _finding(
                FindingCode.asset_outside_upload,
                f"{name} references {path}, outside the upload; the uploaded"
                f" {_text(found.rel)} (matched by its {how}) is used instead",
                path=path,
                severity=(
                    FindingSeverity.info
                    if found.matched_by is AssetMatch.tail
                    else FindingSeverity.warning
                ),
            )
        else:
            yield _finding(
                FindingCode.asset_outside_upload,
                f"{name} references {path}, outside the upload, and {found.note}",
                path=path,
                severity=FindingSeverity.warning,
            )
    if found.rel is None:
        if library:
            yield _finding(
                FindingCode.library_missing,
                f"the linked library {path} is not in the upload: what {name} links is gone",
                path=path,
            )
        else:
            yield _finding(
                FindingCode.asset_missing,
                f"{path} (used by {name}) is not in the upload; it renders without it",
                path=path,
                severity=FindingSeverity.warning,
            )
    elif library and found.rel in unreadable:
        yield _finding(
            FindingCode.library_missing,
            f"the linked library {path} cannot be read: {_text(unreadable[found.rel])}",
            path=path,
        )


def _settings_findings(
    scene: SceneSettings, cameras: set[str], job: JobSceneSettings
) -> Iterator[SceneFinding]:
    engines = ENGINES[job.renderer]
    if scene.engine not in engines:
        yield _setting(
            "engine",
            FindingCode.engine_differs,
            f"the scene is set up for {scene.engine}; the job renders with {engines[0]}, so"
            " materials and lighting may look different",
            FindingSeverity.warning,
        )
    pct = scene.resolution_percentage / 100
    width, height = round(scene.resolution_x * pct), round(scene.resolution_y * pct)
    want = job.resolution
    if (width, height) != (want.width, want.height):
        same_aspect = abs(width * want.height - height * want.width) <= 0.01 * width * want.height
        yield _setting(
            "resolution",
            FindingCode.resolution_differs,
            f"the scene renders {width}x{height}; the job's {want.width}x{want.height} is"
            " applied" + ("" if same_aspect else ", with another aspect ratio: framing changes"),
            FindingSeverity.info if same_aspect else FindingSeverity.warning,
        )
    frames = job.frame_range
    scene_range = (scene.frame_start, scene.frame_end, scene.frame_step)
    if scene_range != (frames.start, frames.end, frames.step):
        inside = scene.frame_start <= frames.start and frames.end <= scene.frame_end
        yield _setting(
            "frame_range",
            FindingCode.frame_range_differs,
            f"the scene's frames are {scene.frame_start}-{scene.frame_end} step"
            f" {scene.frame_step}; the job's {frames.start}-{frames.end} step {frames.step}"
            " are applied" + ("" if inside else ", some outside the scene's range"),
            FindingSeverity.info if inside else FindingSeverity.warning,
        )
    settings = job.render_settings
    wanted_format = FORMATS[settings.output_format]
    if scene.output_format != wanted_format:
        yield _setting(
            "output_format",
            FindingCode.output_format_differs,
            f"the scene writes {scene.output_format}; the job's {wanted_format} is applied",
            FindingSeverity.info,
        )
    if settings.samples is not None and scene.samples not in (None, settings.samples):
        yield _setting(
            "samples",
            FindingCode.samples_differ,
            f"the scene renders {scene.samples} samples; the job's {settings.samples} are applied",
            FindingSeverity.info,
        )
    if settings.camera is not None:
        if settings.camera not in cameras:
            yield _camera_not_found(settings.camera, sorted(cameras))
        elif settings.camera != scene.camera:
            yield _setting(
                "camera",
                FindingCode.camera_differs,
                f"the scene's active camera is {scene.camera}; the job's {settings.camera} is"
                " applied",
                FindingSeverity.info,
            )
    elif scene.camera is None:
        yield _setting(
            "camera",
            FindingCode.no_camera,
            "the scene has no active camera and the job names none",
            FindingSeverity.error,
        )


def _camera_not_found(camera: str, cameras: list[str]) -> SceneFinding:
    return _setting(
        "camera",
        FindingCode.camera_not_found,
        f"the scene has no camera {camera!r} (cameras: {', '.join(cameras) or 'none'})",
        FindingSeverity.error,
    )


def _finding(
    code: FindingCode,
    message: str,
    *,
    path: str | None = None,
    severity: FindingSeverity = FindingSeverity.error,
) -> SceneFinding:
    return SceneFinding(code=code, severity=severity, message=message, path=path)


def _setting(
    setting: str, code: FindingCode, message: str, severity: FindingSeverity
) -> SceneFinding:
    return SceneFinding(code=code, severity=severity, message=message, setting=setting)


def _unreadable(main: str, error: Exception) -> SceneFinding:
    """scene_not_blend when BAT found no .blend header (once decompressed), else
    scene_unreadable (cut short, damaged, a compression BAT cannot read)."""
    if type(error) is bat_errors.BlendFileError:
        return _not_blend(main, str(error))
    return _finding(
        FindingCode.scene_unreadable,
        f"{main} cannot be read: {type(error).__name__}: {_text(str(error))}",
    )


def _not_blend(main: str, why: str) -> SceneFinding:
    return _finding(FindingCode.scene_not_blend, f"{main} is not a .blend file: {_text(why)}")


# -- repathing ----------------------------------------------------------------------------


async def repath_scene(
    stage_root: Path,
    scene_key: str,
    job_id: str,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
) -> RepathResult:
    """Make the job's prepared copy of the staged scene ``scene_key``: the main ``.blend``
    and the files it uses under ``prepared/<job_id>/`` (an earlier one is replaced), every
    asset path in it ``//`` relative and inside that folder. Assets are hard-linked from the
    staged copy (copied when a link is not possible), ``.blend`` files copied; the staged
    copy is not changed. Progress: bytes placed, of the bytes the copy holds."""
    return await _in_thread(lambda r: _repath(stage_root, scene_key, job_id, r), progress, log)


class _LinkingCopier(bat_filesystem.FileCopier):
    """BAT's copier, hard-linking assets; ``.blend`` files are copied, as they get written."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.linked = 0

    def _copy(self, srcpath: Path, dstpath: Path) -> None:
        if srcpath.suffix.lower() != ".blend":
            try:
                os.link(srcpath, dstpath)
                self.linked += 1
                return
            except OSError:
                pass  # another file system, or links not allowed: copy
        shutil.copyfile(srcpath, dstpath)


class _FarmPacker(Packer):
    """BAT's packer, with :class:`_LinkingCopier`."""

    copier: _LinkingCopier | None = None

    def _create_file_transferer(self) -> _LinkingCopier:
        self.copier = _LinkingCopier()
        return self.copier


class _PackProgress(bat_progress.Callback):
    def __init__(self, reporter: _Reporter, expected: int) -> None:
        self.reporter, self.expected = reporter, expected

    def transfer_progress(self, total_bytes: int, transferred_bytes: int) -> None:
        self.reporter.progress(transferred_bytes, max(total_bytes, self.expected))


def _repath(stage_root: Path, scene_key: str, job_id: str, reporter: _Reporter) -> RepathResult:
    folder, main = split_scene_key(scene_key)
    key = prepared_key(job_id, main)
    root = stage_root / folder
    final = stage_root / PREPARED_DIR / job_id
    incoming = stage_root / PREPARED_DIR / INCOMING / job_id
    source = incoming.with_name(job_id + ".src")
    if not (root / main).is_file():
        raise SceneRepathFailed(f"{scene_key} is not staged", scene_key=scene_key, reason="")
    upload = SceneFolder.scan(root)
    try:
        for leftover in (incoming, source):
            shutil.rmtree(leftover, ignore_errors=True)
        with BAT_LOCK:
            try:
                rewrites, missing, expected, later = _rewrite_into(upload, main, source, reporter)
                reporter.log(LogLevel.info, f"{len(rewrites)} paths rewritten; packing")
                copier = _pack(source, main, incoming, expected, reporter)
                _link_later(stage_root, root, (incoming, final), later, reporter)
            except (StepCancelled, OSError):
                raise
            except Exception as e:
                raise SceneRepathFailed(
                    f"{scene_key} could not be repathed: {type(e).__name__}: {_text(str(e))}",
                    scene_key=scene_key,
                    reason=_text(str(e)),
                ) from e
            finally:
                blendfile.close_all_cached()
        (incoming / "pack-info.txt").unlink(missing_ok=True)
        sizes = [p.stat().st_size for p in incoming.rglob("*") if p.is_file()]
        if final.exists():
            shutil.rmtree(final)
        incoming.rename(final)
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(incoming, ignore_errors=True)
    reporter.progress(expected, expected, force=True)
    return RepathResult(
        job_id=job_id,
        prepared_key=key,
        files=len(sizes),
        files_linked=copier.linked,
        bytes_total=sum(sizes),
        rewrites=tuple(rewrites),
        missing=tuple(missing),
    )


def _link_later(
    stage_root: Path,
    root: Path,
    copy: tuple[Path, Path],
    later: list[str],
    reporter: _Reporter,
) -> None:
    """Symlink each file of ``later`` (not copied yet into the folder ``root`` being staged)
    in the prepared copy being made (``copy``: where it is filled, where it will be) to
    where it will be once the scene is staged (the listing's ``staged_to``), relative to
    the prepared copy's place: the prepared copy is whole the moment the staging ends. The
    packer keeps every path inside the folder where it is, so the links sit where the
    rewritten ``.blend`` files look."""
    listing = read_listing(root)
    if not later or listing is None:
        return
    staged = stage_root / listing.staged_to
    incoming, final = copy
    for rel in later:
        dest = incoming / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(os.path.relpath(staged / rel, (final / rel).parent))
    reporter.log(
        LogLevel.info,
        f"{len(later)} files the scene uses are still being staged: linked to"
        f" {listing.staged_to}, where they will be",
    )


def _rewrite_into(
    upload: SceneFolder, main: str, source: Path, reporter: _Reporter
) -> tuple[list[PathRewrite], list[str], int, list[str]]:
    """Fill ``source`` with the files the scene uses (hard links), each ``.blend`` whose
    paths must change copied and rewritten: a path to an uploaded file becomes ``//``
    relative to it, a path outside the upload that matches nothing points into
    ``//_missing/``. The rewrites, the missing paths, the bytes the prepared copy will
    hold and the files the scene uses that are listed but not copied yet (a folder still
    being staged). Call with :data:`BAT_LOCK` held."""
    uses, _ = trace_scene(upload, main, reporter.check)
    changes: dict[str, list[tuple[Use, bytes]]] = defaultdict(list)
    rewrites: list[PathRewrite] = []
    missing: list[str] = []
    needed: set[str] = {main}
    for use in uses:
        found, raw = use.found, use.raw
        needed |= set(found.files)
        if found.rel is None:
            missing.append(_text(raw))
        if found.rel is None and not found.outside:
            continue  # relative, inside the folder: it stays (and stays missing)
        if found.rel is not None and not found.outside and raw.startswith(b"//"):
            continue  # relative and there
        if found.rel is not None:
            base = posixpath.dirname(use.blend_rel) or "."
            new = "//" + posixpath.relpath(found.rel, base)
        else:
            name = raw.replace(b"\\", b"/").rstrip(b"/").rsplit(b"/", 1)[-1]
            new = f"//{MISSING_DIR}/" + name.decode("utf-8", "surrogateescape")
        encoded = new.encode("utf-8", "surrogateescape")
        changes[use.blend_rel].append((use, encoded))
        rewrites.append(
            PathRewrite(
                blend=_text(use.blend_rel),
                used_by=_text(use.usage.block_name),
                before=_text(raw),
                after=_text(encoded),
                matched_by=found.matched_by,
            )
        )
    later: list[str] = []
    for rel in needed:  # what the scene uses: the packer traces it again from here
        if rel in changes or rel not in upload.sizes:
            continue
        if not (upload.root / rel).is_file():
            later.append(rel)  # listed, still being staged: linked to where it will be
        else:
            target = source / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(upload.root / rel, target)
            except OSError:
                shutil.copyfile(upload.root / rel, target)
    for blend_rel, items in changes.items():
        reporter.check()
        bfile = blendfile.open_cached(upload.root / blend_rel)
        target = source / blend_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        bfile.copy_and_rebind(target, mode="rb+")
        try:
            for use, new_path in items:
                _set_path(bfile, use.usage, new_path)
        finally:
            bfile.close()
    blendfile.close_all_cached()
    present = sum(upload.sizes[r] for r in needed if r in upload.sizes and r not in later)
    return rewrites, missing, present, sorted(later)


def _set_path(bfile: blendfile.BlendFile, usage: result.BlockUsage, new_path: bytes) -> None:
    """Write ``new_path`` into the copy's field that held ``usage``'s path (a strip keeps its
    file name in another block: only its folder is written)."""
    block = _block(bfile.dereference_pointer(usage.block.addr_old), "block to rewrite")
    if usage.path_full_field is not None:
        block.set(usage.path_full_field.name.name_only, new_path)
        return
    assert usage.path_dir_field is not None  # BAT gives a full path or a folder and a name
    block.set(usage.path_dir_field.name.name_only, new_path.rsplit(b"/", 1)[0] + b"/")


def _pack(
    source: Path, main: str, target: Path, expected: int, reporter: _Reporter
) -> _LinkingCopier:
    """BAT's packer from ``source`` (everything in it relative and inside) to ``target``."""
    packer = _FarmPacker(source / main, source, str(target))
    with packer:
        packer.progress_cb = _PackProgress(reporter, expected)
        reporter.on_cancel.append(packer.abort)
        packer.strategise()
        reporter.check()
        packer.execute()
        assert packer.copier is not None  # execute() made it
        return packer.copier


# -- render settings ----------------------------------------------------------------------


def blender_command(blender: str, script: Path, payload: str) -> list[str]:
    """How to run a bpy script: a Python interpreter (``python*``, with the ``bpy`` wheel)
    runs it directly; a Blender executable runs it in background mode."""
    if Path(blender).name.startswith("python"):
        return [blender, str(script), payload]
    return [
        blender,
        "-b",
        "--factory-startup",
        "--disable-autoexec",
        "--python-exit-code",
        "2",
        "--python",
        str(script),
        "--",
        payload,
    ]


async def apply_render_settings(
    stage_root: Path,
    prepared: str,
    job: JobSceneSettings,
    *,
    blender: str,
    timeout_seconds: float = 300.0,
    progress: Progress | None = None,
    log: Log | None = None,
) -> SettingsResult:
    """Apply the job's frame range, resolution (at 100 %), engine, samples, camera and output
    format to the prepared ``.blend`` (``prepared``, relative to ``stage_root``) with Blender
    (``blender``: see :func:`find_blender`), which saves it and reports what changed. A
    camera the scene lacks is a ``camera_not_found`` finding and nothing is saved.
    Progress: 0 of 1 when Blender starts, 1 of 1 when it is done."""
    path = _confined(stage_root, prepared)
    if not path.is_file():
        raise SceneSettingsFailed(
            f"{prepared} does not exist", scene_key=prepared, reason="no such file"
        )
    payload = json.dumps(
        {
            "blend": str(path),
            "engines": list(ENGINES[job.renderer]),
            "frame_start": job.frame_range.start,
            "frame_end": job.frame_range.end,
            "frame_step": job.frame_range.step,
            "resolution_x": job.resolution.width,
            "resolution_y": job.resolution.height,
            "samples": job.render_settings.samples,
            "camera": job.render_settings.camera,
            "output_format": FORMATS[job.render_settings.output_format],
        }
    )
    if progress is not None:
        await progress(0, 1)
    proc = await asyncio.create_subprocess_exec(
        *blender_command(blender, SETTINGS_SCRIPT, payload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_seconds)
    except (TimeoutError, asyncio.CancelledError) as e:
        proc.kill()
        await proc.wait()
        if isinstance(e, TimeoutError):
            raise SceneSettingsFailed(
                f"Blender took more than {timeout_seconds:g} s on {prepared}",
                scene_key=prepared,
                reason="timed out",
            ) from e
        raise
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    lines = [x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = _text((stderr.strip() or stdout.strip())[-OUTPUT_TAIL_CHARS:])
        raise SceneSettingsFailed(
            f"Blender exited with {proc.returncode} applying the job's settings to {prepared}",
            scene_key=prepared,
            reason=tail,
        )
    answer = json.loads(lines[-1][len(RESULT_PREFIX) :])
    findings = tuple(
        _camera_not_found(f["camera"], f["cameras"]) for f in answer.pop("camera_not_found", [])
    )
    result = SettingsResult(prepared_key=prepared, findings=findings, **answer)
    if log is not None:
        for change in result.changes:
            await log(LogLevel.info, f"{change.setting}: {change.before} -> {change.after}")
        for finding in findings:
            await log(LogLevel.error, finding.message)
    if progress is not None:
        await progress(1, 1)
    return result
