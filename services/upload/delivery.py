"""Output delivery's background work: the zip of a completed job's frames, and deleting
outputs whose retention has ended. Both run as supervised background tasks.

**Archive.** The zip is written server-side, streamed from S3 into S3: each frame is read
from the bucket in chunks and written through :mod:`zipfile` (``ZIP_STORED``: images do not
compress; zip64 where sizes need it; data descriptors, as the output cannot seek) into a
spool; every time the spool holds a part, the part is sent (a multipart upload, each part
with its ``ChecksumSHA256``). Memory stays at about one part whatever the archive's size.
Each frame's size and SHA-256 are checked against what was recorded as it is copied, and
the archive's own are computed on the way. A pending archive is a ``building`` row of
``upload.outputs``, so a restarted service finds it and builds it again from the start (the
interrupted multipart upload is left to the bucket's abort rule). Replicas take each
archive under a PostgreSQL advisory lock, so one builds it.

**Retention.** Outputs whose ``expires_at`` has passed are deleted from the bucket, each
frame with its thumbnail (``contracts/outputs.py`` ``thumbnail_key``; a frame without one,
an OpenEXR frame, has nothing there, and deleting a missing key succeeds) (``DeleteObjects``,
up to 1,000 keys a call) and then recorded as ``OutputsDeleted``; a
crash in between deletes them again on the next sweep (deleting a missing key succeeds).
While a job's archive is being built its outputs wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import zipfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from contracts.base import Event
from contracts.outputs import OutputStatus, thumbnail_key
from libs.eventstore.store import ConcurrencyError, EventStore
from libs.eventstore.uow import UnitOfWork
from libs.leader import lock_key, wake_or_stop
from libs.logging import get_logger
from libs.s3 import S3Client, error_code
from services.upload.domain import JobOutputs, KeptOutput
from services.upload.settings import UploadSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = get_logger(__name__)

#: Bytes read from a frame at a time.
CHUNK = 1024 * 1024
#: S3's most keys in one ``DeleteObjects`` call.
DELETE_KEYS_PER_CALL = 1000
#: Errors of the store that a later try may not have.
STORE_ERRORS = (ClientError, BotoCoreError)


class ArchiveSourceChanged(Exception):
    """A frame is missing from the bucket, or is not the file that was recorded: the
    archive cannot be built."""


class _Spool:
    """Where the zip is written: bytes wait here until a part is full."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _hash_part(whole: hashlib._Hash, part: bytes) -> bytes:
    """Add ``part`` to the archive's hash; the part's own SHA-256 (in a thread)."""
    whole.update(part)
    return hashlib.sha256(part).digest()


async def write_zip(
    s3: S3Client, bucket: str, key: str, frames: list[KeptOutput], part_size: int
) -> tuple[int, str]:
    """Zip ``frames`` (objects of ``bucket``) into ``key``; the archive's size and SHA-256."""
    upload = await s3.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="application/zip", ChecksumAlgorithm="SHA256"
    )
    upload_id = upload["UploadId"]
    spool, whole = _Spool(), hashlib.sha256()
    parts: list[CompletedPartTypeDef] = []
    size = 0

    async def send(last: bool = False) -> None:
        nonlocal size
        while len(spool.data) >= part_size or (last and spool.data):
            part = bytes(spool.data[:part_size])
            del spool.data[:part_size]
            checksum = base64.b64encode(await asyncio.to_thread(_hash_part, whole, part)).decode()
            number = len(parts) + 1
            answer = await s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=part,
                ChecksumSHA256=checksum,
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
            size += len(part)

    try:
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for frame in frames:
                await _add(s3, bucket, frame, zf, spool, part_size, send)
        await send(last=True)
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        await asyncio.shield(_abort(s3, bucket, key, upload_id))
        raise
    stored = (await s3.head_object(Bucket=bucket, Key=key))["ContentLength"]
    if stored != size:
        raise ArchiveSourceChanged(f"{key}: {size} bytes were sent, the store holds {stored}")
    return size, whole.hexdigest()


