"""The object store's multipart uploads, as upload sessions use them (the only S3 calls of
sessions and manifests).

Every session's multipart upload is created with SHA-256 checksums, so the store checks each
part against the checksum signed into its URL and lists each part's checksum. Store errors
other than a missing multipart upload become ``storage_unavailable`` (retryable), logged.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from contracts.errors import ConcurrencyConflict, StorageUnavailable
from libs.logging import get_logger
from libs.s3 import S3Client, error_code
from services.upload.domain import HeldPart

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = get_logger(__name__)

#: ListParts and ListMultipartUploads answer at most this many per page.
STORE_PAGE = 1000


class NoSuchUpload(Exception):
    """The store does not know the multipart upload (completed, aborted, or never made)."""


@dataclass(frozen=True, slots=True)
class ListedUpload:
    """A multipart upload the store holds open."""

    key: str
    s3_upload_id: str
    initiated: datetime


def hex_to_b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def b64_to_hex(sha256_b64: str) -> str:
    return base64.b64decode(sha256_b64).hex()


@contextlib.contextmanager
def _store(operation: str, key: str) -> Iterator[None]:
    """Translate the store's errors: NoSuchUpload stays itself, the rest is unavailable."""
    try:
        yield
    except ClientError as e:
        code = error_code(e)
        if code == "NoSuchUpload":
            raise NoSuchUpload(key) from e
        if operation == "complete" and code in ("InvalidPart", "InvalidPartOrder"):
            raise ConcurrencyConflict(
                "the store's parts changed while the upload was completed; retry"
            ) from e
        log.warning("object_store_error", operation=operation, key=key, code=code)
        raise StorageUnavailable(f"the object store refused {operation} ({code}); retry") from e
    except BotoCoreError as e:
        log.warning("object_store_unreachable", operation=operation, key=key, error=repr(e))
        raise StorageUnavailable(f"the object store did not answer {operation}; retry") from e


def _held(part: Any) -> HeldPart:
    checksum = part.get("ChecksumSHA256")
    if not checksum:
        raise StorageUnavailable("the object store listed a part without its SHA-256")
    return HeldPart(
        part_number=int(part["PartNumber"]),
        size_bytes=int(part["Size"]),
        etag=str(part["ETag"]),
        checksum_sha256=str(checksum),
    )


class Multipart:
    """Multipart uploads in one store: ``s3`` (the process's client) makes the calls,
    ``signer`` (the same store named by its public address) presigns the part URLs."""

    def __init__(self, s3: S3Client, signer: S3Client) -> None:
        self.s3 = s3
        self.signer = signer

    async def create(self, bucket: str, key: str, content_type: str | None) -> str:
        """A new multipart upload with SHA-256 part checksums; its upload id."""
        with _store("create", key):
            made = await self.s3.create_multipart_upload(
                Bucket=bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
                ContentType=content_type or "binary/octet-stream",
            )
        return made["UploadId"]

    async def parts_page(
        self, bucket: str, key: str, s3_upload_id: str, after: int, limit: int
    ) -> tuple[list[HeldPart], int | None]:
        """Parts numbered above ``after`` (at most ``limit``) and the marker of the next page."""
        with _store("list_parts", key):
            page = await self.s3.list_parts(
                Bucket=bucket,
                Key=key,
                UploadId=s3_upload_id,
                PartNumberMarker=after,
                MaxParts=min(limit, STORE_PAGE),
            )
        parts = [_held(p) for p in page.get("Parts", [])]
        if not (page.get("IsTruncated") and parts):
            return parts, None
        return parts, int(page.get("NextPartNumberMarker") or parts[-1].part_number)

    async def parts(self, bucket: str, key: str, s3_upload_id: str) -> list[HeldPart]:
        """Every part the store holds, by part number (every page of ListParts)."""
        held: list[HeldPart] = []
        after: int | None = 0
        while after is not None:
            page, after = await self.parts_page(bucket, key, s3_upload_id, after, STORE_PAGE)
            held += page
        return held

    async def part_url(
        self,
        bucket: str,
        key: str,
        s3_upload_id: str,
        part_number: int,
        size_bytes: int,
        checksum_b64: str,
        expires_in: int,
    ) -> str:
        """A URL to PUT exactly this part: its length and SHA-256 are signed."""
        with _store("presign", key):
            return await self.signer.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": bucket,
                    "Key": key,
                    "UploadId": s3_upload_id,
                    "PartNumber": part_number,
                    "ContentLength": size_bytes,
                    "ChecksumSHA256": checksum_b64,
                },
                ExpiresIn=expires_in,
            )

    async def complete(
        self, bucket: str, key: str, s3_upload_id: str, parts: Sequence[HeldPart]
    ) -> None:
        """Join ``parts`` (as the store listed them, with their checksums) into the object."""
        listed: list[CompletedPartTypeDef] = [
            {"PartNumber": p.part_number, "ETag": p.etag, "ChecksumSHA256": p.checksum_sha256}
            for p in parts
        ]
        with _store("complete", key):
            await self.s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=s3_upload_id, MultipartUpload={"Parts": listed}
            )

    async def abort(self, bucket: str, key: str, s3_upload_id: str) -> bool:
        """Abort the multipart upload and drop its parts; False if the store had none."""
        try:
            with _store("abort", key):
                await self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=s3_upload_id)
        except NoSuchUpload:
            return False
        return True

    async def object_size(self, bucket: str, key: str) -> int | None:
        """The size of the object at ``key``, or None if there is none."""
        with _store("head", key):
            try:
                head = await self.s3.head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return int(head["ContentLength"])

    async def delete(self, bucket: str, key: str) -> None:
        with _store("delete", key):
            await self.s3.delete_object(Bucket=bucket, Key=key)

    async def open_uploads(self, bucket: str, prefix: str) -> AsyncIterator[list[ListedUpload]]:
        """Pages of the multipart uploads open under ``prefix`` (every page)."""
        key_marker, id_marker = "", ""
        while True:
            with _store("list_uploads", prefix):
                page = await self.s3.list_multipart_uploads(
                    Bucket=bucket,
                    Prefix=prefix,
                    KeyMarker=key_marker,
                    UploadIdMarker=id_marker,
                    MaxUploads=STORE_PAGE,
                )
            yield [
                ListedUpload(u["Key"], u["UploadId"], u["Initiated"].astimezone(UTC))
                for u in page.get("Uploads", [])
            ]
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker", "")
            id_marker = page.get("NextUploadIdMarker", "")
