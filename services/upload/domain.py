"""Aggregates of the upload service: pure decisions, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

from contracts.base import Event
from contracts.errors import OutputDeleted, OutputNotFound, OutputNotReady
from contracts.jobs import FrameOutput, JobFramesRendered, JobStatus
from contracts.outputs import (
    OutputArchiveFailed,
    OutputArchiveRequested,
    OutputArchiveStored,
    OutputsDeleted,
    OutputsOpened,
    OutputsRecorded,
    OutputsRetained,
    OutputStatus,
    StoredFrame,
    archive_file_name,
    archive_key,
    archive_output_id,
    job_prefix,
)
from contracts.render import RenderKind, render_kind_of
from libs.eventstore.aggregate import Aggregate

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------

# --- outputs ------------------------------------------------------------------------------

#: Outputs named in one ``OutputsRetained`` or ``OutputsDeleted`` event (and one S3
#: ``DeleteObjects`` call).
OUTPUTS_PER_EVENT = 1000


class OutputsNotOpened(Exception):
    """A job's output event came before its submission was seen (redeliveries can reorder
    them): handle it again later."""


class KeptOutput(BaseModel):
    """One output of a job as the outputs aggregate knows it."""

    frame: int | None  # None for the archive
    render_kind: RenderKind | None  # None for the archive
    file_name: str
    object_key: str
    size_bytes: int | None  # None while an archive is built
    sha256: str | None
    status: OutputStatus
    stored_at: datetime | None
    expires_at: datetime | None  # None while the job runs


class JobOutputs(Aggregate):
    """Everything a job put in the outputs bucket, and how long it stays there (stream
    ``outputs-<job id>``). Layout and ids: ``contracts/outputs.py``."""

    stream_prefix = "outputs"

    job_id: str = ""
    owner_id: str | None = None
    bucket: str = ""
    #: How the job ended; None while it runs.
    job_status: JobStatus | None = None
    expires_at: datetime | None = None
    frames: dict[str, KeptOutput] = {}
    archive: KeptOutput | None = None
    archive_generation: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case OutputsOpened():
                self.job_id, self.owner_id, self.bucket = event.job_id, event.owner_id, event.bucket
            case OutputsRecorded():
                for o in event.outputs:
                    self.frames[o.output_id] = KeptOutput(
                        frame=o.frame,
                        render_kind=event.render_kind,
                        file_name=o.file_name,
                        object_key=o.object_key,
                        size_bytes=o.size_bytes,
                        sha256=o.sha256,
                        status=OutputStatus.ready,
                        stored_at=event.at,
                        expires_at=event.expires_at,
                    )
            case OutputsRetained():
                self.job_status, self.expires_at = event.job_status, event.expires_at
                for output_id in event.output_ids:
                    if (kept := self.frames.get(output_id)) is not None:
                        kept.expires_at = event.expires_at
            case OutputArchiveRequested():
                self.archive_generation = event.generation
                self.archive = KeptOutput(
                    frame=None,
                    render_kind=None,
                    file_name=event.file_name,
                    object_key=event.object_key,
                    size_bytes=None,
                    sha256=None,
                    status=OutputStatus.building,
                    stored_at=None,
                    expires_at=event.expires_at,
                )
            case OutputArchiveStored():
                if self.archive is not None:
                    self.archive.status, self.archive.stored_at = OutputStatus.ready, event.at
                    self.archive.size_bytes, self.archive.sha256 = event.size_bytes, event.sha256
            case OutputArchiveFailed():
                if self.archive is not None:
                    self.archive.status = OutputStatus.failed
            case OutputsDeleted():
                for output_id in event.output_ids:
                    if (kept := self.output(output_id)) is not None:
                        kept.status = OutputStatus.deleted
            case _:
                raise TypeError(f"job outputs cannot apply {type(event).__name__}")

    @property
    def archive_id(self) -> str:
        return archive_output_id(self.job_id)

    def output(self, output_id: str) -> KeptOutput | None:
        if output_id == self.archive_id:
            return self.archive
        return self.frames.get(output_id)

    def archive_frames(self) -> list[KeptOutput]:
        """What the archive holds: the full render's frames, by frame number."""
        full = [
            o
            for o in self.frames.values()
            if o.render_kind is RenderKind.full and o.status is OutputStatus.ready
        ]
        return sorted(full, key=lambda o: o.frame or 0)

    def _opened(self) -> str:
        if self.owner_id is None:
            raise OutputsNotOpened(f"job {self.key}: no submission seen yet")
        return self.owner_id

    # -- decide -----------------------------------------------------------------------

    def open(self, job_id: str, owner_id: str, bucket: str, at: datetime) -> list[Event]:
        """The job was submitted; a repeat changes nothing."""
        if self.owner_id is not None:
            return []
        prefix = job_prefix(owner_id, job_id)
        return self.record(
            OutputsOpened(job_id=job_id, owner_id=owner_id, bucket=bucket, prefix=prefix, at=at)
        )

    def frames_rendered(self, rendered: JobFramesRendered, now: datetime) -> list[Event]:
        """Record the task's frames the bridge stored; frames already recorded with the same
        bytes (the same event delivered again) change nothing. Full-render frames that come
        after the archive was asked for ask for it again."""
        owner_id = self._opened()
        kind = render_kind_of(rendered.render_id)
        new = []
        for f in rendered.frames:
            if f.output_id is None or f.object_key is None or self._has(f):
                continue  # from before outputs were stored, or recorded already
            new.append(
                StoredFrame(
                    output_id=f.output_id,
                    frame=f.frame,
                    file_name=f.object_key.rsplit("/", 1)[-1],
                    object_key=f.object_key,
                    size_bytes=f.size_bytes,
                    sha256=f.sha256,
                )
            )
        if not new:
            return []
        events: list[Event] = [
            OutputsRecorded(
                job_id=self.job_id,
                owner_id=owner_id,
                bucket=self.bucket,
                render_id=rendered.render_id,
                render_kind=kind,
                task_id=rendered.task_id,
                outputs=new,
                expires_at=self.expires_at,
                at=rendered.at,
            )
        ]
        archived = self.archive is not None and self.archive.status is not OutputStatus.deleted
        if kind is RenderKind.full and archived and self.expires_at is not None:
            events.append(self._archive_requested(owner_id, self.expires_at, now))
        return self.record(*events)

    def _has(self, f: FrameOutput) -> bool:
        kept = self.frames.get(f.output_id or "")
        return (
            kept is not None
            and kept.status is OutputStatus.ready
            and (kept.object_key, kept.size_bytes, kept.sha256)
            == (f.object_key, f.size_bytes, f.sha256)
        )

    def ended(
        self, status: JobStatus, at: datetime, keep_for: timedelta, archive: bool, now: datetime
    ) -> list[Event]:
        """The job ended: its outputs are kept for ``keep_for`` from ``at``; a completed job's
        full-render frames are zipped if ``archive``. Only the first end counts."""
        owner_id = self._opened()
        if self.job_status is not None:
            return []
        expires_at = at + keep_for
        ids = sorted(i for i, o in self.frames.items() if o.status is not OutputStatus.deleted)
        chunks = [ids[i : i + OUTPUTS_PER_EVENT] for i in range(0, len(ids), OUTPUTS_PER_EVENT)]
        events: list[Event] = [
            OutputsRetained(
                job_id=self.job_id,
                job_status=status,
                ended_at=at,
                expires_at=expires_at,
                output_ids=chunk,
            )
            for chunk in chunks or [[]]
        ]
        if status is JobStatus.completed and archive and self.archive_frames():
            events.append(self._archive_requested(owner_id, expires_at, now))
        return self.record(*events)

    def _archive_requested(self, owner_id: str, expires_at: datetime, now: datetime) -> Event:
        return OutputArchiveRequested(
            job_id=self.job_id,
            owner_id=owner_id,
            output_id=self.archive_id,
            bucket=self.bucket,
            object_key=archive_key(owner_id, self.job_id),
            file_name=archive_file_name(self.job_id),
            generation=self.archive_generation + 1,
            expires_at=expires_at,
            at=now,
        )

    def _building(self, generation: int) -> bool:
        return (
            self.archive is not None
            and self.archive.status is OutputStatus.building
            and generation == self.archive_generation
        )

    def archive_stored(
        self, generation: int, frame_count: int, size_bytes: int, sha256: str, at: datetime
    ) -> list[Event]:
        """The archive of ``generation`` is in the bucket; one of an older generation (frames
        came in while it was built) changes nothing: the newer one is built next."""
        if not self._building(generation):
            return []
        return self.record(
            OutputArchiveStored(
                job_id=self.job_id,
                output_id=self.archive_id,
                generation=generation,
                frame_count=frame_count,
                size_bytes=size_bytes,
                sha256=sha256,
                at=at,
            )
        )

    def archive_failed(self, generation: int, reason: str, at: datetime) -> list[Event]:
        if not self._building(generation):
            return []
        return self.record(
            OutputArchiveFailed(
                job_id=self.job_id,
                output_id=self.archive_id,
                generation=generation,
                reason=reason,
                at=at,
            )
        )

    def expired(self, now: datetime) -> list[str]:
        """Outputs whose retention has ended, at most :data:`OUTPUTS_PER_EVENT`; none while
        the archive is being built (it reads the frames)."""
        if self.archive is not None and self.archive.status is OutputStatus.building:
            return []
        outputs = [
            *self.frames.items(),
            *([(self.archive_id, self.archive)] if self.archive else []),
        ]
        due = sorted(
            output_id
            for output_id, o in outputs
            if o.status is not OutputStatus.deleted
            and o.expires_at is not None
            and o.expires_at <= now
        )
        return due[:OUTPUTS_PER_EVENT]

    def deleted(self, output_ids: list[str], at: datetime) -> list[Event]:
        """These outputs were deleted from the bucket; ones deleted before are left out."""
        gone = [
            i
            for i in output_ids
            if (o := self.output(i)) is not None and o.status is not OutputStatus.deleted
        ]
        if not gone:
            return []
        return self.record(OutputsDeleted(job_id=self.job_id, output_ids=gone, at=at))

    def downloadable(self, output_id: str, owner_id: str | None) -> KeptOutput:
        """The output, if ``owner_id`` (None: an admin) may download it now."""
        kept = self.output(output_id)
        if kept is None or (owner_id is not None and owner_id != self.owner_id):
            raise OutputNotFound(f"no output {output_id}", output_id=output_id)
        if kept.status is OutputStatus.deleted:
            raise OutputDeleted(
                f"output {output_id} was deleted when its retention ended", output_id=output_id
            )
        if kept.status is not OutputStatus.ready:
            raise OutputNotReady(
                f"output {output_id} is {kept.status.value}",
                output_id=output_id,
                status=kept.status,
            )
        return kept