async def _add(
    s3: S3Client,
    bucket: str,
    frame: KeptOutput,
    zf: zipfile.ZipFile,
    spool: _Spool,
    part_size: int,
    send: Callable[[], Awaitable[None]],
) -> None:
    """Copy one frame into the zip, checking its size and SHA-256 on the way."""
    assert frame.stored_at is not None and frame.size_bytes is not None
    info = zipfile.ZipInfo(frame.file_name, date_time=frame.stored_at.timetuple()[:6])
    info.file_size = frame.size_bytes  # zip64 is chosen from it up front
    try:
        got = await s3.get_object(Bucket=bucket, Key=frame.object_key)
    except ClientError as e:
        if error_code(e) in ("NoSuchKey", "404"):
            raise ArchiveSourceChanged(f"frame {frame.frame}: {frame.object_key} is gone") from e
        raise
    digest, copied = hashlib.sha256(), 0
    body = got["Body"]
    async with body:  # released even when the copy stops half-way
        with zf.open(info, "w") as entry:
            while chunk := await body.read(CHUNK):
                entry.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                if len(spool.data) >= part_size:
                    await send()
    if (copied, digest.hexdigest()) != (frame.size_bytes, frame.sha256):
        raise ArchiveSourceChanged(
            f"frame {frame.frame}: {frame.object_key} holds {copied} bytes with another"
            " content than was recorded"
        )


async def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
    try:
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except STORE_ERRORS as e:  # the bucket's lifecycle rule aborts it later
        log.warning("multipart_abort_failed", key=key, upload_id=upload_id, error=str(e))


def archive_lock(schema: str, job_id: str) -> int:
    """The advisory lock a replica holds while it builds the job's archive."""
    return lock_key(schema, f"archive:{job_id}")


