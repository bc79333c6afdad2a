"""Upload sessions and content-addressed scene assets: events (``upload.*``), commands, and
the request and answer models of the upload API.

A client uploads a file into object storage through an **upload session**: it declares the
file's name, size and SHA-256, the server fixes a part plan, and the client PUTs each part
straight to the store through presigned URLs (the bytes never pass through our services).
A scene can also be sent as a **manifest** of files (relative path, size, SHA-256): the
server answers which files the caller does not hold yet, with an upload session for each,
and a file the caller has sent before is never sent again. Assets are kept per user: nobody
learns what another user holds.

Streams: ``upload-<upload id>`` (a session), ``manifest-<manifest id>``, ``asset-<owner
id>.<sha256>`` (one stored file of one user) and ``uploader-<owner id>`` (the user's open
sessions and bytes in flight, for the quotas).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.text import IdText, Line
from libs.keys import KEY_CHARACTERS, MAX_KEY_LENGTH, KeyRefused, check_key

MiB = 2**20
GiB = 2**30
TiB = 2**40
#: S3's limits on a multipart upload: part numbers 1..10,000, parts of at most 5 GiB.
MAX_PARTS = 10_000
MAX_PART_BYTES = 5 * GiB
#: The largest object a part plan can describe (10,000 parts of 5 GiB).
MAX_OBJECT_BYTES = MAX_PARTS * MAX_PART_BYTES
#: Parts a client may ask URLs for in one call; files a manifest may list.
MAX_PART_URLS_PER_CALL = 100
MAX_MANIFEST_FILES = 10_000
#: The most parts one page of ``list_upload_parts`` holds (ListParts' own page size).
MAX_PARTS_PAGE = 1000


class UploadStatus(StrEnum):
    uploading = "uploading"  # open: parts may be sent
    completing = "completing"  # every part is there; the store is joining them
    completed = "completed"  # the object is in the store, of the declared size
    aborted = "aborted"  # the client gave up; the parts are gone
    expired = "expired"  # not completed in time (or dropped by the store); the parts are gone


class UploadKind(StrEnum):
    scene = "scene"  # a file the client uploads by itself (create_upload)
    asset = "asset"  # one file of a manifest, stored by its content hash


class UploadAbortReason(StrEnum):
    client = "client"  # the client asked (abort_upload)


class ManifestStatus(StrEnum):
    waiting_for_files = "waiting_for_files"
    complete = "complete"


class UploadAction(StrEnum):
    """What a client may do next with an upload session (the operation to call)."""

    create_upload_part_urls = "create_upload_part_urls"
    complete_upload = "complete_upload"
    abort_upload = "abort_upload"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- what clients send: the input rules ----------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: A media type without parameters (RFC 6838 names), e.g. ``application/x-blender``.
_MEDIA_TYPE = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$"


def _one_segment(value: str) -> str:
    if "/" in value or "\\" in value:
        raise PydanticCustomError(
            "invalid_file_name", "file_name is one path segment: no '/' or '\\' in it"
        )
    if value in (".", ".."):
        raise PydanticCustomError("invalid_file_name", "file_name must not be '.' or '..'")
    return value


def _relative_key(value: str) -> str:
    try:
        return check_key(value, "path")
    except KeyRefused as e:
        raise PydanticCustomError("invalid_key", str(e)) from None


Sha256Hex = Annotated[
    str,
    Field(
        min_length=64,
        max_length=64,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the bytes, as 64 lowercase hex digits.",
    ),
]
FileName = Annotated[
    Line,
    Field(
        min_length=1,
        max_length=255,
        description=(
            "Name of the file, one path segment (no '/' or '\\'), e.g. shot_010.blend. Shown"
            " back to you; in the object key, characters other than"
            f" {KEY_CHARACTERS.replace('/', '')} become '_'."
        ),
    ),
    AfterValidator(_one_segment),
]
UploadSize = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=MAX_OBJECT_BYTES,
        description="Exact size of the whole file in bytes (at least 1; the server's limit"
        " is upload_max_bytes, 5 TiB by default).",
    ),
]
ContentType = Annotated[
    Line,
    Field(
        min_length=3,
        max_length=127,
        pattern=_MEDIA_TYPE,
        description="Media type stored with the object, e.g. application/x-blender; null"
        " for binary/octet-stream.",
    ),
]
PartNumber = Annotated[
    StrictInt,
    Field(ge=1, le=MAX_PARTS, description="Part number, 1 to the session's part_count."),
]
RelativePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description=(
            "Path of the file relative to the scene's folder, '/'-separated, e.g."
            " textures/wood.png: no leading '/', no empty, '.' or '..' segment."
        ),
        json_schema_extra={"pattern": f"^[{KEY_CHARACTERS}]+$"},
    ),
    AfterValidator(_relative_key),
]


def is_sha256_hex(value: str) -> bool:
    return _HEX64.fullmatch(value) is not None


class CreateUploadRequest(_Model):
    """A file the client is about to upload."""

    file_name: FileName
    size_bytes: UploadSize
    sha256: Sha256Hex = Field(
        description="SHA-256 of the whole file, 64 lowercase hex digits. It is checked when"
        " the scene is staged for the farm (the file is read in full there)."
    )
    content_type: ContentType | None = Field(
        default=None,
        description="Media type stored with the object, e.g. application/x-blender; null"
        " for binary/octet-stream.",
    )


class PartChecksum(_Model):
    """A part the client is about to send, and the SHA-256 of its bytes."""

    part_number: PartNumber
    sha256: Sha256Hex = Field(
        description="SHA-256 of this part's bytes, 64 lowercase hex digits; the store"
        " refuses other bytes (400 BadDigest)."
    )


class CreatePartUrlsRequest(_Model):
    parts: list[PartChecksum] = Field(
        min_length=1,
        max_length=MAX_PART_URLS_PER_CALL,
        description=f"The parts to sign URLs for: 1 to {MAX_PART_URLS_PER_CALL} per call,"
        " each part number once.",
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        numbers = [p.part_number for p in self.parts]
        if len(set(numbers)) != len(numbers):
            raise PydanticCustomError("duplicate_part_number", "each part number at most once")
        return self


class ManifestFile(_Model):
    """One file of a scene sent as a manifest."""

    path: RelativePath
    size_bytes: UploadSize
    sha256: Sha256Hex = Field(description="SHA-256 of the file, 64 lowercase hex digits.")


class CreateManifestRequest(_Model):
    """A scene as the list of its files."""

    main_file: RelativePath = Field(
        description="Path (among files) of the file to render, e.g. shot_010.blend."
    )
    files: list[ManifestFile] = Field(
        min_length=1,
        max_length=MAX_MANIFEST_FILES,
        description=f"Every file of the scene, 1 to {MAX_MANIFEST_FILES}, each path once.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sizes: dict[str, int] = {}
        paths: set[str] = set()
        for f in self.files:
            if f.path in paths:
                raise PydanticCustomError(
                    "invalid_manifest", "path {path} is listed twice", {"path": f.path}
                )
            paths.add(f.path)
            if sizes.setdefault(f.sha256, f.size_bytes) != f.size_bytes:
                raise PydanticCustomError(
                    "invalid_manifest",
                    "files with SHA-256 {sha256} are listed with different sizes",
                    {"sha256": f.sha256},
                )
        if self.main_file not in paths:
            raise PydanticCustomError(
                "invalid_manifest",
                "main_file {main_file} is not among files",
                {"main_file": self.main_file},
            )
        return self


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class UploadStarted(Event):
    """A session opened. A scene session's multipart upload exists in the store already
    (``s3_upload_id``); an asset session's is created when its first part URLs are asked
    for (``UploadMultipartCreated``), since a manifest may lack thousands of files."""

    event_type = "upload.UploadStarted"
    upload_id: str
    owner_id: str
    kind: UploadKind
    file_name: str
    size_bytes: int
    sha256: str
    content_type: str | None
    bucket: str
    object_key: str
    s3_upload_id: str | None
    part_size_bytes: int
    part_count: int
    started_at: datetime
    expires_at: datetime


@EVENTS.register
class UploadMultipartCreated(Event):
    """The store's multipart upload of an asset session was created."""

    event_type = "upload.UploadMultipartCreated"
    upload_id: str
    s3_upload_id: str
    at: datetime


