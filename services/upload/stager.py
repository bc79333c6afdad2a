"""The scene stager: copies each job's scene from the scenes bucket to where the farm reads
scenes, before the job's render is queued.

A scene is staged to ``<stage_root>/staged/<owner>/<content sha256>/``: an upload's file by
its name, a manifest's files at their relative paths. Every file is streamed from the store
in chunks (never whole in memory) into a folder of its own under ``staged/.incoming/``,
its size and SHA-256 checked while it is written (this is where an upload's whole-file
checksum is verified); a completion marker is written last, and only then is the folder
renamed into place. A staged folder therefore always holds verified, complete content, and
a later job of the same owner on the same content reuses it at once, copying nothing.

A manifest scene's needed files come first: the main file, then what BAT traces from it
(``libs/blendtrace.py``; libraries are traced again once copied) and, of each sequence, the
entries of the job's test frames. They are hard-linked into ``staged/.needed/<job id>/``
with the listing of the whole scene, and ``SceneNeededFilesStaged`` says so: the scene can be
checked and prepared, and a test render run, while the rest is copied.

A file whose content was staged as it was uploaded (``services/upload/prestager.py``, at
``staged/.content/<owner>/<sha256>``) is hard-linked from there, not fetched; the staging's
events count those bytes apart (``bytes_prestaged``).

Progress is recorded at most every ``stage_progress_seconds`` and
``stage_progress_bytes``; ``stage_max_bytes_per_second`` caps a copy's rate. Only one
replica stages at a time (a PostgreSQL advisory lock); stagings left unfinished by a crash
or a restart are found again in ``upload.stagings`` and copied again from the start. A
cancel reaches the copy within one progress interval.

Production: the farm does not mount this folder from the upload service's machine but keeps
a farm-side cache keyed by content hash (a shared file system the workers mount, or a cache
next to the farm that pulls from the bucket); the stager's job is then to make that cache
hold the content and to name the path the farm's workers open, with the same layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from contracts.errors import (
    DomainError,
    SceneChecksumMismatch,
    SceneFileMissing,
    ScenePathRefused,
    SceneSizeMismatch,
    SceneUploadEnded,
)
from contracts.staging import (
    STAGED_DIR,
    STAGED_MARKER,
    SceneFilesAwaited,
    SceneKind,
    StagingStatus,
)
from libs.blendtrace import files_needed, write_listing
from libs.eventstore.processor import Projector
from libs.eventstore.store import ConcurrencyError, EventStore
from libs.eventstore.uow import UnitOfWork
from libs.keys import KeyRefused, check_key
from libs.leader import leadership, lock_key, sleep_or_stop, wake_or_stop
from libs.logging import get_logger
from libs.s3 import S3Client, error_code
from services.upload.domain import (
    SceneStaging,
    content_path,
    needed_dir,
    staged_dir,
    staged_name,
)
from services.upload.projections import (
    contents_uploading,
    last_upload_status,
    pending_stagings,
    stored_contents,
)
from services.upload.settings import UploadSettings

if TYPE_CHECKING:
    from services.upload.prestager import ContentPrestager

log = get_logger(__name__)

#: Written last into a staged folder: what it holds, all verified.
MARKER = STAGED_MARKER
#: Folders being filled, one per job, under the staged root.
INCOMING = ".incoming"
_MISSING = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
#: A staging waiting for uploads looks again at most this often (it is woken by the
#: service's own commits, which come fast while parts are confirmed).
MIN_LOOK_SECONDS = 0.2
#: Paths named in a ``SceneFilesAwaited``.
AWAITED_PATHS = 20


@dataclass(frozen=True)
class SceneFile:
    """One file to stage: where it goes in the staged folder, and where it is in the store
    (``bucket`` and ``object_key`` empty while its upload has not completed)."""

    path: str
    size_bytes: int
    sha256: str
    bucket: str
    object_key: str


class Cancelled(Exception):
    """The staging was cancelled while its scene was copied."""


class RangesNotServed(Exception):
    """The store answered a ranged GET with the whole object: fetch with one GET."""


class _Slot:
    """One of the ``stage_concurrency`` copy slots, held by a staging while it copies and
    given up while it waits for uploads."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots, self.held = slots, False

    async def take(self) -> None:
        await self.slots.acquire()
        self.held = True

    def give(self) -> None:
        if self.held:
            self.slots.release()
            self.held = False


