"""The completer: has the store join the parts of every session being completed.

Joining the parts of a big file takes the store a while (minutes for terabytes), so it is not
done in a command, which holds a database connection: ``CompleteUpload`` verifies the parts
and records ``UploadCompletionRequested`` (status ``completing``); this background task finds
such sessions (in the ``uploads`` read model, woken by every local commit and polling
``upload_completer_poll_seconds``), asks the store to join them, with no connection held,
and sends ``FinishUpload``, which records the outcome.

Crash-safe: a session stays ``completing`` until ``FinishUpload`` records the outcome, so
after a crash the next run joins it again; if the store had joined it already it answers
NoSuchUpload, and ``FinishUpload`` finds the whole object. Replicas may join the same
session at once; the store completes it once and ``FinishUpload`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from contracts.errors import ConcurrencyConflict, DomainError, UploadIncomplete
from contracts.uploads import FinishUpload, UploadAccepted, UploadStatus
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.store import EventStore
from libs.eventstore.uow import UnitOfWork
from libs.logging import get_logger
from services.upload.domain import Upload
from services.upload.multipart import Multipart, NoSuchUpload
from services.upload.settings import UploadSettings

log = get_logger(__name__)

ACTOR = Actor(kind="service", id="upload-completer")
#: Sessions taken per look; the rest at the next.
BATCH = 100
#: Back-off after a failed join of one session: doubling up to this many seconds.
MAX_BACKOFF_SECONDS = 60.0
#: At most one look per this many seconds, however often commits wake the completer.
MIN_LOOK_SECONDS = 0.05


class Completer:
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
        self._gate = asyncio.Semaphore(settings.upload_store_concurrency)
        #: Set by every commit of this process (a completion request among them).
        self._woken = store.waiter()
        self._running: dict[str, asyncio.Task[None]] = {}
        #: upload id -> (failures in a row, monotonic time before which it is not retried)
        self._backoff: dict[str, tuple[int, float]] = {}
        self._completing_sql = (
            f"SELECT upload_id FROM {store.schema}.uploads WHERE status = 'completing'"
            " ORDER BY updated_at LIMIT $1"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Background task: start a join for every session being completed, as they come."""
        try:
            while not stopping.is_set():
                self._reap()
                rows = await self.store.pool.fetch(self._completing_sql, BATCH)
                now = time.monotonic()
                for r in rows:
                    upload_id = r["upload_id"]
                    retry_at = self._backoff.get(upload_id, (0, 0.0))[1]
                    if upload_id not in self._running and retry_at <= now:
                        self._running[upload_id] = asyncio.create_task(self._finish(upload_id))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._woken.wait(), self.settings.upload_completer_poll_seconds
                    )
                self._woken.clear()
                await asyncio.sleep(max(0.0, now + MIN_LOOK_SECONDS - time.monotonic()))
        finally:
            for task in self._running.values():  # joined again after a restart
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            self._running.clear()

    def _reap(self) -> None:
        """Forget finished joins; a join that failed unexpectedly fails this task (and is
        restarted by its supervisor)."""
        for upload_id, task in list(self._running.items()):
            if task.done():
                del self._running[upload_id]
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error

    async def _finish(self, upload_id: str) -> None:
        async with self._gate:
            try:
                await self._join(upload_id)
            except DomainError as e:  # the store or the service is away: later, slower
                failures = self._backoff.get(upload_id, (0, 0.0))[0] + 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                self._backoff[upload_id] = (failures, time.monotonic() + delay)
                log.warning("upload_join_postponed", upload_id=upload_id, code=e.code, in_s=delay)
            else:
                self._backoff.pop(upload_id, None)

    async def _join(self, upload_id: str) -> None:
        upload = await UnitOfWork(self.store).get(Upload, upload_id)
        s3_id = upload.s3_upload_id
        if upload.status is not UploadStatus.completing or s3_id is None:
            return
        bucket, key = upload.bucket, upload.object_key
        failure: str | None = None
        try:
            parts = upload.verify(await self.multipart.parts(bucket, key, s3_id))
            await self.multipart.complete(bucket, key, s3_id, parts)
        except NoSuchUpload:
            pass  # joined already (a join cut short), or dropped: FinishUpload tells which
        except (UploadIncomplete, ConcurrencyConflict) as e:
            failure = e.message
        await self.commands.send(
            FinishUpload(upload_id=upload_id, failure=failure),
            UploadAccepted,
            # One finish per completion request: the version it was requested at.
            command_id=f"finish_upload:{upload_id}:{upload.version}",
            actor=ACTOR,
        )
