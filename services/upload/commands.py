"""Command handlers of the upload service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from contracts.base import Event
from contracts.errors import (
    ManifestNotFound,
    OutputNotFound,
    UploadNotFound,
    UploadSessionExpired,
)
from contracts.jobs import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobFramesRendered,
    JobStatus,
    JobSubmitted,
    JobTestRenderFramesRendered,
)
from contracts.outputs import CreateOutputDownloadUrl, OutputArchiveRequested, OutputDownloadUrl
from contracts.staging import CancelStaging, StageScene, StagingAccepted
from contracts.uploads import (
    AbortUpload,
    CompleteManifest,
    CompleteUpload,
    ExpireUpload,
    FinishUpload,
    ListUploadParts,
    ManifestAccepted,
    PartUrl,
    RefreshUpload,
    SignUploadParts,
    StartUpload,
    StoredPart,
    StoredParts,
    SubmitManifest,
    UploadAccepted,
    UploadKind,
    UploadPartUrls,
    UploadStatus,
)
from libs.bus.commands import CommandServer
from libs.bus.consumer import BusEvent, Retry, claim_event
from libs.eventstore.store import EventStore
from libs.eventstore.uow import UnitOfWork
from libs.ids import new_id
from libs.logging import get_logger
from libs.s3 import MAX_PRESIGN_SECONDS, S3Client
from services.upload.domain import (
    ENDING_EVENTS,
    Asset,
    Content,
    HeldPart,
    JobOutputs,
    Manifest,
    NewSession,
    OutputsNotOpened,
    OwnerUploads,
    SceneStaging,
    Upload,
    UploadLimits,
    asset_key,
    asset_object_key,
    check_same_size,
    check_size,
    contents,
    part_plan,
    scene_object_key,
)
from services.upload.multipart import Multipart, NoSuchUpload, b64_to_hex, hex_to_b64
from services.upload.settings import UploadSettings

log = get_logger(__name__)

# --- upload sessions and manifests -------------------------------------------------------


class UploadSessions:
    """Upload sessions and manifests: each handler asks the store (S3) what it must know,
    then decides on the aggregates. A call to the store that creates or removes something
    happens before the event that records it, so a crash in between leaves at worst an
    orphaned multipart upload, which the sweeper aborts."""

    def __init__(self, settings: UploadSettings, multipart: Multipart) -> None:
        self.settings = settings
        self.multipart = multipart
        self.limits = UploadLimits(
            max_open_sessions=settings.upload_max_open_sessions,
            max_open_asset_sessions=settings.upload_max_open_asset_sessions,
            max_bytes_in_flight=settings.upload_max_bytes_in_flight,
        )
        self.ttl = timedelta(seconds=settings.upload_session_ttl_seconds)

    def register(self, server: CommandServer) -> None:
        server.register(StartUpload, self.start)
        server.register(RefreshUpload, self.refresh)
        # An answer, not a change: nothing committed, nothing stored.
        server.register(ListUploadParts, self.list_parts, read_only=True)
        # Records the multipart upload the first time; only a tombstone is stored.
        server.register(SignUploadParts, self.sign_parts, store_reply=False)
        server.register(CompleteUpload, self.complete)
        server.register(FinishUpload, self.finish)
        server.register(AbortUpload, self.abort)
        server.register(ExpireUpload, self.expire)
        server.register(SubmitManifest, self.submit_manifest)
        server.register(CompleteManifest, self.complete_manifest)

    # -- helpers --------------------------------------------------------------------------

    async def _owned(self, uow: UnitOfWork, upload_id: str, owner_id: str | None) -> Upload:
        upload = await uow.get(Upload, upload_id)
        if not upload.exists or (owner_id is not None and upload.owner_id != owner_id):
            # Someone else's upload is indistinguishable from a missing one.
            raise UploadNotFound(f"no upload {upload_id}", upload_id=upload_id)
        return upload

    async def _accepted(self, uow: UnitOfWork, upload: Upload) -> UploadAccepted:
        """The session's new version. An event that ends the session frees its owner's
        quota in the same append."""
        if any(isinstance(e, ENDING_EVENTS) for e in upload.pending):
            owner = await uow.get(OwnerUploads, upload.owner_id)
            owner.free(upload.owner_id, upload.upload_id)
        return UploadAccepted(upload_id=upload.upload_id, version=upload.version)

    async def _completed(self, uow: UnitOfWork, upload: Upload, now: datetime) -> UploadAccepted:
        """Record the completion (and, for an asset, that its owner now holds it)."""
        upload.complete(now)
        if upload.kind is UploadKind.asset:
            asset = await uow.get(Asset, asset_key(upload.owner_id, upload.sha256))
            asset.store(upload, now)
        return await self._accepted(uow, upload)

    async def _held(self, upload: Upload) -> list[HeldPart]:
        """Every part the store holds for the session (none before its multipart upload
        exists); NoSuchUpload if the store no longer knows it."""
        if upload.s3_upload_id is None:
            return []
        return await self.multipart.parts(upload.bucket, upload.object_key, upload.s3_upload_id)

    async def _abort_in_store(self, upload: Upload) -> bool:
        """Abort the session's multipart upload (its parts are deleted); False if the store
        had none (it was joined, or dropped, or never created)."""
        if upload.s3_upload_id is None:
            return False
        return await self.multipart.abort(upload.bucket, upload.object_key, upload.s3_upload_id)

    async def _completed_in_store(self, upload: Upload) -> bool:
        """Whether the store holds the finished object with the declared size (a completion
        whose event was lost, or a concurrent one)."""
        size = await self.multipart.object_size(upload.bucket, upload.object_key)
        return size == upload.size_bytes

    # -- sessions -------------------------------------------------------------------------

    async def start(self, cmd: StartUpload, uow: UnitOfWork) -> UploadAccepted:
        # Both streams (and the stored-reply check) in one query, before the store is asked.
        await uow.prefetch((Upload, cmd.upload_id), (OwnerUploads, cmd.owner_id))
        upload = await uow.get(Upload, cmd.upload_id)
        if upload.exists:
            return await self._accepted(uow, await self._owned(uow, cmd.upload_id, cmd.owner_id))
        file = cmd.file
        check_size(file.size_bytes, self.settings.upload_max_bytes)
        plan = part_plan(file.size_bytes, self.settings.upload_min_part_bytes)
        owner = await uow.get(OwnerUploads, cmd.owner_id)
        session = NewSession(cmd.upload_id, UploadKind.scene, file.size_bytes)
        owner.make_room([session], self.limits)
        bucket = self.settings.s3_scenes_bucket
        key = scene_object_key(cmd.owner_id, cmd.upload_id, file.file_name)
        s3_upload_id = await self.multipart.create(bucket, key, file.content_type)
        upload.start(
            upload_id=cmd.upload_id,
            owner_id=cmd.owner_id,
            kind=UploadKind.scene,
            file_name=file.file_name,
            size_bytes=file.size_bytes,
            sha256=file.sha256,
            content_type=file.content_type,
            bucket=bucket,
            object_key=key,
            s3_upload_id=s3_upload_id,
            plan=plan,
            now=datetime.now(UTC),
            ttl=self.ttl,
        )
        owner.take(cmd.owner_id, [session])
        return await self._accepted(uow, upload)

    async def refresh(self, cmd: RefreshUpload, uow: UnitOfWork) -> UploadAccepted:
        """Progress from what the store holds; recorded only when it changed."""
        upload = await self._owned(uow, cmd.upload_id, cmd.owner_id)
        if upload.status is UploadStatus.uploading:
            try:
                held = await self._held(upload)
            except NoSuchUpload:  # completed or dropped meanwhile: complete_upload tells
                return await self._accepted(uow, upload)
            upload.confirm(held, datetime.now(UTC))
        return await self._accepted(uow, upload)

    async def list_parts(self, cmd: ListUploadParts, uow: UnitOfWork) -> StoredParts:
        upload = await self._owned(uow, cmd.upload_id, cmd.owner_id)
        items: list[StoredPart] = []
        next_part: int | None = None
        open_statuses = (UploadStatus.uploading, UploadStatus.completing)
        if upload.status in open_statuses and upload.s3_upload_id is not None:
            try:
                held, next_part = await self.multipart.parts_page(
                    upload.bucket,
                    upload.object_key,
                    upload.s3_upload_id,
                    cmd.after_part_number,
                    cmd.limit,
                )
            except NoSuchUpload:
                held = []
            items = [
                StoredPart(
                    part_number=p.part_number,
                    size_bytes=p.size_bytes,
                    sha256=b64_to_hex(p.checksum_sha256),
                )
                for p in held
            ]
        assert upload.status is not None
        return StoredParts(
            upload_id=upload.upload_id,
            status=upload.status,
            part_size_bytes=upload.part_size_bytes,
            part_count=upload.part_count,
            items=items,
            next_part_number=next_part,
        )

    async def sign_parts(self, cmd: SignUploadParts, uow: UnitOfWork) -> UploadPartUrls:
        """Presigned PUT URLs, each signed with its part's exact length and SHA-256. An
        asset session's multipart upload is created in the store here, the first time."""
        upload = await self._owned(uow, cmd.upload_id, cmd.owner_id)
        now = datetime.now(UTC)
        upload.require_open(now)
        upload.check_part_numbers(p.part_number for p in cmd.parts)
        assert upload.expires_at is not None
        left = int((upload.expires_at - now).total_seconds())
        expires_in = min(self.settings.upload_part_url_ttl_seconds, left, MAX_PRESIGN_SECONDS)
        if expires_in < 1:
            raise UploadSessionExpired(
                f"upload {upload.upload_id} has expired; start a new upload",
                upload_id=upload.upload_id,
            )
        if upload.s3_upload_id is None:
            created = await self.multipart.create(upload.bucket, upload.object_key, None)
            upload.multipart_created(created, now)
        s3_upload_id = upload.s3_upload_id
        assert s3_upload_id is not None
        plan = upload.plan
        urls = []
        for part in cmd.parts:
            size, checksum = plan.size_of(part.part_number), hex_to_b64(part.sha256)
            url = await self.multipart.part_url(
                upload.bucket,
                upload.object_key,
                s3_upload_id,
                part.part_number,
                size,
                checksum,
                expires_in,
            )
            urls.append(
                PartUrl(
                    part_number=part.part_number,
                    method="PUT",
                    url=url,
                    headers={"content-length": str(size), "x-amz-checksum-sha256": checksum},
                    size_bytes=size,
                )
            )
        return UploadPartUrls(
            upload_id=upload.upload_id,
            expires_at=now + timedelta(seconds=expires_in),
            urls=urls,
        )

    async def complete(self, cmd: CompleteUpload, uow: UnitOfWork) -> UploadAccepted:
        """Verified completion, first step: every part of the plan is in the store with its
        size (from the store's ListParts, never the client's word), else refused with what
        is missing. The store then joins the parts (the completer, :meth:`finish`), which
        takes a while for a big file. The store checked each part's SHA-256 when it was
        sent; the whole file's SHA-256 is checked when the scene is staged (it is read in
        full there). Completing an upload that is completed or being completed answers the
        same."""
        upload = await self._owned(uow, cmd.upload_id, cmd.owner_id)
        if upload.status in (UploadStatus.completed, UploadStatus.completing):
            return await self._accepted(uow, upload)
        now = datetime.now(UTC)
        upload.require_open(now)
        try:
            held = await self._held(upload)
        except NoSuchUpload:
            if await self._completed_in_store(upload):  # joined, but not recorded
                return await self._completed(uow, upload, now)
            # The store dropped it (its lifecycle rule, or someone else): the session ends.
            upload.expire(now, due=False)
            await self._accepted(uow, upload)
            await uow.commit_alone()
            raise UploadSessionExpired(
                f"the store no longer holds upload {upload.upload_id}; start a new upload",
                upload_id=upload.upload_id,
            ) from None
        upload.verify(held)
        upload.request_completion(now)
        return await self._accepted(uow, upload)

    async def finish(self, cmd: FinishUpload, uow: UnitOfWork) -> UploadAccepted:
        """From the completer, once the store joined the parts (or refused to): completed if
        the store holds the whole object; else open again with the reason, or ended if the
        store holds nothing of it any more."""
        upload = await self._owned(uow, cmd.upload_id, None)
        if upload.status is not UploadStatus.completing:
            return await self._accepted(uow, upload)
        now = datetime.now(UTC)
        if await self._completed_in_store(upload):
            return await self._completed(uow, upload, now)
        try:
            await self._held(upload)
        except NoSuchUpload:
            upload.expire(now, due=False)
            return await self._accepted(uow, upload)
        if cmd.failure is None:
            log.error("joined_object_missing", upload_id=upload.upload_id)
        upload.completion_failed(cmd.failure or "the store did not join the parts", now)
        return await self._accepted(uow, upload)

    async def abort(self, cmd: AbortUpload, uow: UnitOfWork) -> UploadAccepted:
        upload = await self._owned(uow, cmd.upload_id, cmd.owner_id)
        if upload.status is UploadStatus.uploading and upload.s3_upload_id is not None:
            aborted = await self._abort_in_store(upload)
            if not aborted:  # joined in the store without its event, or dropped
                await self.multipart.delete(upload.bucket, upload.object_key)
        upload.abort(datetime.now(UTC))
        return await self._accepted(uow, upload)

    async def expire(self, cmd: ExpireUpload, uow: UnitOfWork) -> UploadAccepted:
        """A session past its expiry (as of ``cmd.at``): its multipart upload is aborted and
        its parts deleted. One the store completed already (its completion's event was
        lost) is recorded as completed instead."""
        upload = await self._owned(uow, cmd.upload_id, None)
        if not upload.overdue(cmd.at):
            return await self._accepted(uow, upload)
        had_parts = upload.s3_upload_id is not None
        aborted = await self._abort_in_store(upload)
        if had_parts and not aborted and await self._completed_in_store(upload):
            return await self._completed(uow, upload, cmd.at)
        upload.expire(cmd.at)
        return await self._accepted(uow, upload)

    # -- manifests ------------------------------------------------------------------------

    async def submit_manifest(self, cmd: SubmitManifest, uow: UnitOfWork) -> ManifestAccepted:
        """Record the manifest; open an asset session for each content the caller does not
        hold and is not uploading yet (reusing an open one). Only the caller's own assets
        count: another user's copy of a file is never used, nor revealed. No store call:
        each asset session creates its multipart upload with its first part URLs."""
        owner_id, files = cmd.owner_id, cmd.manifest.files
        distinct = contents(files)
        await uow.prefetch(
            (Manifest, cmd.manifest_id),
            (OwnerUploads, owner_id),
            *((Asset, asset_key(owner_id, c.sha256)) for c in distinct),
        )
        manifest = await uow.get(Manifest, cmd.manifest_id)
        if manifest.exists:
            if manifest.owner_id != owner_id:
                raise ManifestNotFound(
                    f"no manifest {cmd.manifest_id}", manifest_id=cmd.manifest_id
                )
            return ManifestAccepted(manifest_id=cmd.manifest_id, version=manifest.version)
        owner = await uow.get(OwnerUploads, owner_id)
        lacking: list[Content] = []
        #: sha256 -> the session to send it through, for every content the caller lacks.
        wanted: dict[str, str] = {}
        for c in distinct:
            check_size(c.size_bytes, self.settings.upload_max_bytes)
            asset = await uow.get(Asset, asset_key(owner_id, c.sha256))
            asset.check_size(c.sha256, c.size_bytes)
            if asset.stored:
                continue
            uploading = owner.open_asset(c.sha256)
            if uploading is None:
                lacking.append(c)
            else:
                check_same_size(c.sha256, c.size_bytes, uploading[1].size_bytes)
                wanted[c.sha256] = uploading[0]
        sessions = [
            NewSession(new_id("upl"), UploadKind.asset, c.size_bytes, c.sha256) for c in lacking
        ]
        owner.make_room(sessions, self.limits)
        await uow.prefetch(*((Upload, s.upload_id) for s in sessions))
        now = datetime.now(UTC)
        bucket = self.settings.s3_scenes_bucket
        for session, c in zip(sessions, lacking, strict=True):
            wanted[c.sha256] = session.upload_id
            upload = await uow.get(Upload, session.upload_id)
            upload.start(
                upload_id=session.upload_id,
                owner_id=owner_id,
                kind=UploadKind.asset,
                file_name=c.paths[0].rsplit("/", 1)[-1],
                size_bytes=c.size_bytes,
                sha256=c.sha256,
                content_type=None,
                bucket=bucket,
                object_key=asset_object_key(owner_id, c.sha256),
                s3_upload_id=None,
                plan=part_plan(c.size_bytes, self.settings.upload_min_part_bytes),
                now=now,
                ttl=self.ttl,
            )
        owner.take(owner_id, sessions)
        manifest.submit(
            cmd.manifest_id,
            owner_id,
            cmd.manifest.main_file,
            files,
            wanted,
            now,
        )
        return ManifestAccepted(manifest_id=cmd.manifest_id, version=manifest.version)

    async def complete_manifest(self, cmd: CompleteManifest, uow: UnitOfWork) -> ManifestAccepted:
        manifest = await uow.get(Manifest, cmd.manifest_id)
        if not manifest.exists or manifest.owner_id != cmd.owner_id:
            raise ManifestNotFound(f"no manifest {cmd.manifest_id}", manifest_id=cmd.manifest_id)
        distinct = contents(manifest.files)
        await uow.prefetch(
            (OwnerUploads, cmd.owner_id),
            *((Asset, asset_key(cmd.owner_id, c.sha256)) for c in distinct),
        )
        held = set()
        for c in distinct:
            if (await uow.get(Asset, asset_key(cmd.owner_id, c.sha256))).stored:
                held.add(c.sha256)
        owner = await uow.get(OwnerUploads, cmd.owner_id)
        uploading = {
            c.sha256: found[0]
            for c in distinct
            if c.sha256 not in held and (found := owner.open_asset(c.sha256)) is not None
        }
        manifest.complete(held, uploading, datetime.now(UTC))
        return ManifestAccepted(manifest_id=cmd.manifest_id, version=manifest.version)