@EVENTS.register
class UploadPartsConfirmed(Event):
    """The store holds this many of the session's parts (from its ListParts), which changed."""

    event_type = "upload.UploadPartsConfirmed"
    upload_id: str
    parts_confirmed: int
    bytes_confirmed: int
    at: datetime


@EVENTS.register
class UploadCompletionRequested(Event):
    """Every part of the plan was found in the store with its size: the store joins them
    (which takes a while for a big file; ``UploadCompleted`` follows)."""

    event_type = "upload.UploadCompletionRequested"
    upload_id: str
    at: datetime


@EVENTS.register
class UploadCompletionFailed(Event):
    """The store did not join the parts (they changed meanwhile): the session is open again."""

    event_type = "upload.UploadCompletionFailed"
    upload_id: str
    reason: str
    at: datetime


@EVENTS.register
class UploadCompleted(Event):
    """Every part was there with its size; the object is in the store, of the declared size."""

    event_type = "upload.UploadCompleted"
    upload_id: str
    owner_id: str
    kind: UploadKind
    size_bytes: int
    sha256: str
    bucket: str
    object_key: str
    at: datetime


@EVENTS.register
class UploadAborted(Event):
    event_type = "upload.UploadAborted"
    upload_id: str
    owner_id: str
    reason: UploadAbortReason
    at: datetime


