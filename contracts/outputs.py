"""Rendered outputs in object storage: the storage layout, output ids, the upload service's
``upload.Output*`` events and the command that mints a download URL.

Storage layout, in the outputs bucket (``s3_outputs_bucket``)::

    jobs/<owner_id>/<job_id>/                                 the job's prefix
    jobs/<owner_id>/<job_id>/<render kind>/<file name>        one object per rendered frame
    jobs/<owner_id>/<job_id>/<render kind>/<stem>.thumb.jpg   the frame's thumbnail
    jobs/<owner_id>/<job_id>/archive/<job_id>.zip             the zip of the full render's frames

for example ``jobs/usr_01JD.../job_01JE.../full/frame_0001.png``. The render kind is
``full`` or ``test``; the file name is the one the farm wrote (``frame_####.<ext>``). The
deadline-bridge stores each frame (and checks its size and SHA-256), and a 256-pixel JPEG
thumbnail of a PNG or JPEG frame, before it records the task as completed; the upload
service writes the archive, and deletes the job's objects (each frame with its thumbnail)
when their retention ends. The owner comes first, so one user's outputs are one prefix (for
policies, exports and erasure). Nothing but these writes under ``jobs/``.

Output ids are derived, not random, so every service names the same output the same way:
``<job_id>-<render kind>-<frame, 7 digits>`` for a frame (so ids sort by kind, then frame)
and ``<job_id>-archive`` for the archive. A frame rendered again by a later attempt of the
same kind keeps its id and key: the new object replaces the old one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.jobs import FrameThumbnail, JobStatus
from contracts.render import RenderKind
from contracts.text import IdText

#: The longest a presigned URL can live (SigV4: 7 days).
MAX_DOWNLOAD_URL_SECONDS = 7 * 24 * 3600
#: Frame numbers are at most 1,000,000 (``FrameRange``): 7 digits in an output id.
_FRAME_DIGITS = 7


def job_prefix(owner_id: str, job_id: str) -> str:
    """The key prefix under which every output of the job lives."""
    return f"jobs/{owner_id}/{job_id}/"


def frame_key(owner_id: str, job_id: str, kind: RenderKind, file_name: str) -> str:
    return f"{job_prefix(owner_id, job_id)}{kind.value}/{file_name}"


def thumbnail_key(frame_object_key: str) -> str:
    """Where a frame's thumbnail is stored: next to it, ``frame_0001.png`` →
    ``frame_0001.thumb.jpg``."""
    folder, _, name = frame_object_key.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{folder}/{stem}.thumb.jpg" if folder else f"{stem}.thumb.jpg"


def archive_key(owner_id: str, job_id: str) -> str:
    return f"{job_prefix(owner_id, job_id)}archive/{archive_file_name(job_id)}"


def archive_file_name(job_id: str) -> str:
    return f"{job_id}.zip"


def frame_output_id(job_id: str, kind: RenderKind, frame: int) -> str:
    return f"{job_id}-{kind.value}-{frame:0{_FRAME_DIGITS}d}"


def archive_output_id(job_id: str) -> str:
    return f"{job_id}-archive"


class OutputKind(StrEnum):
    frame = "frame"  # one rendered image
    archive = "archive"  # a zip of the job's full-render frames


class OutputStatus(StrEnum):
    building = "building"  # an archive being written
    ready = "ready"  # in the bucket, downloadable
    failed = "failed"  # an archive that could not be built (see its OutputArchiveFailed)
    deleted = "deleted"  # removed from the bucket when its retention ended


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoredFrame(_Model):
    """A rendered frame as the outputs bucket holds it."""

    output_id: str
    frame: int
    file_name: str
    object_key: str
    size_bytes: int
    sha256: str  # lowercase hex
    #: Its JPEG thumbnail next to it; null for none (EXR, large frames, older history).
    thumbnail: FrameThumbnail | None = None


# --- events (stream ``outputs-<job_id>``) ------------------------------------------------


@EVENTS.register
class OutputsOpened(Event):
    """A job was submitted: its outputs will be kept under ``prefix`` in ``bucket``."""

    event_type = "upload.OutputsOpened"
    job_id: str
    owner_id: str
    bucket: str
    prefix: str
    at: datetime


@EVENTS.register
class OutputsRecorded(Event):
    """Frames of a farm task are in the outputs bucket (new, or rendered again)."""

    event_type = "upload.OutputsRecorded"
    job_id: str
    owner_id: str
    bucket: str
    render_id: str
    render_kind: RenderKind
    task_id: int
    outputs: list[StoredFrame]
    #: When they will be deleted; null while the job runs (set by ``OutputsRetained``).
    expires_at: datetime | None
    at: datetime


@EVENTS.register
class OutputsRetained(Event):
    """The job ended: these outputs are kept until ``expires_at``. A job with many outputs
    gets several of these events, each listing at most 1,000."""

    event_type = "upload.OutputsRetained"
    job_id: str
    job_status: JobStatus
    ended_at: datetime
    expires_at: datetime
    output_ids: list[str]


@EVENTS.register
class OutputArchiveRequested(Event):
    """A zip of the job's full-render frames is to be built (again, for a later
    ``generation``, when frames came in after the last one)."""

    event_type = "upload.OutputArchiveRequested"
    job_id: str
    owner_id: str
    output_id: str
    bucket: str
    object_key: str
    file_name: str
    generation: int
    expires_at: datetime
    at: datetime


@EVENTS.register
class OutputArchiveStored(Event):
    event_type = "upload.OutputArchiveStored"
    job_id: str
    output_id: str
    generation: int
    frame_count: int
    size_bytes: int
    sha256: str
    at: datetime


@EVENTS.register
class OutputArchiveFailed(Event):
    """The archive cannot be built: a frame is missing from the bucket or is not the file
    that was recorded."""

    event_type = "upload.OutputArchiveFailed"
    job_id: str
    output_id: str
    generation: int
    reason: str
    at: datetime


@EVENTS.register
class OutputsDeleted(Event):
    """Retention ended: these outputs were deleted from the bucket (at most 1,000 an event)."""

    event_type = "upload.OutputsDeleted"
    job_id: str
    output_ids: list[str]
    at: datetime


# --- commands ----------------------------------------------------------------------------


@COMMANDS.register
class CreateOutputDownloadUrl(Command):
    """Mint a presigned GET URL for one output. A repeated command id gets the same URL."""

    command_type = "upload.CreateOutputDownloadUrl"
    output_id: IdText
    job_id: IdText
    owner_id: IdText | None = Field(description="The caller's user id; null when an admin acts.")
    expires_in_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DOWNLOAD_URL_SECONDS,
        description="Life of the URL; null for the service's default.",
    )
    thumbnail: bool = Field(
        default=False, description="Download the frame's JPEG thumbnail instead of the frame."
    )


class OutputDownloadUrl(_Model):
    """A signed URL that downloads one output straight from object storage."""

    output_id: str = Field(description="The output the URL downloads.")
    url: str = Field(
        description="Presigned HTTPS GET URL: no other credentials needed. It may be used any"
        " number of times until expires_at, with Range requests to resume; mint a fresh one"
        " to go on after that."
    )
    expires_at: datetime = Field(description="UTC time after which the store refuses the URL.")
    size_bytes: int = Field(description="Size of the file in bytes.")
    sha256: str = Field(description="SHA-256 of the file, lowercase hex, to verify the download.")
    file_name: str = Field(description="The file name the download is saved under.")