# --- staging scenes to the farm ----------------------------------------------------------


class StagingCommands:
    """``StageScene`` records the request and answers at once; the stager
    (:mod:`services.upload.stager`) copies the scene in the background."""

    def __init__(self, cancel_asked: Callable[[str], None]) -> None:
        #: Tells this process's stager to look at a job's staging before its next chunk
        #: (a stager on another replica sees the cancel when it next records progress).
        self.cancel_asked = cancel_asked

    def register(self, server: CommandServer) -> None:
        server.register(StageScene, self.stage)
        server.register(CancelStaging, self.cancel)

    async def stage(self, cmd: StageScene, uow: UnitOfWork) -> StagingAccepted:
        staging = await uow.get(SceneStaging, cmd.job_id)
        staging.request(
            cmd.job_id, cmd.owner_id, cmd.scene, datetime.now(UTC), test_frames=cmd.test_frames
        )
        return _accepted(cmd.job_id, staging)

    async def cancel(self, cmd: CancelStaging, uow: UnitOfWork) -> StagingAccepted:
        staging = await uow.get(SceneStaging, cmd.job_id)
        if staging.cancel(cmd.reason, datetime.now(UTC)):
            self.cancel_asked(cmd.job_id)
        return _accepted(cmd.job_id, staging)


def _accepted(job_id: str, staging: SceneStaging) -> StagingAccepted:
    return StagingAccepted(
        job_id=job_id,
        status=staging.status,
        staged_key=staging.staged_key or None,
        version=staging.version,
    )