@EVENTS.register
class UploadExpired(Event):
    """Not completed before ``expires_at`` (or the store dropped it): its parts are gone."""

    event_type = "upload.UploadExpired"
    upload_id: str
    owner_id: str
    at: datetime


@EVENTS.register
class UploadSlotTaken(Event):
    """An open session counts against its owner's quotas (stream ``uploader-<owner>``)."""

    event_type = "upload.UploadSlotTaken"
    owner_id: str
    upload_id: str
    kind: UploadKind
    size_bytes: int
    #: The content hash of an asset session (reused by the next manifest that lacks it).
    sha256: str | None


@EVENTS.register
class UploadSlotFreed(Event):
    event_type = "upload.UploadSlotFreed"
    owner_id: str
    upload_id: str


@EVENTS.register
class AssetStored(Event):
    """A user holds a file by its content hash (stream ``asset-<owner>.<sha256>``)."""

    event_type = "upload.AssetStored"
    owner_id: str
    sha256: str
    size_bytes: int
    bucket: str
    object_key: str
    upload_id: str
    at: datetime


@EVENTS.register
class ManifestSubmitted(Event):
    """A scene sent as a manifest; its files follow in ``ManifestFilesListed`` events."""

    event_type = "upload.ManifestSubmitted"
    manifest_id: str
    owner_id: str
    main_file: str
    file_count: int
    total_bytes: int
    content_sha256: str
    submitted_at: datetime


class ListedFile(BaseModel):
    """A manifest's file as stored in its events, with the asset session opened (or reused)
    for its content when the manifest was submitted; None if its owner held it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size_bytes: int
    sha256: str
    upload_id: str | None


@EVENTS.register
class ManifestFilesListed(Event):
    """Some of a manifest's files, sorted by path (a manifest is listed in chunks, each well
    under the bus's message size)."""

    event_type = "upload.ManifestFilesListed"
    manifest_id: str
    files: list[ListedFile]


@EVENTS.register
class ManifestCompleted(Event):
    """Every file of the manifest is held by its owner."""

    event_type = "upload.ManifestCompleted"
    manifest_id: str
    owner_id: str
    at: datetime


