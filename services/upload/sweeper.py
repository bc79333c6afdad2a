"""The sweeper: ends expired sessions and aborts orphaned multipart uploads.

Every ``upload_sweep_interval_seconds`` (and once at start):

1. **Expired sessions.** Sessions still uploading past their ``expires_at`` (found in the
   ``uploads`` read model) are sent ``ExpireUpload``: the handler aborts the multipart upload
   (the store deletes its parts) and records ``UploadExpired``, freeing the owner's quota.
2. **Orphans.** Every multipart upload open under ``uploads/`` and ``assets/`` in the scenes
   bucket (ListMultipartUploads, every page) that is older than ``upload_orphan_grace_seconds``
   and that no open session owns (checked on the sessions' own streams, not a read model) is
   aborted: what a crash between the store's call and the session's event leaves behind.

The bucket's lifecycle rule (``libs.s3.ensure_buckets``) aborts what is left after days, as a
safety net. Replicas may sweep at the same time: expiring is idempotent (one command id per
session) and aborting an upload twice changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from contracts.errors import DomainError, StorageUnavailable
from contracts.uploads import ExpireUpload, UploadAccepted, UploadStatus, is_sha256_hex
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.store import EventStore
from libs.eventstore.uow import UnitOfWork
from libs.logging import get_logger
from services.upload.domain import OwnerUploads, Upload
from services.upload.multipart import ListedUpload, Multipart
from services.upload.settings import UploadSettings

log = get_logger(__name__)

ACTOR = Actor(kind="service", id="upload-sweeper")
#: Expired sessions fetched (and expired, ``upload_store_concurrency`` at a time) per batch.
BATCH = 500
#: Where sessions' multipart uploads live in the scenes bucket.
PREFIXES = ("uploads/", "assets/")


class Sweeper:
    def __init__(
        self,
        settings: UploadSettings,
        store: EventStore,
        commands: CommandClient,
        multipart: Multipart,
    ) -> None:
        self.settings = settings
        self.store = store
        self.commands = commands
        self.multipart = multipart
        self._overdue_sql = (
            f"SELECT upload_id FROM {store.schema}.uploads WHERE status = 'uploading'"
            " AND expires_at <= $1 AND upload_id > $2 ORDER BY upload_id LIMIT $3"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Background task: sweep, then wait an interval, until the service stops."""
        while not stopping.is_set():
            await self.sweep(datetime.now(UTC))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.upload_sweep_interval_seconds)

    async def sweep(self, now: datetime) -> None:
        try:
            expired = await self.expire_overdue(now)
            orphans = await self.abort_orphans(now)
        except StorageUnavailable as e:  # the store is away: the next sweep tries again
            log.warning("upload_sweep_postponed", error=e.message)
            return
        if expired or orphans:
            log.info("upload_sweep_done", expired=expired, orphans_aborted=orphans)

    # -- expired sessions -----------------------------------------------------------------

    async def expire_overdue(self, now: datetime) -> int:
        """Send ``ExpireUpload`` for every open session past its expiry; how many were sent."""
        sent, after = 0, ""
        gate = asyncio.Semaphore(self.settings.upload_store_concurrency)
        while True:
            rows: Sequence[asyncpg.Record] = await self.store.pool.fetch(
                self._overdue_sql, now, after, BATCH
            )
            await asyncio.gather(*(self._expire(r["upload_id"], now, gate) for r in rows))
            sent += len(rows)
            if len(rows) < BATCH:
                return sent
            after = rows[-1]["upload_id"]

    async def _expire(self, upload_id: str, now: datetime, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                await self.commands.send(
                    ExpireUpload(upload_id=upload_id, at=now),
                    UploadAccepted,
                    command_id=f"expire_upload:{upload_id}",
                    actor=ACTOR,
                )
            except DomainError as e:  # tried again at the next sweep
                log.warning("upload_not_expired", upload_id=upload_id, code=e.code)

    # -- orphaned multipart uploads -------------------------------------------------------

    async def abort_orphans(self, now: datetime) -> int:
        """Abort the multipart uploads no open session owns; how many were aborted."""
        cutoff = now - timedelta(seconds=self.settings.upload_orphan_grace_seconds)
        bucket, aborted = self.settings.s3_scenes_bucket, 0
        for prefix in PREFIXES:
            async for page in self.multipart.open_uploads(bucket, prefix):
                old = [u for u in page if u.initiated <= cutoff]
                owned = await self._owned(old)
                for u in old:
                    if u.s3_upload_id in owned:
                        continue
                    if await self.multipart.abort(bucket, u.key, u.s3_upload_id):
                        log.info("orphan_multipart_aborted", key=u.key, initiated=u.initiated)
                        aborted += 1
        return aborted

    async def _owned(self, listed: Sequence[ListedUpload]) -> set[str]:
        """The store's upload ids among ``listed`` that an open session owns. A key not laid
        out as ours counts as owned: only what is provably an orphan is aborted."""
        uow = UnitOfWork(self.store)
        owned: set[str] = set()
        scenes: list[str] = []
        assets: list[tuple[str, str]] = []
        for u in listed:
            parts = u.key.split("/")
            if len(parts) == 4 and parts[0] == "uploads":
                scenes.append(parts[2])
            elif len(parts) == 3 and parts[0] == "assets" and is_sha256_hex(parts[2]):
                assets.append((parts[1], parts[2]))
            else:
                owned.add(u.s3_upload_id)
        await uow.prefetch(
            *((Upload, upload_id) for upload_id in scenes),
            *((OwnerUploads, owner_id) for owner_id, _ in assets),
        )
        for owner_id, sha256 in assets:
            found = (await uow.get(OwnerUploads, owner_id)).open_asset(sha256)
            if found is not None:
                scenes.append(found[0])
        await uow.prefetch(*((Upload, upload_id) for upload_id in scenes))
        for upload_id in scenes:
            upload = await uow.get(Upload, upload_id)
            open_statuses = (UploadStatus.uploading, UploadStatus.completing)
            if upload.status in open_statuses and upload.s3_upload_id is not None:
                owned.add(upload.s3_upload_id)
        return owned