class _Outputs:
    """Loading and saving job outputs aggregates for the background work."""

    def __init__(self, settings: UploadSettings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.schema = store.schema
        self.metadata = {"actor": {"kind": "service", "id": settings.service_name}}

    async def load(self, job_id: str) -> tuple[UnitOfWork, JobOutputs]:
        uow = UnitOfWork(self.store, metadata={**self.metadata, "correlation_id": f"job:{job_id}"})
        return uow, await uow.get(JobOutputs, job_id)

    async def change(self, job_id: str, decide: Callable[[JobOutputs], list[Event]]) -> None:
        """Record what ``decide`` says on the job's outputs, again on fresh state if another
        writer came first."""
        for _ in range(5):
            uow, outputs = await self.load(job_id)
            decide(outputs)
            try:
                if await uow.commit():
                    self.store.notify_appended()
                return
            except ConcurrencyError:
                continue
        raise ConcurrencyError(f"outputs-{job_id} kept changing")


class ArchiveBuilder(_Outputs):
    """Builds the archives asked for (``OutputArchiveRequested``), one at a time."""

    def __init__(self, settings: UploadSettings, store: EventStore, s3: S3Client) -> None:
        super().__init__(settings, store)
        self.s3 = s3
        self.wake = asyncio.Event()
        #: Why an archive could not be built in the last pass (None if none failed).
        self.last_error: Exception | None = None
        self._pending_sql = (
            f"SELECT job_id FROM {self.schema}.outputs WHERE kind = 'archive'"
            " AND status = 'building' ORDER BY job_id LIMIT 100"
        )

    def asked(self) -> None:
        """An archive was asked for: look now."""
        self.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.wake.clear()
            await self.build_pending()
            await wake_or_stop(self.wake, stopping, self.settings.outputs_archive_poll_seconds)

    async def build_pending(self) -> int:
        """Build every archive waiting; returns how many were looked at."""
        async with self.store.pool.acquire() as conn:
            jobs = [r["job_id"] for r in await conn.fetch(self._pending_sql)]
        failed: Exception | None = None
        for job_id in jobs:
            try:
                await self.build(job_id)
            except (*STORE_ERRORS, ConcurrencyError) as e:  # tried again next pass
                failed = e
                log.error("archive_not_built", job_id=job_id, error=str(e))
        self.last_error = failed
        return len(jobs)

    async def build(self, job_id: str) -> None:
        lock = archive_lock(self.schema, job_id)
        async with self.store.pool.acquire() as lock_conn:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                return  # another replica builds it
            try:
                await self._build(job_id)
            finally:
                with contextlib.suppress(Exception):
                    await lock_conn.execute("SELECT pg_advisory_unlock($1)", lock)

    async def _build(self, job_id: str) -> None:
        _, outputs = await self.load(job_id)
        archive, generation = outputs.archive, outputs.archive_generation
        if archive is None or archive.status is not OutputStatus.building:
            return
        frames = outputs.archive_frames()
        try:
            size, sha256 = await write_zip(
                self.s3,
                outputs.bucket,
                archive.object_key,
                frames,
                self.settings.outputs_archive_part_bytes,
            )
        except ArchiveSourceChanged as e:
            reason, now = str(e), datetime.now(UTC)
            log.error("archive_failed", job_id=job_id, error=reason)
            await self.change(job_id, lambda o: o.archive_failed(generation, reason, now))
            return
        now = datetime.now(UTC)
        await self.change(
            job_id, lambda o: o.archive_stored(generation, len(frames), size, sha256, now)
        )
        log.info("archive_stored", job_id=job_id, frames=len(frames), size_bytes=size)


class OutputsNotDeleted(Exception):
    """The store refused to delete some of the objects."""


class RetentionSweeper(_Outputs):
    """Deletes outputs whose retention has ended, then records ``OutputsDeleted``."""

    def __init__(self, settings: UploadSettings, store: EventStore, s3: S3Client) -> None:
        super().__init__(settings, store)
        self.s3 = s3
        self.last_error: Exception | None = None
        s = self.schema
        self._due_sql = (
            f"SELECT DISTINCT job_id FROM {s}.outputs WHERE status <> 'deleted'"
            " AND expires_at <= $1 AND job_id NOT IN"
            f" (SELECT job_id FROM {s}.outputs WHERE status = 'building')"
            " ORDER BY job_id LIMIT 100"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.outputs_sweep_seconds)

    async def sweep(self) -> int:
        """One pass; returns how many outputs were deleted."""
        now = datetime.now(UTC)
        async with self.store.pool.acquire() as conn:
            jobs = [r["job_id"] for r in await conn.fetch(self._due_sql, now)]
        deleted = 0
        failed: Exception | None = None
        for job_id in jobs:
            try:
                deleted += await self.sweep_job(job_id, now)
            except (*STORE_ERRORS, OutputsNotDeleted, ConcurrencyError) as e:  # next sweep
                failed = e
                log.error("outputs_not_deleted", job_id=job_id, error=str(e))
        self.last_error = failed
        return deleted

    async def sweep_job(self, job_id: str, now: datetime) -> int:
        deleted = 0
        while True:
            uow, outputs = await self.load(job_id)
            due = outputs.expired(now)
            if not due:
                return deleted
            kept = [k for i in due if (k := outputs.output(i)) is not None]
            keys = [k.object_key for k in kept]
            keys += [thumbnail_key(k.object_key) for k in kept if k.frame is not None]
            for i in range(0, len(keys), DELETE_KEYS_PER_CALL):
                answer = await self.s3.delete_objects(
                    Bucket=outputs.bucket,
                    Delete={
                        "Objects": [{"Key": k} for k in keys[i : i + DELETE_KEYS_PER_CALL]],
                        "Quiet": True,
                    },
                )
                if errors := answer.get("Errors"):
                    raise OutputsNotDeleted(
                        f"job {job_id}: {len(errors)} objects, e.g. {errors[0]}"
                    )
            outputs.deleted(due, now)
            await uow.commit()
            self.store.notify_appended()
            deleted += len(due)
            log.info("outputs_deleted", job_id=job_id, outputs=len(due))