# --- commands ----------------------------------------------------------------------------


@COMMANDS.register
class StartUpload(Command):
    """Open a session: a multipart upload in the scenes bucket, then ``UploadStarted``."""

    command_type = "upload.StartUpload"
    upload_id: IdText
    owner_id: IdText
    file: CreateUploadRequest


@COMMANDS.register
class RefreshUpload(Command):
    """Ask the store which parts it holds; record the progress if it changed."""

    command_type = "upload.RefreshUpload"
    upload_id: IdText
    owner_id: IdText


@COMMANDS.register
class ListUploadParts(Command):
    """One page of the parts the store holds (changes nothing)."""

    command_type = "upload.ListUploadParts"
    upload_id: IdText
    owner_id: IdText
    after_part_number: int = Field(ge=0, le=MAX_PARTS)
    limit: int = Field(ge=1, le=MAX_PARTS_PAGE)


@COMMANDS.register
class SignUploadParts(Command):
    """Presign the URLs to PUT these parts (changes nothing)."""

    command_type = "upload.SignUploadParts"
    upload_id: IdText
    owner_id: IdText
    parts: list[PartChecksum] = Field(min_length=1, max_length=MAX_PART_URLS_PER_CALL)


@COMMANDS.register
class CompleteUpload(Command):
    """Verify that every part is in the store and have the store join them."""

    command_type = "upload.CompleteUpload"
    upload_id: IdText
    owner_id: IdText


@COMMANDS.register
class FinishUpload(Command):
    """From the completer: the store joined the parts (``failure`` None), or refused to
    (why). Completed if the store holds the whole object, else the session opens again (or
    ends, if the store no longer holds it)."""

    command_type = "upload.FinishUpload"
    upload_id: IdText
    failure: str | None = Field(default=None, max_length=2000)


@COMMANDS.register
class AbortUpload(Command):
    command_type = "upload.AbortUpload"
    upload_id: IdText
    owner_id: IdText


@COMMANDS.register
class ExpireUpload(Command):
    """From the sweeper: end a session past its ``expires_at`` (as of ``at``)."""

    command_type = "upload.ExpireUpload"
    upload_id: IdText
    at: datetime


@COMMANDS.register
class SubmitManifest(Command):
    command_type = "upload.SubmitManifest"
    manifest_id: IdText
    owner_id: IdText
    manifest: CreateManifestRequest


@COMMANDS.register
class CompleteManifest(Command):
    command_type = "upload.CompleteManifest"
    manifest_id: IdText
    owner_id: IdText


class UploadAccepted(_Model):
    """Reply to a session command: the session's id and its stream version after it."""

    upload_id: str
    version: int


class ManifestAccepted(_Model):
    manifest_id: str
    version: int


# --- answers -----------------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadView(_View):
    """An upload session as clients see it: the plan, the progress, what can be done next."""

    upload_id: str = Field(description="Upload id, e.g. upl_01J...")
    kind: UploadKind = Field(
        description="scene: a file uploaded by itself; asset: a file of a manifest."
    )
    status: UploadStatus = Field(description="State of the session.")
    file_name: str = Field(description="Name of the file, as declared.")
    size_bytes: int = Field(description="Size of the whole file in bytes, as declared.")
    sha256: str = Field(description="SHA-256 of the whole file (lowercase hex), as declared.")
    content_type: str | None = Field(description="Media type stored with the object.")
    part_size_bytes: int = Field(
        description="Size of every part but the last (fixed for the session)."
    )
    part_count: int = Field(description="Number of parts; the last holds the remainder.")
    parts_confirmed: int = Field(
        description="Parts the store held at the last check (of the right size)."
    )
    bytes_confirmed: int = Field(description="Bytes of those parts.")
    progress_percent: float = Field(
        ge=0, le=100, description="bytes_confirmed as a share of size_bytes, 0-100."
    )
    allowed_actions: list[UploadAction] = Field(
        description="Operations the client may call next on this session."
    )
    created_at: datetime = Field(description="UTC time the session was opened.")
    updated_at: datetime = Field(description="UTC time of the session's latest event.")
    expires_at: datetime = Field(
        description="UTC time after which an open session is aborted and its parts deleted."
    )
    completed_at: datetime | None = Field(
        description="UTC time the upload was completed; null until then."
    )
    version: int = Field(description="Version of the session's event stream.")


