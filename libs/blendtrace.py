"""Tracing a scene folder's ``.blend`` with blender-asset-tracer (BAT, no Blender): which
files the main file and the libraries it links reference, and where each reference leads
among the folder's files. Used by the scene check and repath (``services/scene/steps.py``)
and by the stager, which copies the files a job's test frames need first
(``services/upload/stager.py``).

A folder's files are either found on disk (:meth:`SceneFolder.scan`) or, while a scene is
still being staged, read from the listing the stager writes into it
(:data:`contracts.staging.STAGING_LISTING`): every file the scene will hold, so a file not
copied yet is not "missing". Sequences (image, volume and cache sequences) are expanded over
those files as BAT expands them on disk.

BAT keeps the ``.blend`` files it opened in a process-wide cache: hold :data:`BAT_LOCK`
while tracing, and close the cache (``blendfile.close_all_cached()``) before letting go.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import string
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blender_asset_tracer import blendfile, bpathlib, trace
from blender_asset_tracer.trace import blocks2assets, file2blocks, result

from contracts.jobs import FrameRange, default_test_frames
from contracts.scenes import AssetKind, AssetMatch
from contracts.staging import STAGED_MARKER, STAGING_LISTING

#: BAT's open-file cache is process-wide: one trace (or pack) at a time in a process.
BAT_LOCK = threading.Lock()

_KINDS = {
    b"IM": AssetKind.image,
    b"LI": AssetKind.library,
    b"MC": AssetKind.movie_clip,
    b"SO": AssetKind.sound,
    b"VF": AssetKind.font,
    b"CF": AssetKind.cache,
    b"ME": AssetKind.cache,
    b"OB": AssetKind.cache,
    b"VO": AssetKind.volume,
}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")
_DIGITS = re.compile(r"\d+")
#: Files that are the stager's, not the scene's.
_NOT_SCENE = frozenset({STAGED_MARKER, STAGING_LISTING})


def text(raw: bytes | str) -> str:
    """Storable text of a path or name read from a .blend."""
    decoded = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return _UNPRINTABLE.sub("\ufffd", decoded)


class TraceStopped(Exception):
    """Raised by a trace's ``check`` to stop it (the step was cancelled)."""


@dataclass(frozen=True)
class Found:
    """Where a referenced path leads in the folder."""

    rel: str | None  # the file (a sequence's pattern) relative to the folder; None: missing
    matched_by: AssetMatch
    outside: bool  # the path points outside the folder (absolute, or leaving it)
    files: tuple[str, ...] = ()  # the folder's files it names, relative to the folder
    size: int = 0
    note: str = ""  # why an outside path matched nothing