class SceneStager:
    def __init__(
        self,
        settings: UploadSettings,
        store: EventStore,
        s3: S3Client,
        views: Mapping[str, Projector],
        prestager: ContentPrestager | None = None,
    ) -> None:
        self.settings = settings
        #: Staging as uploaded, led by this stager's leader (None: turned off).
        self.prestager = prestager
        self.store = store
        self.s3 = s3
        #: Its to-do list, and what it looks at to learn that a file's upload completed
        #: (or ended without it): caught up before each look, uploads first.
        self.view = views["stagings"]
        self.upload_views = (views["uploads"], views["assets"])
        self.root = Path(settings.stage_root)
        self.is_leader = False
        self.last_error: BaseException | None = None
        #: Jobs being staged now, and when a job that failed for a passing reason is retried.
        self.active: dict[str, asyncio.Task[None]] = {}
        self.retry_at: dict[str, float] = {}
        #: Copy slots, and the active stagings that gave theirs up to wait for uploads.
        self.slots = asyncio.Semaphore(settings.stage_concurrency)
        self.waiting: set[str] = set()
        #: Set (and replaced) at each cycle: stagings waiting for uploads look again.
        self._looks = asyncio.Event()
        #: Jobs whose cancel this process was asked for: looked at before the next chunk.
        self.cancel_asked: set[str] = set()
        self._wake = store.waiter()
        if prestager is not None:
            prestager.on_finished = self._wake.set

    def ask_cancel(self, job_id: str) -> None:
        self.cancel_asked.add(job_id)
        self._looks.set()

    @property
    def lock_key(self) -> int:
        return lock_key(self.store.schema, "scene-stager")

    # -- running ------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self._lead(stopping)
            except Exception as e:
                self.last_error = e
                log.error("stager_failed", error=repr(e), exc_info=True)
                await sleep_or_stop(stopping, 1.0)

    async def _lead(self, stopping: asyncio.Event) -> None:
        async with leadership(self.store.pool, self.lock_key, stopping) as leading:
            if not leading:
                return
            self.is_leader = True
            try:
                while not stopping.is_set():
                    self._wake.clear()  # before looking: a wake-up meanwhile is not lost
                    await self.cycle()
                    await self._prestage()
                    await wake_or_stop(self._wake, stopping, self.settings.stage_poll_seconds)
            finally:
                self.is_leader = False
                for task in self.active.values():
                    task.cancel()
                await asyncio.gather(*self.active.values(), return_exceptions=True)
                if self.prestager is not None:
                    await self.prestager.stop()

    async def _prestage(self) -> None:
        """A cycle of staging as uploaded; its failure is its own (logged as an alert and
        tried again next time), never the stagings'."""
        if self.prestager is None:
            return
        try:
            await self.prestager.cycle()
        except Exception as e:
            self.prestager.last_error = e
            log.error("prestager_failed", alert=True, error=repr(e), exc_info=True)

    async def cycle(self) -> None:
        """Start staging the pending jobs, as many as ``stage_concurrency`` at once."""
        await self.view.catch_up()
        self._looks.set()
        self._looks = asyncio.Event()
        free = self.settings.stage_concurrency - (len(self.active) - len(self.waiting))
        if free <= 0:
            return
        async with self.store.pool.acquire() as conn:
            pending = await pending_stagings(conn, self.store.schema, limit=100)
        now = time.monotonic()
        for job_id in pending:
            if free <= 0:
                break
            if job_id in self.active or self.retry_at.get(job_id, 0.0) > now:
                continue
            self.active[job_id] = asyncio.create_task(self._stage_or_retry_later(job_id))
            free -= 1

    async def _stage_or_retry_later(self, job_id: str) -> None:
        """Stage; a failure that is not the scene's fault (the store or the disk away) is
        logged as an alert and tried again after ``stage_retry_seconds``."""
        slot = _Slot(self.slots)
        try:
            await slot.take()
            await self.stage(job_id, slot)
            self.retry_at.pop(job_id, None)
            self.last_error = None
        except Exception as e:
            self.last_error = e
            self.retry_at[job_id] = time.monotonic() + self.settings.stage_retry_seconds
            log.error("staging_will_retry", alert=True, job_id=job_id, error=repr(e), exc_info=True)
        finally:
            slot.give()
            self.active.pop(job_id, None)
            self.cancel_asked.discard(job_id)
            self._wake.set()

    async def look_again(self) -> None:
        """Return at the stager's next cycle (woken by the service's own commits, or every
        ``stage_poll_seconds``), or a cancel asked of this process, at most every
        :data:`MIN_LOOK_SECONDS`."""
        started, looks = time.monotonic(), self._looks
        with suppress(TimeoutError):
            await asyncio.wait_for(looks.wait(), self.settings.stage_poll_seconds)
        await asyncio.sleep(max(0.0, MIN_LOOK_SECONDS - (time.monotonic() - started)))

    # -- one staging --------------------------------------------------------------------

    async def stage(self, job_id: str, slot: _Slot | None = None) -> None:
        """Stage one job's scene, or record why it cannot be staged; ``slot``: the copy
        slot it holds, given up while it waits for uploads."""
        staging = await self._record(job_id, lambda s: None)
        if not staging.exists or staging.finished:
            return
        scene = staging.scene
        assert scene is not None
        final = self.root / staged_dir(staging.owner_id, scene.content_sha256)
        incoming = self.root / STAGED_DIR / INCOMING / job_id
        try:
            _check_path(staging.staged_key)
            name = staged_name(scene)
            if await asyncio.to_thread(_holds, final, name):
                await self._record(job_id, lambda s: s.staged(True, 0, _now()))
                return
            files, awaited = await self._files(staging)
            total = sum(f.size_bytes for f in files)
            staging = await self._record(job_id, lambda s: s.start(len(files), total, _now()))
            if staging.status is not StagingStatus.copying:
                return  # cancelled meanwhile
            await asyncio.to_thread(_remove, incoming)  # what a crashed attempt left
            progress = _Progress(self, job_id, total)
            uploads = _Uploads(self, staging, files, awaited, progress, slot)
            first: set[str] = set()
            manifest = scene.kind is SceneKind.manifest
            if manifest:
                first = await self._copy_needed(staging, files, incoming, progress, uploads)
            left = [f for f in files if f.path not in first]
            while left:  # in path order, of those uploaded: the others as they arrive
                ready = await uploads.ready(left, needed=False)
                for file in ready:
                    dest = incoming / file.path
                    await self._copy(staging.owner_id, file, dest, progress, keep=manifest)
                    progress.files_done += 1
                done = {f.path for f in ready}
                left = [f for f in left if f.path not in done]
            await progress.report()
            await asyncio.to_thread(_write_marker, incoming, job_id, scene.scene_id, files)
            await asyncio.to_thread(_place, incoming, final, name)
            if first:  # the needed folder is made whole too, for what renders from it
                rest = [f.path for f in files if f.path not in first]
                needed = self.root / needed_dir(job_id)
                await asyncio.to_thread(_link_rest, final, needed, rest)
            linked = progress.prestaged
            await self._record(job_id, lambda s: s.staged(False, total - linked, _now(), linked))
            log.info(
                "scene_staged",
                job_id=job_id,
                staged_key=staging.staged_key,
                bytes=total,
                bytes_prestaged=linked,
            )
        except Cancelled:
            log.info("staging_cancelled", job_id=job_id)
            await asyncio.to_thread(_remove, self.root / needed_dir(job_id))
        except (
            SceneChecksumMismatch,
            SceneSizeMismatch,
            SceneFileMissing,
            ScenePathRefused,
            SceneUploadEnded,
        ) as e:
            await self._fail(job_id, e)
            await asyncio.to_thread(_remove, self.root / needed_dir(job_id))
        finally:
            await asyncio.to_thread(_remove, incoming)

    async def _fail(self, job_id: str, e: DomainError[Any]) -> None:
        log.warning("staging_failed", job_id=job_id, code=e.code, reason=e.message)
        await self._record(job_id, lambda s: s.fail(e.code, e.message, _now()))

    async def _record(self, job_id: str, decide: Callable[[SceneStaging], object]) -> SceneStaging:
        """The staging loaded fresh, after ``decide`` recorded what it decides (if anything);
        loaded again and decided again when another writer (a cancel) came first."""
        for _ in range(5):
            uow = UnitOfWork(
                self.store,
                metadata={
                    "actor": {"kind": "service", "id": self.settings.service_name},
                    "correlation_id": f"job:{job_id}",
                },
            )
            staging = await uow.get(SceneStaging, job_id)
            decide(staging)
            try:
                if await uow.commit():
                    self.store.notify_appended()
            except ConcurrencyError:
                continue
            return staging
        raise ConcurrencyError(f"staging-{job_id} kept changing while the stager recorded")

    async def _files(self, staging: SceneStaging) -> tuple[list[SceneFile], set[str]]:
        """The scene's files and where each is in the store, and the contents (SHA-256)
        whose upload has not completed yet (a manifest still waiting for files)."""
        scene = staging.scene
        assert scene is not None
        if scene.kind is SceneKind.upload:
            if scene.bucket is None or scene.object_key is None:
                raise SceneFileMissing(
                    f"upload {scene.scene_id} names no object in the store", path=scene.main_file
                )
            name = staged_name(scene)
            file = SceneFile(
                name, scene.size_bytes, scene.content_sha256, scene.bucket, scene.object_key
            )
            return [file], set()
        return await self._manifest_files(staging.owner_id, scene.scene_id, scene.main_file)

    async def _manifest_files(
        self, owner_id: str, manifest_id: str, main_file: str
    ) -> tuple[list[SceneFile], set[str]]:
        s = self.store.schema
        async with self.store.pool.acquire() as conn:
            listed = await conn.fetchval(
                f"SELECT files FROM {s}.manifests WHERE manifest_id = $1 AND owner_id = $2",
                manifest_id,
                owner_id,
            )
            if listed is None:
                raise SceneFileMissing(f"manifest {manifest_id} is gone", path="")
            entries = json.loads(listed) if isinstance(listed, str) else listed
            stored = await stored_contents(
                conn, s, owner_id, sorted({e["sha256"] for e in entries})
            )
        if main_file not in {e["path"] for e in entries}:
            raise SceneFileMissing(
                f"manifest {manifest_id} does not list its main file {main_file}", path=main_file
            )
        files = []
        for e in entries:
            path = _check_path(e["path"])
            bucket, key = stored.get(e["sha256"], ("", ""))
            files.append(SceneFile(path, e["size_bytes"], e["sha256"], bucket, key))
        return files, {f.sha256 for f in files} - stored.keys()

    async def _copy_needed(
        self,
        staging: SceneStaging,
        files: list[SceneFile],
        incoming: Path,
        progress: _Progress,
        uploads: _Uploads,
    ) -> set[str]:
        """Copy the files the job's test frames need first: the main file, then what it
        references (traced with BAT from the copies, again after each library) and, of each
        sequence, the test frames' entries, each as soon as it is uploaded. Then make them
        readable in the job's needed folder (hard links, with the scene's listing) and
        record that they are there. The files copied; a main file that is not a ``.blend``
        is all that is needed."""
        scene = staging.scene
        assert scene is not None
        main, started = scene.main_file, time.monotonic()
        by_path = {f.path: f for f in files}
        sizes = {f.path: f.size_bytes for f in files}
        copied: set[str] = set()
        wanted = {main}
        while todo := sorted(wanted - copied):
            ready = await uploads.ready([by_path[p] for p in todo], needed=True)
            for file in ready:
                dest = incoming / file.path
                await self._copy(staging.owner_id, file, dest, progress, keep=True, needed=True)
                progress.files_done += 1
                copied.add(file.path)
            if any(f.path == main or f.path.lower().endswith(".blend") for f in ready):
                wanted |= await asyncio.to_thread(
                    files_needed, incoming, main, sizes, staging.test_frames
                )
        if staging.needed_staged:
            return copied  # recorded by an attempt before a crash: its folder is there
        folder = needed_dir(staging.job_id)
        staged_to = staged_dir(staging.owner_id, scene.content_sha256)
        await asyncio.to_thread(
            _link_needed, incoming, self.root / folder, copied, staged_to, sizes
        )
        seconds = time.monotonic() - started
        needed_bytes = sum(sizes[p] for p in copied)
        totals, linked = (len(files), progress.total), progress.prestaged
        await self._record(
            staging.job_id,
            lambda s: s.needed_files_staged(
                f"{folder}/{main}", sorted(copied), needed_bytes, totals, seconds, _now(), linked
            ),
        )
        log.info(
            "scene_needed_files_staged",
            job_id=staging.job_id,
            files=len(copied),
            bytes=needed_bytes,
            bytes_prestaged=linked,
            seconds=round(seconds, 3),
        )
        return copied

    async def _copy(
        self,
        owner_id: str,
        file: SceneFile,
        dest: Path,
        progress: _Progress,
        *,
        keep: bool,
        needed: bool = False,
    ) -> None:
        """Put one file at ``dest``: a hard link to its content if that was staged as it was
        uploaded, else streamed from the store (see :func:`fetch`; a large ``needed`` file
        in parallel ranges, :func:`fetch_ranges`) and, if ``keep`` (a manifest's file) and
        staging as uploaded is on, kept as that content."""
        content = self.root / content_path(owner_id, file.sha256)
        if await asyncio.to_thread(_link_content, content, dest, file.size_bytes):
            await progress.add(file.size_bytes, prestaged=True)
            return
        started, s, before = time.monotonic(), self.settings, progress.bytes_done
        if needed and s.stage_range_streams > 1 and file.size_bytes >= s.stage_range_min_bytes:
            ranges = (s.stage_range_bytes, s.stage_range_streams)
            try:
                await fetch_ranges(self.s3, file, dest, s.stage_chunk_bytes, ranges, progress.add)
            except RangesNotServed:
                log.warning("ranged_gets_not_served", path=file.path, bucket=file.bucket)
                progress.undo(progress.bytes_done - before)
                await fetch(self.s3, file, dest, s.stage_chunk_bytes, progress.add)
        else:
            await fetch(self.s3, file, dest, s.stage_chunk_bytes, progress.add)
        if keep and self.prestager is not None:
            await self._keep(owner_id, file, dest, time.monotonic() - started)

    async def _keep(self, owner_id: str, file: SceneFile, dest: Path, seconds: float) -> None:
        """Keep a fetched manifest file's content for the next staging (see
        :meth:`ContentPrestager.keep`); its failure is logged, never the staging's."""
        assert self.prestager is not None
        try:
            await self.prestager.keep(owner_id, file, dest, seconds)
        except Exception as e:
            log.warning("content_not_kept", owner_id=owner_id, sha256=file.sha256, error=repr(e))