class UploadPage(_View):
    items: list[UploadView] = Field(description="Upload sessions, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class StoredPart(_View):
    """A part as the store holds it (never what a client claimed)."""

    part_number: int = Field(description="Part number.")
    size_bytes: int = Field(description="Size of the part in the store, in bytes.")
    sha256: str = Field(description="SHA-256 of the part's bytes (lowercase hex).")


class StoredParts(_Model):
    """Reply to ``ListUploadParts``: a page of what the store holds."""

    upload_id: str
    status: UploadStatus
    part_size_bytes: int
    part_count: int
    items: list[StoredPart]
    next_part_number: int | None


class UploadPartsPage(_View):
    """The parts the store holds for an open session, by part number: send the others."""

    upload_id: str = Field(description="Upload id.")
    status: UploadStatus = Field(
        description="State of the session; once it is not uploading, items is empty."
    )
    part_size_bytes: int = Field(description="Size of every part but the last.")
    part_count: int = Field(description="Number of parts of the session.")
    items: list[StoredPart] = Field(description="Parts the store holds, by part number.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class PartUrl(_View):
    part_number: int = Field(description="Part number.")
    method: Literal["PUT"] = Field(description="HTTP method to send the part with.")
    url: str = Field(description="Presigned URL of the object store; send the part's bytes.")
    headers: dict[str, str] = Field(
        description=(
            "Headers to send exactly as given: content-length (the part's size) and"
            " x-amz-checksum-sha256 (the part's SHA-256, base64); both are signed."
        )
    )
    size_bytes: int = Field(description="Exact size of this part in bytes.")


class UploadPartUrls(_View):
    upload_id: str = Field(description="Upload id.")
    expires_at: datetime = Field(
        description="UTC time the URLs stop working (ask again for fresh ones)."
    )
    urls: list[PartUrl] = Field(description="One URL per part asked for, in the order asked.")


class MissingFile(_View):
    """A file of a manifest its owner does not hold yet."""

    sha256: str = Field(description="SHA-256 of the file's content (lowercase hex).")
    size_bytes: int = Field(description="Size of the file in bytes.")
    paths: list[str] = Field(description="Paths in the manifest with this content, sorted.")
    upload_id: str | None = Field(
        description=(
            "The upload session to send it through; null if that session ended without"
            " the file (submit the manifest again for a new one)."
        )
    )


class ManifestView(_View):
    """A scene sent as a manifest: which of its files its owner holds, which it still lacks."""

    manifest_id: str = Field(description="Manifest id, e.g. man_01J...")
    status: ManifestStatus = Field(
        description="waiting_for_files until complete_manifest has found every file held."
    )
    main_file: str = Field(description="Path of the file to render.")
    file_count: int = Field(description="Number of files in the manifest.")
    total_bytes: int = Field(description="Sum of the files' sizes in bytes.")
    content_sha256: str = Field(
        description=(
            "SHA-256 (hex) identifying the manifest's content: of the lines"
            " '<path>\\t<size_bytes>\\t<sha256>\\n' sorted by path."
        )
    )
    files_present: int = Field(description="Files (paths) whose content you hold.")
    missing: list[MissingFile] = Field(
        description="Content you do not hold yet, one entry per SHA-256, by first path."
    )
    created_at: datetime = Field(description="UTC time the manifest was submitted.")
    completed_at: datetime | None = Field(
        description="UTC time it was found complete; null until then."
    )
    version: int = Field(description="Version of the manifest's event stream.")
