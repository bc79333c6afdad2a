"""Command handlers of the upload service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from contracts.base import Event
from contracts.jobs import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobFramesRendered,
    JobStatus,
    JobSubmitted,
)
from contracts.outputs import CreateOutputDownloadUrl, OutputArchiveRequested, OutputDownloadUrl
from libs.bus.commands import CommandServer
from libs.bus.consumer import BusEvent, Retry, claim_event
from libs.eventstore.store import EventStore
from libs.eventstore.uow import UnitOfWork
from libs.s3 import S3Client
from services.upload.domain import JobOutputs, OutputsNotOpened
from services.upload.settings import UploadSettings

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------


class OutputCommands:
    """Download URLs for outputs: minted here, where the S3 credentials are (the gateway
    never holds them). Minting changes nothing, so it records no event."""

    def __init__(self, settings: UploadSettings, presigner: S3Client) -> None:
        self.settings = settings
        self.presigner = presigner

    def register(self, server: CommandServer) -> None:
        server.register(CreateOutputDownloadUrl, self.download_url)

    async def download_url(
        self, cmd: CreateOutputDownloadUrl, uow: UnitOfWork
    ) -> OutputDownloadUrl:
        """A presigned GET of the output (as an attachment under its file name), if the
        caller owns it and it is in the bucket now; a fresh one each time it is asked."""
        outputs = await uow.get(JobOutputs, cmd.job_id)
        kept = outputs.downloadable(cmd.output_id, cmd.owner_id)
        assert kept.size_bytes is not None and kept.sha256 is not None  # it is ready
        seconds = cmd.expires_in_seconds or self.settings.download_url_seconds
        signed_at = datetime.now(UTC).replace(microsecond=0)
        url = await self.presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": outputs.bucket,
                "Key": kept.object_key,
                "ResponseContentDisposition": f'attachment; filename="{kept.file_name}"',
            },
            ExpiresIn=seconds,
        )
        return OutputDownloadUrl(
            output_id=cmd.output_id,
            url=url,
            expires_at=signed_at + timedelta(seconds=seconds),
            size_bytes=kept.size_bytes,
            sha256=kept.sha256,
            file_name=kept.file_name,
        )


JobEnded = JobCompleted | JobFailed | JobCancelled
_ENDS: dict[type[Event], JobStatus] = {
    JobCompleted: JobStatus.completed,
    JobFailed: JobStatus.failed,
    JobCancelled: JobStatus.cancelled,
}


class OutputEvents:
    """Job events into each job's outputs: the durable consumer ``upload-outputs``.

    Delivery is at least once: each event is claimed in the inbox in the transaction that
    appends what it caused, and the aggregate itself ignores what it has seen (a task's
    frames recorded again with the same bytes, a second end).
    """

    durable = "upload-outputs"
    subjects = tuple(
        f"events.{cls.event_type}"
        for cls in (JobSubmitted, JobFramesRendered, JobCompleted, JobFailed, JobCancelled)
    )

    def __init__(
        self, settings: UploadSettings, store: EventStore, archive_asked: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.store = store
        self.archive_asked = archive_asked
        self.keep_for = timedelta(days=settings.outputs_retention_days)

    async def handle(self, bus_event: BusEvent) -> None:
        event = bus_event.decode(self.store.registry)
        assert isinstance(event, JobSubmitted | JobFramesRendered | JobEnded)
        metadata = {
            "actor": {"kind": "service", "id": self.settings.service_name},
            "correlation_id": bus_event.metadata.get("correlation_id") or f"job:{event.job_id}",
            "causation_id": str(bus_event.event_id),
        }
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                uow = UnitOfWork(self.store, conn=conn, metadata=metadata)
                outputs = await uow.get(JobOutputs, event.job_id)
                recorded = self._decide(outputs, event)
                await uow.commit()  # the events insert is the transaction's first write
                if not await claim_event(conn, self.store.schema, self.durable, bus_event.event_id):
                    raise _AlreadyHandled
        except _AlreadyHandled:
            return
        except OutputsNotOpened as e:
            raise Retry(str(e)) from e
        if recorded:
            self.store.notify_appended()
        if any(isinstance(e, OutputArchiveRequested) for e in recorded):
            self.archive_asked()

    def _decide(self, outputs: JobOutputs, event: Event) -> list[Event]:
        now = datetime.now(UTC)
        match event:
            case JobSubmitted():
                bucket = self.settings.s3_outputs_bucket
                return outputs.open(event.job_id, event.owner_id, bucket, event.submitted_at)
            case JobFramesRendered():
                return outputs.frames_rendered(event, now)
            case JobCompleted() | JobFailed() | JobCancelled():
                status = _ENDS[type(event)]
                archive = self.settings.outputs_archive
                return outputs.ended(status, event.at, self.keep_for, archive, now)
        raise TypeError(f"upload-outputs does not handle {type(event).__name__}")


class _AlreadyHandled(Exception):
    """The event is in the inbox: another delivery handled it."""
