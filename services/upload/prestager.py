"""Staging as uploaded: each manifest file's content is copied to the farm's scene root as
soon as its upload completes (``upload.AssetStored``), before any job asks for it.

The content goes to ``<stage_root>/staged/.content/<owner>/<sha256>``, one file per content
and owner (a user never reuses another user's files, as with staged scenes). It is streamed
from the store into ``<sha256>.incoming`` next to it, its size and SHA-256 checked as it is
written (the stager's own copy, :func:`services.upload.stager.fetch`), then renamed into
place: a file there is always complete and verified. ``upload.AssetStaged`` records it on
the asset's stream. A job's staging later hard-links such a file instead of fetching it.

Its to-do list is the read model ``upload.assets`` (``prestage_status``): the assets stored within
``stage_content_retention_days`` whose content is not staged yet. An asset is staged once:
the asset aggregate records ``AssetStaged`` only for one not staged, two callers for the same
content share one copy, and a file already in place (copied before a crash, not recorded)
is recorded without a copy. A restart finds what is left in the list. At most
``stage_on_upload_concurrency`` files are copied at once, each held to
``stage_max_bytes_per_second``. Only one replica works at a time: the stager's leader runs
a cycle after each of its own (under its lock, so no database connection of its own).

Nothing here can fail a job: a copy that fails for a passing reason (the store or the disk
away) is tried again later, with a growing delay; bytes that are not what was declared
(``AssetStagingFailed``) are not tried again, and a job's staging copies (and judges) such a
file as it always did.

Assets never expire from the bucket, so content staged as uploaded is removed from the farm
``stage_content_retention_days`` after it was staged (``AssetUnstaged``); scenes staged from
it keep their own hard links.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from contracts.errors import SceneChecksumMismatch, SceneFileMissing, SceneSizeMismatch
from libs.eventstore.processor import Projector
from libs.eventstore.store import ConcurrencyError, EventStore
from libs.eventstore.uow import UnitOfWork
from libs.logging import get_logger
from libs.s3 import S3Client
from services.upload.domain import Asset, asset_key, content_path
from services.upload.projections import expired_prestages, pending_prestages
from services.upload.settings import UploadSettings
from services.upload.stager import SceneFile, fetch, keep_to_rate

log = get_logger(__name__)

#: Longest wait before a copy that failed for a passing reason is tried again.
MAX_RETRY_SECONDS = 300.0
#: Contents removed per sweep query.
SWEEP_BATCH = 500

Content = tuple[str, str]  # (owner id, sha256)


class ContentPrestager:
    def __init__(
        self, settings: UploadSettings, store: EventStore, s3: S3Client, view: Projector
    ) -> None:
        self.settings = settings
        self.store = store
        self.s3 = s3
        self.view = view
        self.root = Path(settings.stage_root)
        self.last_error: BaseException | None = None
        #: Contents being copied now; when one that failed for a passing reason is retried.
        self.active: dict[Content, asyncio.Task[None]] = {}
        self.retry_at: dict[Content, float] = {}
        self.failures: dict[Content, int] = {}
        self.swept_at: float | None = None
        #: Called when a copy ends: the leader's loop looks for more (set by the stager).
        self.on_finished: Callable[[], None] = lambda: None

    async def stop(self) -> None:
        """Stop the copies under way (leadership lost, or the service stopping); the next
        leader makes them again."""
        for task in self.active.values():
            task.cancel()
        await asyncio.gather(*self.active.values(), return_exceptions=True)

    async def cycle(self) -> None:
        """Remove what is past its retention (every ``stage_content_sweep_seconds``), then
        start copying the contents not staged yet, ``stage_on_upload_concurrency`` at once."""
        await self.view.catch_up()
        now, clock = _now(), time.monotonic()
        keep = timedelta(days=self.settings.stage_content_retention_days)
        if self.swept_at is None or clock - self.swept_at >= (
            self.settings.stage_content_sweep_seconds
        ):
            await self.sweep(now - keep)
            self.swept_at = clock
        free = self.settings.stage_on_upload_concurrency - len(self.active)
        if free <= 0:
            return
        async with self.store.pool.acquire() as conn:
            pending = await pending_prestages(
                conn, self.store.schema, now - keep, limit=free + len(self.active) + 100
            )
        for row in pending:
            key = (row["owner_id"], row["sha256"])
            if free <= 0:
                break
            if key in self.active or self.retry_at.get(key, 0.0) > clock:
                continue
            file = SceneFile(
                row["object_key"],
                row["size_bytes"],
                row["sha256"],
                row["bucket"],
                row["object_key"],
            )
            self._start(key, file)
            free -= 1

    def _start(self, key: Content, file: SceneFile) -> asyncio.Task[None]:
        task = self.active.get(key)
        if task is None:
            task = asyncio.create_task(self._stage_or_retry_later(key, file))
            self.active[key] = task
        return task

    async def prestage(self, owner_id: str, file: SceneFile) -> None:
        """Stage one content now (or wait for the copy under way): what the list does for
        each asset it finds; asking twice copies once."""
        await asyncio.shield(self._start((owner_id, file.sha256), file))

    async def keep(self, owner_id: str, file: SceneFile, fetched: Path, seconds: float) -> None:
        """Keep the file a job's staging fetched from the bucket (verified, at ``fetched``)
        as the content of ``file``: hard-linked into place and recorded (``AssetStaged``),
        so that the next staging of the same content links it instead of fetching it. A
        content staged already is left as it is; a link that cannot be made keeps nothing."""
        sha256 = file.sha256
        asset = await self._record(owner_id, sha256, lambda a: None)
        if not asset.stored or asset.staged:
            return
        dest = self.root / content_path(owner_id, sha256)
        if not await asyncio.to_thread(_link_into, fetched, dest, file.size_bytes):
            return
        await self._record(owner_id, sha256, lambda a: a.kept(owner_id, sha256, seconds, _now()))
        log.info("asset_kept", owner_id=owner_id, sha256=sha256, bytes=file.size_bytes)

    async def _stage_or_retry_later(self, key: Content, file: SceneFile) -> None:
        try:
            await self._stage(key[0], file)
            self.retry_at.pop(key, None)
            self.failures.pop(key, None)
            self.last_error = None
        except Exception as e:
            self.last_error = e
            n = self.failures[key] = self.failures.get(key, 0) + 1
            delay = min(self.settings.stage_retry_seconds * 2 ** (n - 1), MAX_RETRY_SECONDS)
            self.retry_at[key] = time.monotonic() + delay
            log.error(
                "prestage_will_retry",
                alert=True,
                owner_id=key[0],
                sha256=key[1],
                seconds=delay,
                error=repr(e),
                exc_info=True,
            )
        finally:
            self.active.pop(key, None)
            self.on_finished()

    # -- one content --------------------------------------------------------------------

    async def _stage(self, owner_id: str, file: SceneFile) -> None:
        sha256 = file.sha256
        asset = await self._record(owner_id, sha256, lambda a: None)
        if not asset.to_stage:
            return  # staged, given up or removed already (the same event seen again)
        dest = self.root / content_path(owner_id, sha256)
        incoming = dest.with_name(f"{sha256}.incoming")
        started = time.monotonic()
        if not await asyncio.to_thread(_holds, dest, file.size_bytes):
            done = 0

            async def paced(n: int) -> None:
                nonlocal done
                done += n
                await keep_to_rate(started, done, self.settings.stage_max_bytes_per_second)

            try:
                await fetch(self.s3, file, incoming, self.settings.stage_chunk_bytes, paced)
                await asyncio.to_thread(incoming.rename, dest)
            except (SceneChecksumMismatch, SceneSizeMismatch, SceneFileMissing) as e:
                code, reason = e.code, e.message
                log.warning("prestage_failed", owner_id=owner_id, sha256=sha256, code=code)
                await self._record(
                    owner_id,
                    sha256,
                    lambda a: a.stage_failure(owner_id, sha256, code, reason, _now()),
                )
                return
            finally:
                await asyncio.to_thread(incoming.unlink, missing_ok=True)
        seconds = time.monotonic() - started
        await self._record(owner_id, sha256, lambda a: a.stage(owner_id, sha256, seconds, _now()))
        log.info(
            "asset_staged",
            owner_id=owner_id,
            sha256=sha256,
            bytes=file.size_bytes,
            seconds=round(seconds, 3),
        )

    async def sweep(self, staged_before: datetime) -> int:
        """Remove the contents staged before ``staged_before``; how many were removed."""
        removed = 0
        while True:
            async with self.store.pool.acquire() as conn:
                due = await expired_prestages(conn, self.store.schema, staged_before, SWEEP_BATCH)
            due = [key for key in due if key not in self.active]
            for owner_id, sha256 in due:
                path = self.root / content_path(owner_id, sha256)
                await asyncio.to_thread(path.unlink, missing_ok=True)
                await self._record(owner_id, sha256, partial(_unstage, owner_id, sha256))
                removed += 1
            await self.view.catch_up()
            if len(due) < SWEEP_BATCH:
                if removed:
                    log.info("prestaged_content_removed", contents=removed)
                return removed

    async def _record(self, owner_id: str, sha256: str, decide: Callable[[Asset], object]) -> Asset:
        """The asset loaded fresh, after ``decide`` recorded what it decides (if anything);
        decided again when another writer came first."""
        for _ in range(5):
            uow = UnitOfWork(
                self.store,
                metadata={
                    "actor": {"kind": "service", "id": self.settings.service_name},
                    "correlation_id": f"asset:{owner_id}.{sha256}",
                },
            )
            asset = await uow.get(Asset, asset_key(owner_id, sha256))
            decide(asset)
            try:
                if await uow.commit():
                    self.store.notify_appended()
            except ConcurrencyError:
                continue
            return asset
        raise ConcurrencyError(f"asset-{owner_id}.{sha256} kept changing while it was staged")


def _now() -> datetime:
    return datetime.now(UTC)


def _unstage(owner_id: str, sha256: str, asset: Asset) -> None:
    asset.unstage(owner_id, sha256, "retention ended", _now())


def _link_into(fetched: Path, dest: Path, size_bytes: int) -> bool:
    """Hard-link ``fetched`` to ``dest``; True if ``dest`` holds the content now (linked,
    or put there verified meanwhile by a copy of the pre-stager's)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(fetched, dest)
    except FileExistsError:
        return _holds(dest, size_bytes)
    except OSError:
        return False
    return True


def _holds(dest: Path, size_bytes: int) -> bool:
    """Whether ``dest`` is in place with its size (renamed there only once verified)."""
    try:
        return dest.stat().st_size == size_bytes
    except OSError:
        return False
