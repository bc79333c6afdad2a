"""Errors of upload sessions and manifests."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails
from contracts.uploads import UploadKind, UploadStatus


class UploadRef(ErrorDetails):
    upload_id: str = Field(description="The upload session's id.")


class UploadStatusRef(ErrorDetails):
    upload_id: str = Field(description="The upload session's id.")
    status: UploadStatus = Field(description="The session's current status.")


class ManifestRef(ErrorDetails):
    manifest_id: str = Field(description="The manifest's id.")


class SizeLimit(ErrorDetails):
    size_bytes: int = Field(description="The size declared.")
    max_bytes: int = Field(description="The largest file the server takes (upload_max_bytes).")


class PartNumbers(ErrorDetails):
    upload_id: str = Field(description="The upload session's id.")
    part_count: int = Field(description="The session's number of parts: valid are 1..this.")
    part_numbers: list[int] = Field(description="The part numbers refused.")


class PartRange(ErrorDetails):
    first: int = Field(description="First part number of the range.")
    last: int = Field(description="Last part number of the range, inclusive.")


class WrongPartSize(ErrorDetails):
    part_number: int = Field(description="Part number.")
    size_bytes: int = Field(description="Size of the part the store holds.")
    expected_size_bytes: int = Field(description="Size the part plan gives this part.")


class MissingParts(ErrorDetails):
    upload_id: str = Field(description="The upload session's id.")
    part_count: int = Field(description="The session's number of parts.")
    missing_part_count: int = Field(description="How many parts the store does not hold.")
    missing_parts: list[PartRange] = Field(
        description="The missing part numbers as ranges, in order (the first 100 ranges)."
    )
    wrong_sizes: list[WrongPartSize] = Field(
        description="Parts the store holds with another size than planned (the first 100)."
    )


class SessionLimit(ErrorDetails):
    kind: UploadKind = Field(description="Which sessions: scene uploads or manifest assets.")
    current: int = Field(description="Open sessions of that kind now.")
    limit: int = Field(description="Most open sessions of that kind allowed.")


class BytesLimit(ErrorDetails):
    current_bytes: int = Field(description="Bytes of your open sessions now.")
    requested_bytes: int = Field(description="Bytes the request would add.")
    limit_bytes: int = Field(description="Most bytes in open sessions allowed.")


class MissingAsset(ErrorDetails):
    sha256: str = Field(description="SHA-256 of the content not held yet.")
    size_bytes: int = Field(description="Its size in bytes.")
    paths: list[str] = Field(description="Paths in the manifest with this content (first 10).")
    upload_id: str | None = Field(
        description="The open session to send it through; null if none is open."
    )


class ManifestMissing(ErrorDetails):
    manifest_id: str = Field(description="The manifest's id.")
    missing_file_count: int = Field(description="Distinct contents not held yet.")
    missing: list[MissingAsset] = Field(description="The first 100 of them, by first path.")


class AssetSizeRef(ErrorDetails):
    sha256: str = Field(description="SHA-256 of the content.")
    size_bytes: int = Field(description="The size declared now.")
    known_size_bytes: int = Field(description="The size you stored or declared before.")


class UploadNotFound(DomainError[UploadRef]):
    """No such upload session among the caller's."""

    code = "upload_not_found"
    http_status = 404
    retryable = False
    Details = UploadRef


class ManifestNotFound(DomainError[ManifestRef]):
    """No such manifest among the caller's."""

    code = "manifest_not_found"
    http_status = 404
    retryable = False
    Details = ManifestRef


class UploadTooLarge(DomainError[SizeLimit]):
    """The file is larger than the server takes."""

    code = "upload_too_large"
    http_status = 422
    retryable = False
    Details = SizeLimit


class InvalidPartNumber(DomainError[PartNumbers]):
    """A part number is outside 1..part_count of the session."""

    code = "invalid_part_number"
    http_status = 422
    retryable = False
    Details = PartNumbers


class UploadNotOpen(DomainError[UploadStatusRef]):
    """The session is completed or aborted: it takes no more parts or changes."""

    code = "upload_not_open"
    http_status = 409
    retryable = False
    Details = UploadStatusRef


class UploadSessionExpired(DomainError[UploadRef]):
    """The session passed its expires_at (or the store dropped it): start a new one."""

    code = "upload_expired"
    http_status = 409
    retryable = False
    Details = UploadRef


class UploadIncomplete(DomainError[MissingParts]):
    """Completion refused: parts are missing or of the wrong size in the store."""

    code = "upload_incomplete"
    http_status = 409
    retryable = False
    Details = MissingParts


class UploadSessionLimitReached(DomainError[SessionLimit]):
    """Too many open upload sessions: complete or abort some."""

    code = "upload_session_limit_reached"
    http_status = 409
    retryable = False
    Details = SessionLimit


class UploadBytesLimitReached(DomainError[BytesLimit]):
    """The open sessions would hold more bytes than allowed: complete or abort some."""

    code = "upload_bytes_limit_reached"
    http_status = 409
    retryable = False
    Details = BytesLimit


class ManifestIncomplete(DomainError[ManifestMissing]):
    """Files of the manifest are not held yet: upload them, then complete again."""

    code = "manifest_incomplete"
    http_status = 409
    retryable = False
    Details = ManifestMissing


class AssetSizeConflict(DomainError[AssetSizeRef]):
    """A SHA-256 you hold (or are uploading) with one size is declared with another."""

    code = "asset_size_conflict"
    http_status = 409
    retryable = False
    Details = AssetSizeRef


class StorageUnavailable(DomainError[None]):
    """The object store did not answer as expected; retry shortly."""

    code = "storage_unavailable"
    http_status = 503
    retryable = True
    Details = None