async def fetch(
    s3: S3Client,
    file: SceneFile,
    dest: Path,
    chunk_bytes: int,
    add: Callable[[int], Awaitable[None]],
) -> None:
    """Stream one object into ``dest`` in ``chunk_bytes`` pieces (``add`` is told each
    piece's size once written), checking its size and SHA-256."""
    try:
        obj = await s3.get_object(Bucket=file.bucket, Key=file.object_key)
    except ClientError as e:
        if error_code(e) in _MISSING:
            raise SceneFileMissing(f"{file.path} is not in the store", path=file.path) from e
        raise
    declared = obj["ContentLength"]
    size, digest = 0, hashlib.sha256()
    out = await asyncio.to_thread(_open, dest)
    try:
        body = obj["Body"]
        async with body:  # gives the connection back, read to the end or not
            if declared != file.size_bytes:
                raise _size_mismatch(file, declared)
            buffer = bytearray()
            while True:
                piece = await body.read(chunk_bytes - len(buffer))
                buffer += piece
                if buffer and (len(buffer) >= chunk_bytes or not piece):
                    data, buffer = buffer, bytearray()
                    await asyncio.to_thread(_write, out, digest, data)
                    size += len(data)
                    await add(len(data))
                if not piece:
                    break
        await asyncio.to_thread(_sync_close, out)
    finally:
        out.close()
    if size != file.size_bytes:
        raise _size_mismatch(file, size)
    if digest.hexdigest() != file.sha256:
        raise SceneChecksumMismatch(
            f"{file.path}: the uploaded bytes have SHA-256 {digest.hexdigest()}, not the"
            f" {file.sha256} declared for them",
            path=file.path,
            expected_sha256=file.sha256,
            actual_sha256=digest.hexdigest(),
        )


