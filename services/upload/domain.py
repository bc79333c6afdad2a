"""Aggregates of the upload service: pure decisions, no I/O."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, PrivateAttr

from contracts.base import Event
from contracts.errors import (
    AssetSizeConflict,
    FieldProblem,
    InvalidPartNumber,
    ManifestIncomplete,
    MissingAsset,
    OutputDeleted,
    OutputNotFound,
    OutputNotReady,
    PartRange,
    UploadBytesLimitReached,
    UploadIncomplete,
    UploadNotOpen,
    UploadSessionExpired,
    UploadSessionLimitReached,
    UploadTooLarge,
    ValidationFailed,
    WrongPartSize,
)
from contracts.jobs import (
    FrameOutput,
    FrameThumbnail,
    JobFramesRendered,
    JobStatus,
    JobTestRenderFramesRendered,
)
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
from contracts.staging import (
    CONTENT_DIR,
    FINISHED_STAGING_STATUSES,
    NEEDED_DIR,
    STAGED_DIR,
    AssetStaged,
    AssetStagingFailed,
    AssetUnstaged,
    SceneFilesAwaited,
    SceneKind,
    SceneNeededFilesStaged,
    SceneRef,
    SceneStaged,
    SceneStagingCancelled,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingRequested,
    SceneStagingStarted,
    StagingStatus,
)
from contracts.uploads import (
    MAX_PART_BYTES,
    MAX_PARTS,
    AssetStored,
    ListedFile,
    ManifestCompleted,
    ManifestFile,
    ManifestFilesListed,
    ManifestStatus,
    ManifestSubmitted,
    MiB,
    UploadAborted,
    UploadAbortReason,
    UploadCompleted,
    UploadCompletionFailed,
    UploadCompletionRequested,
    UploadExpired,
    UploadKind,
    UploadMultipartCreated,
    UploadPartsConfirmed,
    UploadSlotFreed,
    UploadSlotTaken,
    UploadStarted,
    UploadStatus,
)
from libs.eventstore.aggregate import Aggregate
from libs.keys import KEY_CHARACTERS

# --- upload sessions and manifests -------------------------------------------------------

#: The smallest part a plan uses unless settings say otherwise: big enough that 10,000
#: parts cover 625 GiB, small enough that a failed part is cheap to send again.
DEFAULT_MIN_PART_BYTES = 64 * MiB
#: Error details list at most this many ranges, sizes or files.
DETAILS_LIMIT = 100
#: Paths listed per missing file in an error's details.
DETAILS_PATHS = 10
#: Files per ``ManifestFilesListed`` event: even with the longest paths an event stays far
#: below the bus's 1 MB message limit.
MANIFEST_FILES_PER_EVENT = 250
_NOT_KEY_CHARACTER = re.compile(rf"[^{KEY_CHARACTERS.replace('/', '')}]")


@dataclass(frozen=True, slots=True)
class PartPlan:
    """How a file is cut into parts: every part ``part_size_bytes`` but the last."""

    size_bytes: int
    part_size_bytes: int
    part_count: int

    def size_of(self, part_number: int) -> int:
        """The exact size of part ``part_number`` (1-based; the last holds the remainder)."""
        if not 1 <= part_number <= self.part_count:
            raise ValueError(f"part {part_number} is outside 1..{self.part_count}")
        if part_number < self.part_count:
            return self.part_size_bytes
        return self.size_bytes - self.part_size_bytes * (self.part_count - 1)


def part_plan(size_bytes: int, min_part_bytes: int = DEFAULT_MIN_PART_BYTES) -> PartPlan:
    """The part plan of a file: parts of ``max(min_part_bytes, size / 10,000 rounded up to a
    whole MiB)``, never above 5 GiB, so no file up to 10,000 x 5 GiB needs more than
    10,000 parts."""
    if size_bytes < 1:
        raise ValueError("a file to upload has at least 1 byte")
    needed = math.ceil(math.ceil(size_bytes / MAX_PARTS) / MiB) * MiB
    part = min(max(min_part_bytes, needed), MAX_PART_BYTES)
    count = math.ceil(size_bytes / part)
    if count > MAX_PARTS:
        raise ValueError(f"{size_bytes} bytes need more than {MAX_PARTS} parts of 5 GiB")
    return PartPlan(size_bytes, part, count)


def check_size(size_bytes: int, max_bytes: int) -> None:
    if size_bytes > max_bytes:
        raise UploadTooLarge(
            f"the file has {size_bytes} bytes; the largest this server takes is {max_bytes}",
            size_bytes=size_bytes,
            max_bytes=max_bytes,
        )


def key_segment(file_name: str) -> str:
    """``file_name`` as one object key segment: characters keys do not take become '_'."""
    return _NOT_KEY_CHARACTER.sub("_", file_name)


def scene_object_key(owner_id: str, upload_id: str, file_name: str) -> str:
    return f"uploads/{owner_id}/{upload_id}/{key_segment(file_name)}"


def asset_object_key(owner_id: str, sha256: str) -> str:
    return f"assets/{owner_id}/{sha256}"


def asset_key(owner_id: str, sha256: str) -> str:
    """The key of an owner's :class:`Asset` (stream ``asset-<owner>.<sha256>``)."""
    return f"{owner_id}.{sha256}"