@dataclass
class SceneFolder:
    """A scene folder's files (the stager's own files left out), indexed by path tail."""

    root: Path
    sizes: dict[str, int]
    tails: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    folded: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    by_dir: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def scan(cls, root: Path) -> SceneFolder:
        """The folder's files: those its listing names while it is being staged, else those
        on disk."""
        listing = read_listing(root)
        if listing is not None:
            return cls.of(root, listing.sizes)
        sizes: dict[str, int] = {}
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if rel not in _NOT_SCENE and path.is_file():
                sizes[rel] = path.stat().st_size
        return cls.of(root, sizes)

    @classmethod
    def of(cls, root: Path, sizes: dict[str, int]) -> SceneFolder:
        """The folder at ``root`` holding (or to hold) the files of ``sizes``."""
        folder = cls(bpathlib.make_absolute(root), dict(sizes))
        for rel in sizes:
            parts = rel.split("/")
            folder.by_dir[posixpath.dirname(rel)].append(rel)
            for k in range(1, len(parts) + 1):
                tail = "/".join(parts[-k:])
                folder.tails[tail].append(rel)
                folder.folded[tail.casefold()].append(rel)
        return folder

    def locate(self, raw: bytes, blend_rel: str, is_sequence: bool) -> Found:
        """Where ``raw``, referenced by the folder's ``blend_rel``, leads.

        A ``//`` path is relative to the ``.blend``; an absolute path inside the folder is
        taken as it is. A path leading elsewhere (an artist's ``/Users/...`` or ``C:\\...``,
        a ``//../..`` leaving the folder, a path relative to no folder) is matched against
        the folder: the longest tail of two or more segments that one file's path ends
        with, else the file name when exactly one file has it; case is ignored only when
        nothing matches exactly. Sequences outside the folder are not matched.
        """
        path = raw.decode("utf-8", "surrogateescape").replace("\\", "/")
        root = self.root.as_posix()
        candidate: str | None = None
        if path.startswith("//") and not raw.startswith(b"\\\\"):
            base = posixpath.dirname(posixpath.join(root, blend_rel))
            candidate = posixpath.normpath(posixpath.join(base, path[2:]))
        elif path.startswith("/") and not path.startswith("//"):
            candidate = posixpath.normpath(path)
        if candidate is not None and candidate.startswith(root + "/"):
            rel = candidate[len(root) + 1 :]
            return self._inside(rel, is_sequence)
        if is_sequence:
            return Found(None, AssetMatch.none, True, note="sequences outside it are not matched")
        return self._match(path)

    def _inside(self, rel: str, is_sequence: bool) -> Found:
        if not is_sequence:
            size = self.sizes.get(rel)
            if size is None:
                return Found(None, AssetMatch.none, False)
            return Found(rel, AssetMatch.path, False, (rel,), size)
        files = self.expand(rel)
        if not files:
            return Found(None, AssetMatch.none, False)
        return Found(rel, AssetMatch.path, False, files, sum(self.sizes[f] for f in files))

    def expand(self, rel: str) -> tuple[str, ...]:
        """The folder's files of the sequence ``rel``, as BAT's ``expand_sequence`` finds
        them on disk: a glob (``*``, ``<UDIM>``), a folder's files, or the files beside a
        numbered file with its name up to the digits and its suffix."""
        parent, name = posixpath.split(rel)
        if "<UDIM>" in name:
            rel = posixpath.join(parent, name.replace("<UDIM>", "*"))
        if "*" in rel:
            depth = rel.count("/")
            hits = (f for f in self.sizes if f.count("/") == depth and fnmatch.fnmatchcase(f, rel))
            return tuple(sorted(hits))
        under = sorted(f for f in self.sizes if f.startswith(rel + "/"))
        if under:
            return tuple(under)
        if rel not in self.sizes:
            return ()
        stem, suffix = posixpath.splitext(name)
        bare = stem.rstrip(string.digits)
        if bare == stem:
            return (rel,)
        pattern = f"{bare}*{suffix}"
        beside = self.by_dir.get(parent, [])
        return tuple(
            sorted(f for f in beside if fnmatch.fnmatchcase(posixpath.basename(f), pattern))
        )

    def _match(self, path: str) -> Found:
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        if parts and _WINDOWS_DRIVE.match(path):
            parts = parts[1:]
        for k in range(len(parts), 0, -1):
            tail = "/".join(parts[-k:])
            for index, key in ((self.tails, tail), (self.folded, tail.casefold())):
                hits = index.get(key, [])
                if len(hits) == 1:
                    how = AssetMatch.tail if k >= 2 else AssetMatch.basename
                    rel = hits[0]
                    return Found(rel, how, True, (rel,), self.sizes[rel])
                if len(hits) > 1:
                    return Found(
                        None,
                        AssetMatch.none,
                        True,
                        note=f"{len(hits)} uploaded files end with {text(tail)}",
                    )
        return Found(None, AssetMatch.none, True, note="no uploaded file matches it")


@dataclass(frozen=True)
class Use:
    """One reference BAT found, and where it leads."""

    usage: result.BlockUsage
    blend_rel: str  # the .blend holding it, relative to the folder
    found: Found

    @property
    def raw(self) -> bytes:
        return bytes(self.usage.asset_path)

    @property
    def kind(self) -> AssetKind:
        if self.usage.block.dna_type_name == "Strip":
            return AssetKind.sequence_strip
        return _KINDS.get(self.usage.block.code[:2], AssetKind.other)


class _Blocks(file2blocks.BlockIterator):
    """BAT's block walk, but a linked library is looked for as any asset is: at its path,
    else by matching it against the folder; one that cannot be opened is skipped."""

    def __init__(self, folder: SceneFolder, check: Callable[[], None]) -> None:
        super().__init__()
        self.folder, self.check = folder, check
        self.unreadable: dict[str, str] = {}

    def _visit_linked_blocks(self, blocks_per_lib: dict[Any, set[Any]]) -> Iterator[Any]:
        for idblocks in blocks_per_lib.values():
            self.check()
            some = next(iter(idblocks))
            found = self.folder.locate(
                some.get_pointer(b"lib")[b"name"], _rel(self.folder, some.bfile.filepath), False
            )
            if found.rel is None or found.rel in self.unreadable:
                continue
            try:
                library = self.open_blendfile(self.folder.root / found.rel)
            except TraceStopped:
                raise
            except Exception as e:  # BAT raises many kinds on a damaged file
                self.unreadable[found.rel] = f"{type(e).__name__}: {e}"
                continue
            yield from self.iter_blocks(library, idblocks)


def _rel(folder: SceneFolder, path: Path) -> str:
    return bpathlib.make_absolute(path).relative_to(folder.root).as_posix()