async def fetch_ranges(
    s3: S3Client,
    file: SceneFile,
    dest: Path,
    chunk_bytes: int,
    ranges: tuple[int, int],
    add: Callable[[int], Awaitable[None]],
) -> None:
    """Fetch one object into ``dest`` as ranged GETs (``ranges``: the bytes of each, and how
    many run at once), each written at its offset as it comes; its SHA-256 is computed in
    order alongside, reading back each range once it and all before it are written (from
    the page cache), and its size checked from every answer."""
    range_bytes, streams = ranges
    size = file.size_bytes
    spans = [(start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]
    written = [asyncio.Event() for _ in spans]
    todo = iter(range(len(spans)))  # shared by the streams: each takes the next range
    fd = await asyncio.to_thread(_open_sized, dest, size)

    async def stream() -> None:
        for i in todo:
            await _fetch_range(s3, file, fd, spans[i], chunk_bytes, add)
            written[i].set()

    async def sha256() -> str:
        digest = hashlib.sha256()
        for (start, end), done in zip(spans, written, strict=True):
            await done.wait()
            await asyncio.to_thread(_hash_span, fd, digest, start, end, chunk_bytes)
        return digest.hexdigest()

    hashing = asyncio.create_task(sha256())
    tasks = [asyncio.create_task(stream()) for _ in range(min(streams, len(spans)))]
    try:
        await asyncio.gather(*tasks)
        actual = await hashing
        await asyncio.to_thread(os.fsync, fd)
    finally:
        for task in (*tasks, hashing):
            task.cancel()
        await asyncio.gather(*tasks, hashing, return_exceptions=True)
        os.close(fd)
    if actual != file.sha256:
        raise SceneChecksumMismatch(
            f"{file.path}: the uploaded bytes have SHA-256 {actual}, not the {file.sha256}"
            " declared for them",
            path=file.path,
            expected_sha256=file.sha256,
            actual_sha256=actual,
        )


async def _fetch_range(
    s3: S3Client,
    file: SceneFile,
    fd: int,
    span: tuple[int, int],
    chunk_bytes: int,
    add: Callable[[int], Awaitable[None]],
) -> None:
    """GET the bytes ``span`` (start, end exclusive) of the object and write them at their
    offset of ``fd``; the object must have the declared size."""
    start, end = span
    try:
        obj = await s3.get_object(
            Bucket=file.bucket, Key=file.object_key, Range=f"bytes={start}-{end - 1}"
        )
    except ClientError as e:
        if error_code(e) in _MISSING:
            raise SceneFileMissing(f"{file.path} is not in the store", path=file.path) from e
        if error_code(e) in ("InvalidRange", "416"):  # the object is smaller than declared
            raise _size_mismatch(file, start) from e
        raise
    at, body = start, obj["Body"]
    async with body:  # gives the connection back, read to the end or not
        answered = obj.get("ContentRange")
        if answered is None:  # the whole object: the store does not serve ranges
            raise RangesNotServed(f"{file.bucket} answered a ranged GET with the whole object")
        total = answered.rpartition("/")[2]
        if total != str(file.size_bytes):
            raise _size_mismatch(file, int(total) if total.isdigit() else -1)
        while at < end and (piece := await body.read(min(chunk_bytes, end - at))):
            await asyncio.to_thread(os.pwrite, fd, piece, at)
            at += len(piece)
            await add(len(piece))
    if at != end:
        raise _size_mismatch(file, at)


async def keep_to_rate(started: float, done: int, rate: int | None) -> None:
    """Sleep until ``done`` bytes since ``started`` (monotonic) keep to ``rate`` a second."""
    if rate is not None:
        ahead = done / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _Progress:
    """Records a staging's progress, at most every ``stage_progress_seconds`` and
    ``stage_progress_bytes``; finds out on the way whether the staging was cancelled."""

    def __init__(self, stager: SceneStager, job_id: str, total: int) -> None:
        self.stager, self.job_id, self.total = stager, job_id, total
        self.files_done = self.bytes_done = self.reported_bytes = 0
        #: Of ``bytes_done``, those linked from content staged as uploaded.
        self.prestaged = 0
        self.reported_at = self.started_at = time.monotonic()

    async def add(self, n: int, *, prestaged: bool = False) -> None:
        self.bytes_done += n
        s = self.stager.settings
        if prestaged:
            self.prestaged += n
        else:  # the copy keeps to its rate; links cost the link nothing
            fetched = self.bytes_done - self.prestaged
            await keep_to_rate(self.started_at, fetched, s.stage_max_bytes_per_second)
        due = (
            time.monotonic() - self.reported_at >= s.stage_progress_seconds
            and self.bytes_done - self.reported_bytes >= s.stage_progress_bytes
        )
        if due or self.job_id in self.stager.cancel_asked:
            await self.report()

    def undo(self, n: int) -> None:
        """Bytes counted that are fetched again (not recorded as progress until passed)."""
        self.bytes_done -= n

    async def report(self) -> None:
        self.stager.cancel_asked.discard(self.job_id)
        done, files, total, linked = self.bytes_done, self.files_done, self.total, self.prestaged
        staging = await self.stager._record(
            self.job_id, lambda s: s.progress(files, done, total, _now(), linked)
        )
        self.reported_at, self.reported_bytes = time.monotonic(), done
        if staging.status is StagingStatus.cancelled:
            raise Cancelled


class _Uploads:
    """A manifest staging's files whose upload has not completed yet (the job was created
    on a manifest still waiting for files): which of them are there now, and the waits for
    the others. A file whose content is not stored and has no open upload session left
    (aborted, expired) will never come: :class:`SceneUploadEnded`."""

    def __init__(
        self,
        stager: SceneStager,
        staging: SceneStaging,
        files: list[SceneFile],
        awaited: set[str],
        progress: _Progress,
        slot: _Slot | None,
    ) -> None:
        self.stager, self.staging, self.files = stager, staging, files
        self.progress, self.slot = progress, slot
        #: Contents (SHA-256) not uploaded yet, and where each arrived one is in the store.
        self.awaited = awaited
        self.stored: dict[str, tuple[str, str]] = {}

    def _placed(self, file: SceneFile) -> SceneFile:
        if file.sha256 not in self.stored:
            return file
        bucket, key = self.stored[file.sha256]
        return SceneFile(file.path, file.size_bytes, file.sha256, bucket, key)

    async def ready(self, files: list[SceneFile], needed: bool) -> list[SceneFile]:
        """Of ``files``, those uploaded, once there is one (in their order); waits meanwhile,
        the copy slot given up (``needed``: they are files the test frames need)."""
        if any(f.sha256 in self.awaited for f in files):
            await self._look()
        while not (ready := [self._placed(f) for f in files if f.sha256 not in self.awaited]):
            await self._wait(files, needed)
        return ready

    async def _look(self) -> None:
        """Find which awaited contents are uploaded now; raise if one never will be."""
        if not self.awaited:
            return
        for view in self.stager.upload_views:  # uploads first: see contents_uploading
            await view.catch_up()
        owner, schema = self.staging.owner_id, self.stager.store.schema
        async with self.stager.store.pool.acquire() as conn:
            arrived = await stored_contents(conn, schema, owner, sorted(self.awaited))
            self.stored.update(arrived)
            self.awaited -= arrived.keys()
            if not self.awaited:
                return
            uploading = await contents_uploading(conn, schema, owner, sorted(self.awaited))
            ended = sorted(
                (f for f in self.files if f.sha256 in self.awaited - uploading),
                key=lambda f: f.path,
            )
            if not ended:
                return
            status = await last_upload_status(conn, schema, owner, ended[0].sha256)
        file, how = ended[0], status or "none"
        raise SceneUploadEnded(
            f"{file.path} was never uploaded and no upload session for it is open any more"
            f" (its last one: {how}); submit the manifest again, upload the files it lacks"
            " and create the job again",
            path=file.path,
            sha256=file.sha256,
            status=how,
        )

    async def _wait(self, files: list[SceneFile], needed: bool) -> None:
        """Record that the staging waits for ``files``, give the copy slot up, and come back
        (holding a slot again) once one of them is uploaded; raise :class:`Cancelled` when
        the staging was cancelled meanwhile."""
        job_id, progress = self.staging.job_id, self.progress
        waited = [f for f in files if f.sha256 in self.awaited] if needed else []
        named = {f.path for f in waited}
        others = [f for f in self.files if f.sha256 in self.awaited and f.path not in named]
        every = sorted(waited, key=lambda f: f.path) + sorted(others, key=lambda f: f.path)
        event = SceneFilesAwaited(
            job_id=job_id,
            needed=needed,
            files_waiting=len(every),
            bytes_waiting=sum(f.size_bytes for f in every),
            needed_files_waiting=len(waited),
            files_done=progress.files_done,
            bytes_done=progress.bytes_done,
            files_total=len(self.files),
            bytes_total=progress.total,
            paths=[f.path for f in every[:AWAITED_PATHS]],
            at=_now(),
        )
        staging = await self.stager._record(job_id, lambda s: s.awaiting_upload(event))
        log.info(
            "staging_awaiting_upload",
            job_id=job_id,
            needed=needed,
            files=event.files_waiting,
            bytes=event.bytes_waiting,
        )
        if self.slot is not None:
            self.slot.give()
        self.stager.waiting.add(job_id)
        try:
            while staging.status is StagingStatus.copying:
                await self.stager.look_again()
                await self._look()
                if any(f.sha256 not in self.awaited for f in files):
                    break
                staging = await self.stager._record(job_id, lambda s: None)
        finally:
            self.stager.waiting.discard(job_id)
        if staging.status is not StagingStatus.copying:
            raise Cancelled
        if self.slot is not None:
            await self.slot.take()


# -- helpers (file system work runs in threads) ------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _check_path(path: str) -> str:
    """``path`` if it can be placed under a staged folder and opened by the farm."""
    try:
        return check_key(path, "scene path")
    except KeyRefused as e:
        raise ScenePathRefused(f"{path!r} cannot be staged: {e}", path=path) from e


def _size_mismatch(file: SceneFile, actual: int) -> SceneSizeMismatch:
    return SceneSizeMismatch(
        f"{file.path}: the store holds {actual} bytes, not the {file.size_bytes} declared",
        path=file.path,
        expected_bytes=file.size_bytes,
        actual_bytes=actual,
    )


def _holds(final: Path, name: str) -> bool:
    """Whether ``final`` is a staged folder (complete, verified) holding ``name``."""
    return (final / MARKER).is_file() and (final / name).is_file()


def _open(dest: Path) -> IO[bytes]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.open("wb")


def _open_sized(dest: Path, size: int) -> int:
    """``dest`` opened for writing at any offset, ``size`` bytes long."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    return fd


def _hash_span(fd: int, digest: Any, start: int, end: int, chunk_bytes: int) -> None:
    at = start
    while at < end:
        data = os.pread(fd, min(chunk_bytes, end - at), at)
        if not data:
            raise OSError(f"short read at {at} of a file being staged")
        digest.update(data)
        at += len(data)


def _write(out: IO[bytes], digest: Any, data: bytearray) -> None:
    out.write(data)
    digest.update(data)


def _sync_close(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()


def _write_marker(incoming: Path, job_id: str, scene_id: str, files: list[SceneFile]) -> None:
    marker = {
        "staged_by_job": job_id,
        "scene_id": scene_id,
        "files": [{"path": f.path, "size_bytes": f.size_bytes, "sha256": f.sha256} for f in files],
        "staged_at": _now().isoformat(),
    }
    with (incoming / MARKER).open("w") as out:
        json.dump(marker, out, indent=1)
        out.flush()
        os.fsync(out.fileno())


def _link_content(content: Path, dest: Path, size_bytes: int) -> bool:
    """Hard-link ``content`` (staged as uploaded, verified) to ``dest``; False if it is not
    there with ``size_bytes`` or cannot be linked (then the file is fetched)."""
    try:
        if content.stat().st_size != size_bytes:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(content, dest)
    except OSError:
        return False
    return True


def _link_needed(
    incoming: Path, needed: Path, paths: set[str], staged_to: str, sizes: dict[str, int]
) -> None:
    """Fill the needed folder: a hard link to each copied file of ``paths`` (a copy where
    links cannot be made), and the listing of every file the scene will hold."""
    _remove(needed)  # what an attempt before a crash left, not recorded
    for path in sorted(paths):
        dest = needed / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(incoming / path, dest)
        except OSError:
            shutil.copyfile(incoming / path, dest)
    write_listing(needed, staged_to, sizes)


def _link_rest(final: Path, needed: Path, paths: list[str]) -> None:
    """Link the staged scene's files of ``paths`` into the needed folder: a scene prepared
    from it without a repath (a main file that is not a ``.blend``, rendered as staged)
    finds every file there once the scene is staged."""
    for path in paths:
        dest = needed / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(final / path, dest)
        except FileExistsError:
            continue  # linked by an attempt before a crash
        except OSError:
            shutil.copyfile(final / path, dest)


def _place(incoming: Path, final: Path, name: str) -> None:
    """Rename the filled folder into place. If the content is there already (another job
    staged it meanwhile, or an upload of the same bytes under another name), only the file
    it lacks moves in; a folder there that is not ours (no marker) is replaced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        incoming.rename(final)
        return
    except OSError:
        if not final.is_dir():
            raise
    if not (final / MARKER).is_file():
        stale = incoming.with_name(incoming.name + ".stale")
        final.rename(stale)
        incoming.rename(final)
        _remove(stale)
        return
    target = final / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        (incoming / name).rename(target)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