def part_ranges(numbers: Iterable[int]) -> list[PartRange]:
    """Sorted part numbers as inclusive ranges: 1, 2, 3, 7 -> [1-3], [7-7]."""
    ranges: list[PartRange] = []
    first = last = None
    for n in sorted(numbers):
        if last is not None and n == last + 1:
            last = n
            continue
        if first is not None and last is not None:
            ranges.append(PartRange(first=first, last=last))
        first = last = n
    if first is not None and last is not None:
        ranges.append(PartRange(first=first, last=last))
    return ranges


@dataclass(frozen=True, slots=True)
class HeldPart:
    """A part as the store lists it (ListParts)."""

    part_number: int
    size_bytes: int
    etag: str
    #: Base64 SHA-256 of the part's bytes, as the store checked it.
    checksum_sha256: str


class Upload(Aggregate):
    """An upload session (stream ``upload-<upload id>``): the file's part plan, its
    multipart upload in the store, and how far it got."""

    stream_prefix = "upload"

    upload_id: str = ""
    owner_id: str = ""
    kind: UploadKind = UploadKind.scene
    status: UploadStatus | None = None
    file_name: str = ""
    size_bytes: int = 0
    sha256: str = ""
    bucket: str = ""
    object_key: str = ""
    #: The store's multipart upload; None until an asset session's first part URLs.
    s3_upload_id: str | None = None
    part_size_bytes: int = 0
    part_count: int = 0
    parts_confirmed: int = 0
    bytes_confirmed: int = 0
    expires_at: datetime | None = None

    def apply(self, event: Event) -> None:
        match event:
            case UploadStarted():
                self.upload_id, self.owner_id = event.upload_id, event.owner_id
                self.kind = event.kind
                self.status = UploadStatus.uploading
                self.file_name, self.size_bytes, self.sha256 = (
                    event.file_name,
                    event.size_bytes,
                    event.sha256,
                )
                self.bucket, self.object_key = event.bucket, event.object_key
                self.s3_upload_id = event.s3_upload_id
                self.part_size_bytes, self.part_count = event.part_size_bytes, event.part_count
                self.expires_at = event.expires_at
            case UploadMultipartCreated():
                self.s3_upload_id = event.s3_upload_id
            case UploadPartsConfirmed():
                self.parts_confirmed, self.bytes_confirmed = (
                    event.parts_confirmed,
                    event.bytes_confirmed,
                )
            case UploadCompletionRequested():  # every part was found with its size
                self.status = UploadStatus.completing
                self.parts_confirmed, self.bytes_confirmed = self.part_count, self.size_bytes
            case UploadCompletionFailed():
                self.status = UploadStatus.uploading
            case UploadCompleted():
                self.status = UploadStatus.completed
                self.parts_confirmed, self.bytes_confirmed = self.part_count, self.size_bytes
            case UploadAborted():
                self.status = UploadStatus.aborted
            case UploadExpired():
                self.status = UploadStatus.expired
            case _:
                raise TypeError(f"upload cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def plan(self) -> PartPlan:
        return PartPlan(self.size_bytes, self.part_size_bytes, self.part_count)

    # -- decide ---------------------------------------------------------------------------

    def start(
        self,
        *,
        upload_id: str,
        owner_id: str,
        kind: UploadKind,
        file_name: str,
        size_bytes: int,
        sha256: str,
        content_type: str | None,
        bucket: str,
        object_key: str,
        s3_upload_id: str | None,
        plan: PartPlan,
        now: datetime,
        ttl: timedelta,
    ) -> list[Event]:
        return self.record(
            UploadStarted(
                upload_id=upload_id,
                owner_id=owner_id,
                kind=kind,
                file_name=file_name,
                size_bytes=size_bytes,
                sha256=sha256,
                content_type=content_type,
                bucket=bucket,
                object_key=object_key,
                s3_upload_id=s3_upload_id,
                part_size_bytes=plan.part_size_bytes,
                part_count=plan.part_count,
                started_at=now,
                expires_at=now + ttl,
            )
        )

    def multipart_created(self, s3_upload_id: str, now: datetime) -> list[Event]:
        """The store's multipart upload of a session that had none yet."""
        if self.s3_upload_id is not None:
            return []
        return self.record(
            UploadMultipartCreated(upload_id=self.upload_id, s3_upload_id=s3_upload_id, at=now)
        )

    def overdue(self, now: datetime) -> bool:
        return (
            self.status is UploadStatus.uploading
            and self.expires_at is not None
            and now >= self.expires_at
        )

    def require_open(self, now: datetime) -> None:
        """Refuse unless the session takes parts: uploading and not past its expiry."""
        if self.status is UploadStatus.expired or self.overdue(now):
            raise UploadSessionExpired(
                f"upload {self.upload_id} has expired; start a new upload",
                upload_id=self.upload_id,
            )
        if self.status is not UploadStatus.uploading:
            assert self.status is not None
            raise UploadNotOpen(
                f"upload {self.upload_id} is {self.status}",
                upload_id=self.upload_id,
                status=self.status,
            )

    def check_part_numbers(self, numbers: Iterable[int]) -> None:
        bad = sorted(n for n in numbers if not 1 <= n <= self.part_count)
        if bad:
            raise InvalidPartNumber(
                f"upload {self.upload_id} has parts 1..{self.part_count}; {bad[0]} is not one",
                upload_id=self.upload_id,
                part_count=self.part_count,
                part_numbers=bad[:DETAILS_LIMIT],
            )

    def _planned(self, parts: Iterable[HeldPart]) -> list[HeldPart]:
        """The held parts that are parts of the plan, with their planned size."""
        plan = self.plan
        return [
            p
            for p in parts
            if 1 <= p.part_number <= self.part_count and p.size_bytes == plan.size_of(p.part_number)
        ]

    def confirm(self, parts: Iterable[HeldPart], now: datetime) -> list[Event]:
        """Record what the store holds, if it changed (open sessions only)."""
        if self.status is not UploadStatus.uploading:
            return []
        good = self._planned(parts)
        count, total = len(good), sum(p.size_bytes for p in good)
        if (count, total) == (self.parts_confirmed, self.bytes_confirmed):
            return []
        return self.record(
            UploadPartsConfirmed(
                upload_id=self.upload_id, parts_confirmed=count, bytes_confirmed=total, at=now
            )
        )

    def verify(self, parts: Sequence[HeldPart]) -> list[HeldPart]:
        """The parts to complete the upload with, in order; refused (with what is missing and
        what has the wrong size) unless every part of the plan is held with its size."""
        plan = self.plan
        by_number = {p.part_number: p for p in parts if 1 <= p.part_number <= self.part_count}
        missing = [n for n in range(1, self.part_count + 1) if n not in by_number]
        wrong = [
            WrongPartSize(
                part_number=p.part_number,
                size_bytes=p.size_bytes,
                expected_size_bytes=plan.size_of(p.part_number),
            )
            for p in sorted(by_number.values(), key=lambda p: p.part_number)
            if p.size_bytes != plan.size_of(p.part_number)
        ]
        if missing or wrong:
            ranges = part_ranges(missing)
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing (first: part {missing[0]})")
            if wrong:
                problems.append(f"{len(wrong)} of the wrong size")
            raise UploadIncomplete(
                f"upload {self.upload_id} cannot complete: of its {self.part_count} parts, "
                + " and ".join(problems),
                upload_id=self.upload_id,
                part_count=self.part_count,
                missing_part_count=len(missing),
                missing_parts=ranges[:DETAILS_LIMIT],
                wrong_sizes=wrong[:DETAILS_LIMIT],
            )
        return [by_number[n] for n in range(1, self.part_count + 1)]

    def request_completion(self, now: datetime) -> list[Event]:
        """Every part is there (see :meth:`verify`): the store joins them next. A session
        being completed, or completed, changes nothing."""
        if self.status in (UploadStatus.completing, UploadStatus.completed):
            return []
        self.require_open(now)
        return self.record(UploadCompletionRequested(upload_id=self.upload_id, at=now))

    def complete(self, now: datetime) -> list[Event]:
        """The whole object is in the store; completing a completed upload changes nothing."""
        if self.status is UploadStatus.completed:
            return []
        if self.status not in (UploadStatus.uploading, UploadStatus.completing):
            self.require_open(now)
        return self.record(
            UploadCompleted(
                upload_id=self.upload_id,
                owner_id=self.owner_id,
                kind=self.kind,
                size_bytes=self.size_bytes,
                sha256=self.sha256,
                bucket=self.bucket,
                object_key=self.object_key,
                at=now,
            )
        )

    def completion_failed(self, reason: str, now: datetime) -> list[Event]:
        """The store did not join the parts: open again, for the client to fix and retry."""
        if self.status is not UploadStatus.completing:
            return []
        return self.record(UploadCompletionFailed(upload_id=self.upload_id, reason=reason, at=now))

    def abort(self, now: datetime) -> list[Event]:
        """The client gives up. An upload that has ended without its file (aborted,
        expired) changes nothing; one completed or being completed is refused."""
        if self.status in (UploadStatus.aborted, UploadStatus.expired):
            return []
        if self.status in (UploadStatus.completed, UploadStatus.completing):
            raise UploadNotOpen(
                f"upload {self.upload_id} is {self.status}; it cannot be aborted",
                upload_id=self.upload_id,
                status=self.status,
            )
        return self.record(
            UploadAborted(
                upload_id=self.upload_id,
                owner_id=self.owner_id,
                reason=UploadAbortReason.client,
                at=now,
            )
        )

    def expire(self, now: datetime, *, due: bool = True) -> list[Event]:
        """An open session past its expiry ends. With ``due=False``: one the store no longer
        holds ends, whatever its expiry (being completed included). Others change nothing."""
        if due and not self.overdue(now):
            return []
        if self.status not in (UploadStatus.uploading, UploadStatus.completing):
            return []
        return self.record(UploadExpired(upload_id=self.upload_id, owner_id=self.owner_id, at=now))


#: Events after which a session no longer counts against its owner's quotas.
ENDING_EVENTS = (UploadCompleted, UploadAborted, UploadExpired)


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Per-user quotas on open sessions."""

    max_open_sessions: int
    max_open_asset_sessions: int
    max_bytes_in_flight: int


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session about to open, as the quotas see it."""

    upload_id: str
    kind: UploadKind
    size_bytes: int
    sha256: str | None = None


class OpenSession(BaseModel):
    kind: UploadKind
    size_bytes: int
    sha256: str | None = None


class OwnerUploads(Aggregate):
    """A user's open sessions, for the quotas and to reuse an open asset session (stream
    ``uploader-<user id>``)."""

    stream_prefix = "uploader"

    open: dict[str, OpenSession] = {}
    #: Open asset sessions by content (derived from ``open``; not part of the snapshot).
    _by_sha256: dict[str, str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object) -> None:
        self._by_sha256 = {s.sha256: u for u, s in sorted(self.open.items()) if s.sha256}

    def apply(self, event: Event) -> None:
        match event:
            case UploadSlotTaken():
                self.open[event.upload_id] = OpenSession(
                    kind=event.kind, size_bytes=event.size_bytes, sha256=event.sha256
                )
                if event.sha256 is not None:
                    self._by_sha256[event.sha256] = event.upload_id
            case UploadSlotFreed():
                freed = self.open.pop(event.upload_id, None)
                sha256 = freed.sha256 if freed is not None else None
                if sha256 is not None and self._by_sha256.get(sha256) == event.upload_id:
                    del self._by_sha256[sha256]
            case _:
                raise TypeError(f"owner uploads cannot apply {type(event).__name__}")

    @property
    def bytes_in_flight(self) -> int:
        return sum(s.size_bytes for s in self.open.values())

    def count(self, kind: UploadKind) -> int:
        return sum(1 for s in self.open.values() if s.kind is kind)

    def open_asset(self, sha256: str) -> tuple[str, OpenSession] | None:
        """The open asset session for this content, if any."""
        upload_id = self._by_sha256.get(sha256)
        return None if upload_id is None else (upload_id, self.open[upload_id])

    def make_room(self, sessions: Sequence[NewSession], limits: UploadLimits) -> None:
        """Refuse if opening ``sessions`` would go over a quota."""
        for kind, limit in (
            (UploadKind.scene, limits.max_open_sessions),
            (UploadKind.asset, limits.max_open_asset_sessions),
        ):
            adding = sum(1 for s in sessions if s.kind is kind)
            current = self.count(kind)
            if adding and current + adding > limit:
                raise UploadSessionLimitReached(
                    f"you have {current} open {kind.value} upload sessions and this needs"
                    f" {adding} more; the limit is {limit}. Complete or abort some first.",
                    kind=kind,
                    current=current,
                    limit=limit,
                )
        adding_bytes = sum(s.size_bytes for s in sessions)
        if self.bytes_in_flight + adding_bytes > limits.max_bytes_in_flight:
            raise UploadBytesLimitReached(
                f"your open upload sessions hold {self.bytes_in_flight} bytes and this adds"
                f" {adding_bytes}; the limit is {limits.max_bytes_in_flight}. Complete or"
                " abort some first.",
                current_bytes=self.bytes_in_flight,
                requested_bytes=adding_bytes,
                limit_bytes=limits.max_bytes_in_flight,
            )

    def take(self, owner_id: str, sessions: Sequence[NewSession]) -> list[Event]:
        return self.record(
            *(
                UploadSlotTaken(
                    owner_id=owner_id,
                    upload_id=s.upload_id,
                    kind=s.kind,
                    size_bytes=s.size_bytes,
                    sha256=s.sha256,
                )
                for s in sessions
            )
        )

    def free(self, owner_id: str, upload_id: str) -> list[Event]:
        if upload_id not in self.open:
            return []
        return self.record(UploadSlotFreed(owner_id=owner_id, upload_id=upload_id))


def check_same_size(sha256: str, size_bytes: int, known_size_bytes: int) -> None:
    """One content has one size: refuse a size other than the one stored or declared."""
    if size_bytes != known_size_bytes:
        raise AssetSizeConflict(
            f"you stored or are uploading content {sha256} with {known_size_bytes} bytes,"
            f" not {size_bytes}",
            sha256=sha256,
            size_bytes=size_bytes,
            known_size_bytes=known_size_bytes,
        )


class Asset(Aggregate):
    """A file a user holds by its content hash (stream ``asset-<owner>.<sha256>``), and
    whether its content is staged on the farm as uploaded."""

    stream_prefix = "asset"

    stored: bool = False
    size_bytes: int = 0
    upload_id: str = ""
    #: Staged as uploaded (at ``staged/.content/<owner>/<sha256>``); given up; removed.
    staged: bool = False
    stage_failed: bool = False
    unstaged: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case AssetStored():
                self.stored = True
                self.size_bytes, self.upload_id = event.size_bytes, event.upload_id
            case AssetStaged():
                self.staged = True
            case AssetStagingFailed():
                self.stage_failed = True
            case AssetUnstaged():
                self.staged, self.unstaged = False, True
            case _:
                raise TypeError(f"asset cannot apply {type(event).__name__}")

    def check_size(self, sha256: str, size_bytes: int) -> None:
        if self.stored:
            check_same_size(sha256, size_bytes, self.size_bytes)

    def store(self, upload: Upload, now: datetime) -> list[Event]:
        """The asset upload completed; a content stored already changes nothing."""
        if self.stored:
            return []
        return self.record(
            AssetStored(
                owner_id=upload.owner_id,
                sha256=upload.sha256,
                size_bytes=upload.size_bytes,
                bucket=upload.bucket,
                object_key=upload.object_key,
                upload_id=upload.upload_id,
                at=now,
            )
        )

    @property
    def to_stage(self) -> bool:
        """Stored, and not staged as uploaded, given up or removed yet."""
        return self.stored and not (self.staged or self.stage_failed or self.unstaged)

    def stage(self, owner_id: str, sha256: str, seconds: float, now: datetime) -> list[Event]:
        """Its content is on the farm (:func:`content_path`); once only."""
        if not self.to_stage:
            return []
        return self._staged(owner_id, sha256, seconds, now)

    def kept(self, owner_id: str, sha256: str, seconds: float, now: datetime) -> list[Event]:
        """Its content, fetched and verified by a job's staging, is kept on the farm
        (:func:`content_path`) for the next staging: a content not staged now is, even one
        removed after its retention or given up by the pre-stager."""
        if not self.stored or self.staged:
            return []
        return self._staged(owner_id, sha256, seconds, now)

    def _staged(self, owner_id: str, sha256: str, seconds: float, now: datetime) -> list[Event]:
        return self.record(
            AssetStaged(
                owner_id=owner_id,
                sha256=sha256,
                size_bytes=self.size_bytes,
                staged_key=content_path(owner_id, sha256),
                seconds=round(seconds, 3),
                at=now,
            )
        )

    def stage_failure(
        self, owner_id: str, sha256: str, code: str, reason: str, now: datetime
    ) -> list[Event]:
        """Its bytes in the bucket cannot be staged (not what was declared); once only."""
        if not self.to_stage:
            return []
        return self.record(
            AssetStagingFailed(owner_id=owner_id, sha256=sha256, code=code, reason=reason, at=now)
        )

    def unstage(self, owner_id: str, sha256: str, reason: str, now: datetime) -> list[Event]:
        """Its staged content was removed; an asset not staged changes nothing."""
        if not self.staged:
            return []
        return self.record(AssetUnstaged(owner_id=owner_id, sha256=sha256, reason=reason, at=now))


def content_sha256(files: Iterable[ListedFile | ManifestFile]) -> str:
    """The hash identifying a manifest's content: SHA-256 of the lines
    ``<path>\\t<size_bytes>\\t<sha256>\\n`` sorted by path."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\t{f.size_bytes}\t{f.sha256}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Content:
    """One distinct content of a manifest: its size and the paths that hold it."""

    sha256: str
    size_bytes: int
    paths: tuple[str, ...]


def contents(files: Iterable[ListedFile | ManifestFile]) -> list[Content]:
    """A manifest's distinct contents, ordered by their first path."""
    paths: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for f in files:
        paths.setdefault(f.sha256, []).append(f.path)
        sizes[f.sha256] = f.size_bytes
    found = [Content(sha, sizes[sha], tuple(sorted(p))) for sha, p in paths.items()]
    return sorted(found, key=lambda c: c.paths[0])


class Manifest(Aggregate):
    """A scene sent as a manifest of files (stream ``manifest-<manifest id>``)."""

    stream_prefix = "manifest"

    manifest_id: str = ""
    owner_id: str = ""
    status: ManifestStatus | None = None
    files: list[ListedFile] = []

    def apply(self, event: Event) -> None:
        match event:
            case ManifestSubmitted():
                self.manifest_id, self.owner_id = event.manifest_id, event.owner_id
                self.status = ManifestStatus.waiting_for_files
            case ManifestFilesListed():
                self.files = [*self.files, *event.files]
            case ManifestCompleted():
                self.status = ManifestStatus.complete
            case _:
                raise TypeError(f"manifest cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    def submit(
        self,
        manifest_id: str,
        owner_id: str,
        main_file: str,
        files: Sequence[ManifestFile],
        sessions: Mapping[str, str],
        now: datetime,
    ) -> list[Event]:
        """Record the manifest and its files (in chunks, sorted by path), each with the
        session of its content (``sessions``: sha256 -> upload id, for the contents its
        owner lacks); complete at once if it lacks none."""
        listed = sorted(
            (
                ListedFile(
                    path=f.path,
                    size_bytes=f.size_bytes,
                    sha256=f.sha256,
                    upload_id=sessions.get(f.sha256),
                )
                for f in files
            ),
            key=lambda f: f.path,
        )
        events: list[Event] = [
            ManifestSubmitted(
                manifest_id=manifest_id,
                owner_id=owner_id,
                main_file=main_file,
                file_count=len(listed),
                total_bytes=sum(f.size_bytes for f in listed),
                content_sha256=content_sha256(listed),
                submitted_at=now,
            )
        ]
        for i in range(0, len(listed), MANIFEST_FILES_PER_EVENT):
            chunk = listed[i : i + MANIFEST_FILES_PER_EVENT]
            events.append(ManifestFilesListed(manifest_id=manifest_id, files=chunk))
        if not sessions:
            events.append(ManifestCompleted(manifest_id=manifest_id, owner_id=owner_id, at=now))
        return self.record(*events)

    def complete(self, held: set[str], open_uploads: dict[str, str], now: datetime) -> list[Event]:
        """Complete once every content is in ``held``; else refused with what is missing
        (and the open session of each, from ``open_uploads``: sha256 -> upload id)."""
        if self.status is ManifestStatus.complete:
            return []
        missing = [c for c in contents(self.files) if c.sha256 not in held]
        if missing:
            raise ManifestIncomplete(
                f"manifest {self.manifest_id} lacks {len(missing)} files (first:"
                f" {missing[0].paths[0]}); upload them, then complete it again",
                manifest_id=self.manifest_id,
                missing_file_count=len(missing),
                missing=[
                    MissingAsset(
                        sha256=c.sha256,
                        size_bytes=c.size_bytes,
                        paths=list(c.paths[:DETAILS_PATHS]),
                        upload_id=open_uploads.get(c.sha256),
                    )
                    for c in missing[:DETAILS_LIMIT]
                ],
            )
        return self.record(
            ManifestCompleted(manifest_id=self.manifest_id, owner_id=self.owner_id, at=now)
        )


# --- staging scenes to the farm ----------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def staged_dir(owner_id: str, content_sha256: str) -> str:
    """Where a scene's files are staged, relative to the farm's scene root:
    ``staged/<owner>/<content sha256>``.

    Keyed by content, so a later job on the same content finds the copy, and by owner, so
    a user's staging never reuses (and its speed never reveals) another user's files."""
    return f"{STAGED_DIR}/{owner_id}/{content_sha256}"


def needed_dir(job_id: str) -> str:
    """Where the files a job's test frames need are readable while the rest of its scene
    is copied, relative to the farm's scene root: ``staged/.needed/<job id>`` (hard links
    to the copies, so they hold no bytes of their own)."""
    return f"{STAGED_DIR}/{NEEDED_DIR}/{job_id}"


def content_path(owner_id: str, sha256: str) -> str:
    """Where a content staged as uploaded is, relative to the farm's scene root:
    ``staged/.content/<owner>/<sha256>`` (per owner, as staged scenes are)."""
    return f"{STAGED_DIR}/{CONTENT_DIR}/{owner_id}/{sha256}"


def staged_name(scene: SceneRef) -> str:
    """The path of the scene's main file inside its staged folder: a manifest's main file
    as it is (its textures are found relative to it), an upload's file name with every
    character a farm path may not hold replaced by ``_``."""
    if scene.kind is SceneKind.manifest:
        return scene.main_file
    name = _UNSAFE_NAME.sub("_", scene.main_file).lstrip(".")[:200]
    return name or "scene"


def staged_key(owner_id: str, scene: SceneRef) -> str:
    """The scene file the farm opens, relative to its scene root."""
    return f"{staged_dir(owner_id, scene.content_sha256)}/{staged_name(scene)}"


class SceneStaging(Aggregate):
    """Staging one job's scene to the farm (stream ``staging-<job id>``)."""

    stream_prefix = "staging"

    job_id: str = ""
    owner_id: str = ""
    scene: SceneRef | None = None
    staged_key: str = ""
    status: StagingStatus | None = None
    bytes_done: int = 0
    #: The frames whose files are copied first, and whether they are all there.
    test_frames: list[int] = []
    needed_staged: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case SceneStagingRequested():
                self.job_id, self.owner_id = event.job_id, event.owner_id
                self.scene, self.staged_key = event.scene, event.staged_key
                self.test_frames = event.test_frames
                self.status = StagingStatus.requested
            case SceneNeededFilesStaged():
                self.needed_staged = True
            case SceneStagingStarted():
                self.status = StagingStatus.copying
            case SceneStagingProgressed():
                self.bytes_done = event.bytes_done
            case SceneFilesAwaited():
                pass  # what it waits for is the stager's to find out again
            case SceneStaged():
                self.status = StagingStatus.staged
            case SceneStagingFailed():
                self.status = StagingStatus.failed
            case SceneStagingCancelled():
                self.status = StagingStatus.cancelled
            case _:
                raise TypeError(f"scene staging cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STAGING_STATUSES

    def request(
        self,
        job_id: str,
        owner_id: str,
        scene: SceneRef,
        now: datetime,
        test_frames: Sequence[int] = (),
    ) -> list[Event]:
        """Ask for the job's scene to be staged, the files of ``test_frames`` first. Asking
        again changes nothing: a job has one scene."""
        if self.exists:
            return []
        if not _SHA256.fullmatch(scene.content_sha256):
            problem = FieldProblem(
                loc=["scene", "content_sha256"],
                message="must be 64 lowercase hex digits",
                type="sha256",
            )
            raise ValidationFailed(
                f"scene {scene.scene_id} has no usable content hash", errors=[problem]
            )
        return self.record(
            SceneStagingRequested(
                job_id=job_id,
                owner_id=owner_id,
                scene=scene,
                staged_key=staged_key(owner_id, scene),
                at=now,
                test_frames=sorted(set(test_frames)),
            )
        )

    def start(self, files_total: int, bytes_total: int, now: datetime) -> list[Event]:
        """The copy starts. A staging started before (and restarted after a crash), or one
        that has ended, changes nothing."""
        if self.status is not StagingStatus.requested:
            return []
        return self.record(
            SceneStagingStarted(
                job_id=self.job_id, files_total=files_total, bytes_total=bytes_total, at=now
            )
        )

    def progress(
        self,
        files_done: int,
        bytes_done: int,
        bytes_total: int,
        now: datetime,
        bytes_prestaged: int = 0,
    ) -> list[Event]:
        """Bytes on the farm so far (``bytes_prestaged`` of them linked from content staged
        as uploaded); only a copy in progress that moved on records it."""
        if self.status is not StagingStatus.copying or bytes_done <= self.bytes_done:
            return []
        return self.record(
            SceneStagingProgressed(
                job_id=self.job_id,
                files_done=files_done,
                bytes_done=bytes_done,
                bytes_total=bytes_total,
                at=now,
                bytes_prestaged=bytes_prestaged,
            )
        )

    def awaiting_upload(self, waiting: SceneFilesAwaited) -> list[Event]:
        """The copy waits for files not uploaded yet; only a copy in progress records it."""
        if self.status is not StagingStatus.copying:
            return []
        return self.record(waiting)

    def needed_files_staged(
        self,
        needed_key: str,
        files: Sequence[str],
        bytes_needed: int,
        totals: tuple[int, int],
        seconds: float,
        now: datetime,
        bytes_prestaged: int = 0,
    ) -> list[Event]:
        """The files the test frames need are on the farm at ``needed_key`` (``totals``: the
        scene's files and bytes; ``bytes_prestaged``: of their bytes, those linked from
        content staged as uploaded). Once per staging: a copy started again after a crash,
        or a staging no longer copying, changes nothing."""
        if self.status is not StagingStatus.copying or self.needed_staged:
            return []
        return self.record(
            SceneNeededFilesStaged(
                job_id=self.job_id,
                staged_key=needed_key,
                files=sorted(files),
                bytes_needed=bytes_needed,
                files_total=totals[0],
                bytes_total=totals[1],
                seconds=round(seconds, 3),
                at=now,
                bytes_prestaged=bytes_prestaged,
            )
        )

    def staged(
        self, reused: bool, bytes_copied: int, now: datetime, bytes_prestaged: int = 0
    ) -> list[Event]:
        """The scene is placed: ``bytes_copied`` fetched from the bucket, ``bytes_prestaged``
        linked from content staged as uploaded."""
        if self.finished:
            return []
        return self.record(
            SceneStaged(
                job_id=self.job_id,
                staged_key=self.staged_key,
                reused=reused,
                bytes_copied=bytes_copied,
                at=now,
                bytes_prestaged=bytes_prestaged,
            )
        )

    def fail(self, code: str, reason: str, now: datetime) -> list[Event]:
        if self.finished:
            return []
        return self.record(SceneStagingFailed(job_id=self.job_id, code=code, reason=reason, at=now))

    def cancel(self, reason: str | None, now: datetime) -> list[Event]:
        """Stop staging. A staging that has ended, or was never asked for, changes nothing."""
        if not self.exists or self.finished:
            return []
        return self.record(SceneStagingCancelled(job_id=self.job_id, reason=reason, at=now))


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
    thumbnail: FrameThumbnail | None = None


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
                        thumbnail=o.thumbnail,
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
        return self._stored(rendered.render_id, rendered.task_id, rendered.frames, rendered.at, now)

    def test_frames_rendered(
        self, rendered: JobTestRenderFramesRendered, now: datetime
    ) -> list[Event]:
        """Record a test render's frames, task by task, as :meth:`frames_rendered` does."""
        events: list[Event] = []
        for frame in rendered.frames:
            events += self._stored(
                rendered.render_id, frame.task_id, [frame.output], rendered.at, now
            )
        return events

    def _stored(
        self,
        render_id: str,
        task_id: int,
        frames: Sequence[FrameOutput],
        at: datetime,
        now: datetime,
    ) -> list[Event]:
        owner_id = self._opened()
        kind = render_kind_of(render_id)
        new = []
        for f in frames:
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
                    thumbnail=f.thumbnail,
                )
            )
        if not new:
            return []
        events: list[Event] = [
            OutputsRecorded(
                job_id=self.job_id,
                owner_id=owner_id,
                bucket=self.bucket,
                render_id=render_id,
                render_kind=kind,
                task_id=task_id,
                outputs=new,
                expires_at=self.expires_at,
                at=at,
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