def trace_scene(
    folder: SceneFolder, main: str, check: Callable[[], None] = lambda: None
) -> tuple[list[Use], dict[str, str]]:
    """Every reference of the main file and of the libraries it links (what ``trace.deps``
    yields, with libraries found as :class:`_Blocks` finds them), and the libraries that
    could not be read. ``check`` is called between blocks (it raises :class:`TraceStopped` to stop
    the trace).
    Call with :data:`BAT_LOCK` held."""
    blocks = _Blocks(folder, check)
    bfile = blocks.open_blendfile(folder.root / main)
    seen: set[int] = set()
    uses: list[Use] = []
    for block in trace.asset_holding_blocks(blocks.iter_blocks(bfile)):
        check()
        for usage in blocks2assets.iter_assets(block):
            if (key := hash(usage)) in seen:
                continue
            seen.add(key)
            blend_rel = _rel(folder, usage.block.bfile.filepath)
            found = folder.locate(bytes(usage.asset_path), blend_rel, usage.is_sequence)
            uses.append(Use(usage, blend_rel, found))
    return uses, blocks.unreadable


# -- what test frames need ----------------------------------------------------------------


def frame_of(path: str) -> int | None:
    """The frame number in a sequence entry's name: its last run of digits (a point cache's
    ``<name>_<frame>_<index>.bphys``: the one before the index); None when it has none."""
    stem, suffix = posixpath.splitext(posixpath.basename(path))
    runs = _DIGITS.findall(stem)
    if suffix.lower() == ".bphys" and len(runs) >= 2:
        return int(runs[-2])
    return int(runs[-1]) if runs else None


def needed_by(uses: list[Use], frames: Collection[int]) -> set[str]:
    """The folder's files that rendering ``frames`` needs: every file the scene references,
    but of a sequence only the entries of those frames. A sequence with no entry numbered as
    one of them (UDIM tiles, a frame offset) is needed whole; with no frames, every
    sequence is."""
    needed: set[str] = set()
    for use in uses:
        files = use.found.files
        if use.usage.is_sequence and frames and b"<UDIM>" not in use.raw:
            picked = {f for f in files if frame_of(f) in frames}
            needed |= picked or set(files)
        else:
            needed |= set(files)
    return needed


def files_needed(root: Path, main: str, sizes: dict[str, int], frames: Collection[int]) -> set[str]:
    """The files of the scene folder at ``root`` (to hold ``sizes``; those on disk are
    read) that rendering ``frames`` needs, the main file with them. Libraries the main file
    links are followed only once on disk: call again after copying them. A main file BAT
    cannot read needs only itself (the scene check says why)."""
    folder = SceneFolder.of(root, sizes)
    with BAT_LOCK:
        try:
            uses, _ = trace_scene(folder, main)
        except Exception:  # BAT raises many kinds on a damaged file, or on a non-.blend
            return {main}
        finally:
            blendfile.close_all_cached()
    return {main} | needed_by(uses, frames)


def scene_test_frames(path: Path) -> list[int]:
    """The frames a test render of the ``.blend`` at ``path`` renders by default: the first,
    middle and last of its active scene's frame range (before a job says otherwise); none
    when BAT cannot read it."""
    with BAT_LOCK:
        try:
            bfile = blendfile.open_cached(bpathlib.make_absolute(path))
            scene = bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene")
            if scene is None:
                return []
            start, end = int(scene.get((b"r", b"sfra"))), int(scene.get((b"r", b"efra")))
            step = max(1, int(scene.get((b"r", b"frame_step"))))
            return default_test_frames(FrameRange(start=start, end=end, step=step))
        except Exception:  # BAT raises many kinds on a damaged file, or on a non-.blend;
            return []  # a range our jobs cannot have (negative frames) is refused too
        finally:
            blendfile.close_all_cached()


# -- the listing of a folder being staged -------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """What a folder being staged will hold, and where the staged scene will be."""

    staged_to: str  # the staged folder, relative to the scene root: staged/<owner>/<sha256>
    sizes: dict[str, int]


def write_listing(folder: Path, staged_to: str, sizes: dict[str, int]) -> None:
    """Write the listing of ``folder`` (see :class:`Listing`)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [{"path": p, "size_bytes": n} for p, n in sorted(sizes.items())]
    with (folder / STAGING_LISTING).open("w") as out:
        json.dump({"staged_to": staged_to, "files": files}, out, indent=1)


def read_listing(folder: Path) -> Listing | None:
    """The listing of ``folder``, or None when it has none (it is staged, or an upload)."""
    try:
        data = json.loads((folder / STAGING_LISTING).read_text())
    except FileNotFoundError:
        return None
    sizes = {f["path"]: int(f["size_bytes"]) for f in data["files"]}
    return Listing(staged_to=data["staged_to"], sizes=sizes)