# --- outputs ------------------------------------------------------------------------------


class OutputCommands:
    """Download URLs for outputs: minted here, where the S3 credentials are (the gateway
    never holds them). Minting changes nothing, so it records no event."""

    def __init__(self, settings: UploadSettings, presigner: S3Client) -> None:
        self.settings = settings
        self.presigner = presigner

    def register(self, server: CommandServer) -> None:
        # A fresh URL each time, never stored (the gateway's Idempotency-Key replays one).
        server.register(CreateOutputDownloadUrl, self.download_url, read_only=True)

    async def download_url(
        self, cmd: CreateOutputDownloadUrl, uow: UnitOfWork
    ) -> OutputDownloadUrl:
        """A presigned GET of the output (as an attachment under its file name), if the
        caller owns it and it is in the bucket now; a fresh one each time it is asked."""
        outputs = await uow.get(JobOutputs, cmd.job_id)
        kept = outputs.downloadable(cmd.output_id, cmd.owner_id)
        assert kept.size_bytes is not None and kept.sha256 is not None  # it is ready
        key, file_name, size, sha256 = kept.object_key, kept.file_name, kept.size_bytes, kept.sha256
        if cmd.thumbnail:
            thumb = kept.thumbnail
            if thumb is None:
                raise OutputNotFound(
                    f"output {cmd.output_id} has no thumbnail", output_id=cmd.output_id
                )
            key, size, sha256 = thumb.object_key, thumb.size_bytes, thumb.sha256
            file_name = thumb.object_key.rsplit("/", 1)[-1]
        seconds = cmd.expires_in_seconds or self.settings.download_url_seconds
        signed_at = datetime.now(UTC).replace(microsecond=0)
        url = await self.presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": outputs.bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{file_name}"',
            },
            ExpiresIn=seconds,
        )
        return OutputDownloadUrl(
            output_id=cmd.output_id,
            url=url,
            expires_at=signed_at + timedelta(seconds=seconds),
            size_bytes=size,
            sha256=sha256,
            file_name=file_name,
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
        for cls in (
            JobSubmitted,
            JobFramesRendered,
            JobTestRenderFramesRendered,
            JobCompleted,
            JobFailed,
            JobCancelled,
        )
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
        assert isinstance(
            event, JobSubmitted | JobFramesRendered | JobTestRenderFramesRendered | JobEnded
        )
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
            case JobTestRenderFramesRendered():
                return outputs.test_frames_rendered(event, now)
            case JobCompleted() | JobFailed() | JobCancelled():
                status = _ENDS[type(event)]
                archive = self.settings.outputs_archive
                return outputs.ended(status, event.at, self.keep_for, archive, now)
        raise TypeError(f"upload-outputs does not handle {type(event).__name__}")


class _AlreadyHandled(Exception):
    """The event is in the inbox: another delivery handled it."""
