"""``renderctl upload``: a file as one upload session, a folder as a manifest of its files.

The protocol (``docs/uploads.md``): declare the file (size, SHA-256), let the server choose
the part size, hash each part, ask for presigned part URLs in batches, PUT the parts straight
to the store, complete. File bytes never pass through the gateway.

Resuming: a small record per file in the user's cache (``~/.cache/renderctl/uploads``, keyed
by the file's absolute path, size and modification time) keeps the hashes and the upload id,
so a second run hashes nothing; what to send is always taken from the parts the store holds
(``list_upload_parts``), never from the record alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import BaseModel, ValidationError

from libs import blendtrace
from tools.client import Api, ApiError, RateLimit, backoff
from tools.progress import Progress, size_text

MiB = 1024 * 1024
#: The server's smallest part and most parts (it picks the part size; this only predicts it,
#: so the first hashing pass can hash the parts too).
MIN_PART_BYTES = 64 * MiB
MAX_PARTS = 10_000
MAX_PART_BYTES = 5 * 1024 * MiB
#: Part URLs asked for in one create_upload_part_urls call (the API takes 1-100).
MAX_URLS_PER_CALL = 100
#: Bytes read at a time when hashing and when sending.
CHUNK = 4 * MiB
#: A part URL this close to its expiry is minted again before use.
URL_MARGIN = timedelta(seconds=30)


class UploadFailed(Exception):
    """The upload cannot go on: a file changed, or a part kept failing."""


def planned_part_size(size: int) -> int:
    """The part size the server is expected to choose: >= 64 MiB, whole MiB, <= 10,000 parts,
    at most 5 GiB."""
    least = -(-size // MAX_PARTS)
    return min(max(MIN_PART_BYTES, -(-least // MiB) * MiB), MAX_PART_BYTES)


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


# --- the local record of a file or a folder -----------------------------------------------


def cache_dir() -> Path:
    """Where upload records live: ``$XDG_CACHE_HOME/renderctl/uploads`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "renderctl" / "uploads"


def _record_path(cache: Path, *identity: object) -> Path:
    key = hashlib.sha256("\0".join(str(x) for x in identity).encode()).hexdigest()
    return cache / f"{key}.json"


class FileRecord(BaseModel):
    """A file's hashes at one part size, and the upload session sending it (if any)."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    part_size_bytes: int
    part_sha256: list[str]
    upload_id: str | None = None
    #: Idempotency-Key of the create_upload call, kept until its answer is recorded, so a
    #: run killed in between gets the same session back.
    create_key: str | None = None


class FolderRecord(BaseModel):
    """The manifest of a folder as it was (same files, sizes and times)."""

    path: str
    manifest_id: str | None = None
    create_key: str | None = None


def _load(path: Path, model: type[FileRecord] | type[FolderRecord]) -> Any:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None  # none yet, or unreadable: start over


def _save(path: Path, record: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json())
    os.replace(tmp, path)


@dataclass
class LocalFile:
    """A file to send: where it is, its name in a manifest, and its record."""

    path: Path
    rel: str
    size: int
    mtime_ns: int
    cache: Path
    record: FileRecord | None = None

    @classmethod
    def of(cls, path: Path, cache: Path, rel: str | None = None) -> LocalFile:
        st = path.stat()
        return cls(path.resolve(), rel or path.name, st.st_size, st.st_mtime_ns, cache)

    @property
    def record_path(self) -> Path:
        return _record_path(self.cache, "file", self.path, self.size, self.mtime_ns)

    def save(self) -> None:
        assert self.record is not None
        _save(self.record_path, self.record)

    def check_unchanged(self) -> None:
        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise UploadFailed(f"{self.path} changed while it was being uploaded: run again")


# --- hashing ------------------------------------------------------------------------------


def hash_file(f: LocalFile, part_size: int, progress: Progress | None) -> tuple[str, list[str]]:
    """(SHA-256 of the whole file, SHA-256 of each part), in one streaming pass: the two
    hashes run in threads (hashlib releases the GIL) while the next block is read."""
    whole, part = hashlib.sha256(), hashlib.sha256()
    parts: list[str] = []
    in_part, left = 0, f.size
    with f.path.open("rb", buffering=0) as src, ThreadPoolExecutor(2) as pool:
        pending: list[Any] = []
        while left > 0:
            block = src.read(min(CHUNK, part_size - in_part, left))
            if not block:
                break
            for job in pending:
                job.result()
            pending = [pool.submit(whole.update, block), pool.submit(part.update, block)]
            left -= len(block)
            in_part += len(block)
            if progress is not None:
                progress.add(len(block))
            if in_part == part_size or left == 0:
                for job in pending:
                    job.result()
                pending = []
                parts.append(part.hexdigest())
                part, in_part = hashlib.sha256(), 0
        for job in pending:
            job.result()
    if left:
        raise UploadFailed(f"{f.path} got shorter while it was being hashed: run again")
    f.check_unchanged()
    return whole.hexdigest(), parts or [part.hexdigest()]


async def digest(files: Sequence[LocalFile], opts: UploadOptions) -> None:
    """Give every file a record with its hashes: from the cache, or by reading it once."""
    todo = []
    for f in files:
        f.record = _load(f.record_path, FileRecord)
        if f.record is None:
            todo.append(f)
    if not todo:
        return
    progress = opts.bar("hashing", sum(f.size for f in todo))
    for f in todo:
        ps = planned_part_size(f.size)
        sha, parts = await asyncio.to_thread(hash_file, f, ps, progress)
        f.record = FileRecord(
            path=str(f.path),
            size_bytes=f.size,
            mtime_ns=f.mtime_ns,
            sha256=sha,
            part_size_bytes=ps,
            part_sha256=parts,
        )
        f.save()
    progress.finish(f"{len(todo)} file(s)")


async def rehash_parts(f: LocalFile, part_size: int, opts: UploadOptions) -> None:
    """The server chose another part size than predicted: hash the parts again at it."""
    assert f.record is not None
    progress = opts.bar(f"hashing parts of {f.rel}", f.size)
    sha, parts = await asyncio.to_thread(hash_file, f, part_size, progress)
    if sha != f.record.sha256:
        raise UploadFailed(f"{f.path} changed since it was hashed: run again")
    f.record.part_size_bytes, f.record.part_sha256 = part_size, parts
    f.save()
    progress.finish()


# --- sending parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of one upload session, as bytes of a local file."""

    upload_id: str
    file: LocalFile = field(compare=False)
    number: int
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class PartUrl:
    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass
class UploadOptions:
    parallel: int = 4
    #: Bytes per second over all parts, or None for as fast as the link goes.
    limit_rate: float | None = None
    show_progress: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    #: Tries of one part before the upload gives up.
    attempts: int = 6
    #: Where the records of files and folders are kept.
    cache: Path = field(default_factory=cache_dir)

    def bar(self, label: str, total: int, done: int = 0) -> Progress:
        return Progress(label, total, stream=self.stream, enabled=self.show_progress, done=done)

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def url_batch(parallel: int) -> int:
    """Part URLs asked for in one call: enough to keep ``parallel`` PUTs busy for a while,
    few enough that they are used long before they expire."""
    return min(MAX_URLS_PER_CALL, max(8, 4 * parallel))


class PartSender:
    """PUTs parts to their presigned URLs, ``parallel`` at a time; URLs are asked for in
    batches just ahead of use, and minted again for a retry or when close to expiry."""

    def __init__(self, api: Api, opts: UploadOptions, progress: Progress) -> None:
        self.api = api
        self.opts = opts
        self.progress = progress
        self.batch = url_batch(opts.parallel)
        self.limit = RateLimit(opts.limit_rate) if opts.limit_rate else None
        # A fresh connection per PUT: a store that refuses a part may close the connection
        # before reading the body, which spoils a kept-alive one.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, write=300.0),
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def mint(self, upload_id: str, parts: Sequence[Part]) -> dict[int, PartUrl]:
        answer = await self.api.call(
            "POST",
            f"/v1/uploads/{upload_id}/part-urls",
            json={"parts": [{"part_number": p.number, "sha256": p.sha256} for p in parts]},
        )
        expires = datetime.fromisoformat(answer["expires_at"])
        return {
            u["part_number"]: PartUrl(u["url"], u.get("method", "PUT"), u["headers"], expires)
            for u in answer["urls"]
        }

    async def send(self, parts: Sequence[Part]) -> None:
        """Send every part (in order of upload, then part number); raise on the first that
        cannot be sent."""
        queue: asyncio.Queue[tuple[Part, PartUrl] | None] = asyncio.Queue(self.batch)

        async def feed() -> None:
            for upload_id, group in groupby(parts, key=lambda p: p.upload_id):
                todo = list(group)
                for i in range(0, len(todo), self.batch):
                    chunk = todo[i : i + self.batch]
                    urls = await self.mint(upload_id, chunk)
                    for p in chunk:
                        await queue.put((p, urls[p.number]))
            for _ in range(self.opts.parallel):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                await self.put(*item)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed())
                for _ in range(self.opts.parallel):
                    tg.create_task(work())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    async def put(self, part: Part, url: PartUrl) -> None:
        problem = ""
        for attempt in range(1, self.opts.attempts + 1):
            if attempt > 1 or url.expires_at - URL_MARGIN < datetime.now(UTC):
                url = (await self.mint(part.upload_id, [part]))[part.number]
            sent = [0]
            try:
                r = await self.http.request(
                    url.method, url.url, headers=url.headers, content=self._body(part, sent)
                )
                if r.is_success:
                    return
                problem = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 400 and "BadDigest" in r.text:
                    raise UploadFailed(
                        f"{part.file.path}: part {part.number} no longer has the bytes that"
                        " were hashed (the file changed): run again"
                    )
            except httpx.TransportError as e:
                problem = repr(e)
            self.progress.add(-sent[0])  # sent again by the next try
            if attempt < self.opts.attempts:
                await asyncio.sleep(backoff(attempt))
        raise UploadFailed(
            f"part {part.number} of {part.upload_id} failed {self.opts.attempts} times: {problem}"
        )

    async def _body(self, part: Part, sent: list[int]) -> Any:
        fd = os.open(part.file.path, os.O_RDONLY)
        try:
            pos, end = part.offset, part.offset + part.size
            while pos < end:
                block = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
                if not block:
                    raise UploadFailed(f"{part.file.path} got shorter: run again")
                pos += len(block)
                if self.limit is not None:
                    await self.limit.take(len(block))
                sent[0] += len(block)
                self.progress.add(len(block))
                yield block
        finally:
            os.close(fd)


# --- upload sessions ----------------------------------------------------------------------


async def held_parts(api: Api, upload_id: str) -> dict[int, dict[str, Any]]:
    """The parts the store holds for an upload (every page of list_upload_parts)."""
    held: dict[int, dict[str, Any]] = {}
    async for page in api.pages(f"/v1/uploads/{upload_id}/parts", {"limit": 1000}):
        for item in page["items"]:
            held[item["part_number"]] = item
    return held


def parts_of(f: LocalFile, view: dict[str, Any]) -> list[Part]:
    """Every part of the upload ``view`` as bytes of ``f``."""
    assert f.record is not None
    ps, count = view["part_size_bytes"], view["part_count"]
    if len(f.record.part_sha256) != count:
        raise UploadFailed(
            f"{f.rel}: the server plans {count} parts of {ps} bytes for {f.size} bytes,"
            f" {len(f.record.part_sha256)} were hashed"
        )
    return [
        Part(view["upload_id"], f, n, (n - 1) * ps, min(ps, f.size - (n - 1) * ps), sha)
        for n, sha in enumerate(f.record.part_sha256, start=1)
    ]


async def missing_parts(api: Api, f: LocalFile, view: dict[str, Any]) -> tuple[list[Part], int]:
    """The parts of ``view`` the store lacks (or holds with other bytes), and the bytes it
    holds already."""
    held = await held_parts(api, view["upload_id"])
    missing, done = [], 0
    for p in parts_of(f, view):
        got = held.get(p.number)
        if got is not None and got.get("size_bytes") == p.size and got.get("sha256") == p.sha256:
            done += p.size
        else:
            missing.append(p)
    return missing, done


async def prepare(api: Api, f: LocalFile, view: dict[str, Any], opts: UploadOptions) -> None:
    """Make ``f``'s part hashes match the session's part size."""
    assert f.record is not None
    if view["sha256"] != f.record.sha256 or view["size_bytes"] != f.size:
        raise UploadFailed(f"{view['upload_id']} is for other bytes than {f.path}")
    part_size = view["part_size_bytes"]
    if part_size == f.record.part_size_bytes:
        return
    if f.size <= min(part_size, f.record.part_size_bytes):  # one part either way
        f.record.part_size_bytes = part_size
        f.save()
    else:
        await rehash_parts(f, part_size, opts)


@dataclass
class Plan:
    """What to send of some upload sessions: the parts the store lacks."""

    sessions: list[tuple[LocalFile, dict[str, Any]]]
    parts: list[Part]
    total_bytes: int
    held_bytes: int


async def plan(
    api: Api, sessions: Sequence[tuple[LocalFile, dict[str, Any]]], opts: UploadOptions
) -> Plan:
    """Ask the store what it holds of each session (``list_upload_parts``)."""
    out = Plan(list(sessions), [], 0, 0)
    for f, view in sessions:
        await prepare(api, f, view, opts)
        missing, held = await missing_parts(api, f, view)
        out.parts += missing
        out.total_bytes += f.size
        out.held_bytes += held
        if held:
            opts.say(
                f"{f.rel}: {view['part_count'] - len(missing)} of {view['part_count']} parts"
                f" already in the store ({view['upload_id']}); sending {len(missing)}"
            )
    return out


async def send_and_complete(
    api: Api, sessions: Sequence[tuple[LocalFile, dict[str, Any]]], opts: UploadOptions
) -> list[dict[str, Any]]:
    """Send what the store lacks of each session, then complete each; the completed views."""
    todo = await plan(api, sessions, opts)
    progress = opts.bar("uploading", todo.total_bytes, todo.held_bytes)
    sender = PartSender(api, opts, progress)
    completed = []
    try:
        await sender.send(todo.parts)
        progress.finish(f"{len(todo.parts)} part(s) sent")
        for f, view in todo.sessions:
            f.check_unchanged()
            if view["part_count"] > 1:
                opts.say(f"{f.rel}: completing {view['upload_id']} (the store joins the parts)")
            completed.append(await complete(api, sender, f, view))
    finally:
        await sender.close()
    return completed


async def complete(
    api: Api, sender: PartSender, f: LocalFile, view: dict[str, Any]
) -> dict[str, Any]:
    """complete_upload, waiting while the store joins the parts; a part the store lost
    meanwhile (upload_incomplete, or the session open again) is sent again."""
    upload_id = view["upload_id"]
    for _ in range(3):
        try:
            done = await settled(api, await api.call("POST", f"/v1/uploads/{upload_id}/complete"))
        except ApiError as e:
            if e.code != "upload_incomplete":
                raise
        else:
            if done["status"] == "completed":
                return done
            if done["status"] != "uploading":
                raise UploadFailed(f"{upload_id} is {done['status']}: run again for a new upload")
        missing, _ = await missing_parts(api, f, view)
        await sender.send(missing)
    raise UploadFailed(f"{upload_id}: the store keeps lacking parts after they were sent")


async def settled(api: Api, view: dict[str, Any]) -> dict[str, Any]:
    """``view`` once the store has joined its parts (status no longer completing): a big
    file can take the store minutes."""
    wait = 0.5
    while view["status"] == "completing":
        await asyncio.sleep(wait)
        wait = min(5.0, wait * 1.5)
        view = await api.call("GET", f"/v1/uploads/{view['upload_id']}")
    return view


async def open_session(api: Api, f: LocalFile) -> dict[str, Any] | None:
    """The session of ``f``'s record if it can still be used (uploading or completed)."""
    assert f.record is not None
    if f.record.upload_id is None:
        return None
    try:
        view: dict[str, Any] = await api.call("GET", f"/v1/uploads/{f.record.upload_id}")
    except ApiError as e:
        if e.status != 404:
            raise
        return None
    view = await settled(api, view)
    return view if view["status"] in ("uploading", "completed") else None


async def upload_file(
    api: Api, path: Path, opts: UploadOptions, content_type: str | None = None
) -> dict[str, Any]:
    """Upload one file (resuming its earlier session when there is one); its UploadView."""
    f = LocalFile.of(path, opts.cache)
    await digest([f], opts)
    assert f.record is not None
    view = await open_session(api, f)
    if view is None:
        if f.record.upload_id is not None or f.record.create_key is None:
            f.record.upload_id, f.record.create_key = None, str(uuid.uuid4())
            f.save()
        body: dict[str, Any] = {"file_name": f.rel, "size_bytes": f.size, "sha256": f.record.sha256}
        if content_type:
            body["content_type"] = content_type
        view = await api.call("POST", "/v1/uploads", json=body, idempotency_key=f.record.create_key)
        f.record.upload_id = view["upload_id"]
        f.save()
        opts.say(f"{f.rel}: upload {view['upload_id']}, {view['part_count']} part(s)")
    if view["status"] == "completed":
        opts.say(f"{f.rel}: already uploaded ({view['upload_id']})")
        return view
    (done,) = await send_and_complete(api, [(f, view)], opts)
    return done


# --- folders as manifests -----------------------------------------------------------------


def folder_files(root: Path, opts: UploadOptions) -> list[LocalFile]:
    """The regular files under ``root`` (symbolic links followed), by relative path; empty
    files are left out (with a note: a scene cannot hold one)."""
    found = []
    for dirpath, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file():
                f = LocalFile.of(p, opts.cache, p.relative_to(root).as_posix())
                if f.size:
                    found.append(f)
                else:
                    opts.say(f"{f.rel}: empty, left out")
    return sorted(found, key=lambda f: f.rel)


async def upload_folder(
    api: Api, root: Path, main_file: str, opts: UploadOptions
) -> dict[str, Any]:
    """Upload a folder as a manifest; only the files the server lacks are sent. Its
    ManifestView (complete)."""
    root = await asyncio.to_thread(root.resolve)
    files = folder_files(root, opts)
    by_rel = {f.rel: f for f in files}
    if main_file not in by_rel:
        raise UploadFailed(f"--main {main_file}: no such file in {root}")
    await digest(files, opts)
    needed = await asyncio.to_thread(test_frame_files, root, main_file, files)
    first = [f for f in files if f.record is not None and f.record.sha256 in needed]
    if len(first) < len(files):
        opts.say(
            f"{root}: {len(first)} file(s) a test render needs go first"
            f" ({size_text(sum(f.size for f in first))})"
        )
    listing = ((f.rel, f.size, f.mtime_ns) for f in files)
    record_path = _record_path(opts.cache, "folder", root, *listing)
    folder = _load(record_path, FolderRecord) or FolderRecord(path=str(root))
    for _ in range(3):
        manifest = await submitted_manifest(api, folder, record_path, files, main_file)
        missing = manifest["missing"]
        opts.say(
            f"{root}: manifest {manifest['manifest_id']}, {manifest['file_count']} file(s),"
            f" {len(missing)} to send ({size_text(sum(m['size_bytes'] for m in missing))})"
        )
        sessions, ended = [], False
        for m in missing:
            view = {"status": "ended"}
            if m["upload_id"]:
                view = await settled(api, await api.call("GET", f"/v1/uploads/{m['upload_id']}"))
            if view["status"] == "uploading":
                sessions.append((by_rel[m["paths"][0]], view))
            elif view["status"] != "completed":
                ended = True  # its session ended without the file: a new manifest gets one
        for batch in needed_first(sessions, needed):
            await send_and_complete(api, batch, opts)
        if ended:
            folder.manifest_id = None
            continue
        if manifest["status"] == "complete":
            return dict(manifest)
        try:
            done: dict[str, Any] = await api.call(
                "POST", f"/v1/manifests/{manifest['manifest_id']}/complete"
            )
            return done
        except ApiError as e:
            if e.code != "manifest_incomplete":
                raise
    raise UploadFailed(f"{root}: the server keeps lacking files after they were sent")


def test_frame_files(root: Path, main_file: str, files: Sequence[LocalFile]) -> set[str]:
    """The contents (SHA-256) a test render of the folder's default frames needs (the main
    file, what it references, of sequences those frames' entries): sent and completed
    first, so the farm can stage them, and a test render start, before the rest arrives."""
    frames = blendtrace.scene_test_frames(root / main_file)
    rels = blendtrace.files_needed(root, main_file, {f.rel: f.size for f in files}, frames)
    return {f.record.sha256 for f in files if f.rel in rels and f.record is not None}


def needed_first(
    sessions: Sequence[tuple[LocalFile, dict[str, Any]]], needed: set[str]
) -> list[list[tuple[LocalFile, dict[str, Any]]]]:
    """The sessions in up to two batches: those of the ``needed`` contents (SHA-256), then
    the rest."""
    first = [s for s in sessions if s[0].record and s[0].record.sha256 in needed]
    rest = [s for s in sessions if s not in first]
    return [b for b in (first, rest) if b]


async def submitted_manifest(
    api: Api, folder: FolderRecord, record_path: Path, files: list[LocalFile], main_file: str
) -> dict[str, Any]:
    """The folder's manifest: the one its record names, or a new one."""
    if folder.manifest_id is not None:
        try:
            found: dict[str, Any] = await api.call("GET", f"/v1/manifests/{folder.manifest_id}")
            return found
        except ApiError as e:
            if e.status != 404:
                raise
        folder.manifest_id, folder.create_key = None, None
    if folder.create_key is None:
        folder.create_key = str(uuid.uuid4())
        _save(record_path, folder)
    entries = []
    for f in files:
        assert f.record is not None
        entries.append({"path": f.rel, "size_bytes": f.size, "sha256": f.record.sha256})
    manifest: dict[str, Any] = await api.call(
        "POST",
        "/v1/manifests",
        json={"main_file": main_file, "files": entries},
        idempotency_key=folder.create_key,
    )
    folder.manifest_id, folder.create_key = manifest["manifest_id"], None
    _save(record_path, folder)
    return manifest
