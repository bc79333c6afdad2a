"""Storing rendered frames in the outputs bucket (layout: ``contracts/outputs.py``).

Each frame is read once from the farm's output folder, hashed on the way, and sent with its
SHA-256 so the store refuses any other bytes: a small frame in one ``PutObject`` with
``ChecksumSHA256``, a big one (an EXR of hundreds of MiB) as a multipart upload, one part in
memory at a time, each part with its own ``ChecksumSHA256``. A ``HeadObject`` then checks
the stored size. Putting the same key again (a poll cycle retried after a crash) stores the
same bytes again: harmless.

Next to each PNG or JPEG frame goes its thumbnail (:mod:`.thumbnails`), made under the same
concurrency limit, so at most ``concurrency`` frames are decoded at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from contracts.jobs import FrameThumbnail
from contracts.outputs import thumbnail_key
from libs.logging import get_logger
from libs.s3 import S3Client
from services.deadline_bridge.thumbnails import NoThumbnail, make_thumbnail

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = get_logger(__name__)

#: S3's most parts per upload.
MAX_PARTS = 10_000
MiB = 1024 * 1024
#: Content types of the formats the farm writes; anything else is plain bytes.
CONTENT_TYPES = {".png": "image/png", ".exr": "image/x-exr", ".jpg": "image/jpeg"}
JPEG = "image/jpeg"


class FrameStoreFailed(Exception):
    """A frame could not be stored, or the store holds something else than the file."""


@dataclass(frozen=True)
class StoredFile:
    size_bytes: int
    sha256: str  # lowercase hex


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _read_whole(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_part(f: IO[bytes], size: int, whole: hashlib._Hash) -> tuple[bytes, str]:
    """The next ``size`` bytes of ``f`` and their SHA-256 (base64), added to ``whole`` (in
    a thread: reading and hashing release the GIL)."""
    data = f.read(size)
    whole.update(data)
    return data, _b64(hashlib.sha256(data).digest())


class FrameStore:
    """Puts frame files into the outputs bucket."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        *,
        multipart_threshold: int,
        part_size: int,
        concurrency: int,
        thumbnail_size: int = 256,
        thumbnail_max_pixels: int = 40_000_000,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.slots = asyncio.Semaphore(concurrency)
        self.thumbnail_size = thumbnail_size
        self.thumbnail_max_pixels = thumbnail_max_pixels

    async def store(self, path: str, key: str) -> StoredFile:
        """Store the file at ``path`` as ``key``; its size and SHA-256 as stored."""
        async with self.slots:
            try:
                size = os.stat(path).st_size
                if size <= self.multipart_threshold:
                    stored = await self._put(path, key)
                else:
                    stored = await self._put_in_parts(path, key, size)
                head = await self.s3.head_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as e:
                raise FrameStoreFailed(f"storing {path} as {key}: {e}") from e
        if stored.size_bytes != size or head["ContentLength"] != size:
            raise FrameStoreFailed(
                f"{key}: the file has {size} bytes, {stored.size_bytes} were read and the"
                f" store holds {head['ContentLength']}"
            )
        return stored

    async def store_thumbnail(self, path: str, frame_key: str) -> FrameThumbnail | None:
        """Make the thumbnail of the frame at ``path`` and store it next to ``frame_key``;
        None when the frame gets none (an OpenEXR frame, one too big, one that is no
        image: logged). Raises :class:`FrameStoreFailed` when the store fails."""
        key = thumbnail_key(frame_key)
        async with self.slots:
            try:
                thumb = await asyncio.to_thread(
                    make_thumbnail, path, self.thumbnail_size, self.thumbnail_max_pixels
                )
            except NoThumbnail as e:
                log.info("no_thumbnail", frame=frame_key, reason=str(e))
                return None
            try:
                stored = await self._put_data(thumb.data, key, JPEG)
                head = await self.s3.head_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as e:
                raise FrameStoreFailed(f"storing the thumbnail {key}: {e}") from e
        if head["ContentLength"] != stored.size_bytes:
            raise FrameStoreFailed(
                f"{key}: {stored.size_bytes} bytes were sent, the store holds"
                f" {head['ContentLength']}"
            )
        return FrameThumbnail(
            object_key=key,
            width=thumb.width,
            height=thumb.height,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
        )

    async def _put(self, path: str, key: str) -> StoredFile:
        data = await asyncio.to_thread(_read_whole, path)
        return await self._put_data(data, key, _content_type(key))

    async def _put_data(self, data: bytes, key: str, content_type: str) -> StoredFile:
        digest = hashlib.sha256(data).digest()
        await self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ChecksumSHA256=_b64(digest),
            ContentType=content_type,
        )
        return StoredFile(len(data), digest.hex())

    async def _put_in_parts(self, path: str, key: str, size: int) -> StoredFile:
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        upload = await self.s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", ContentType=_content_type(key)
        )
        upload_id = upload["UploadId"]
        whole = hashlib.sha256()
        parts: list[CompletedPartTypeDef] = []
        read = 0
        try:
            f = await asyncio.to_thread(open, path, "rb")
            try:
                while True:
                    data, checksum = await asyncio.to_thread(_read_part, f, part_size, whole)
                    if not data:
                        break
                    read += len(data)
                    number = len(parts) + 1
                    answer = await self.s3.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ChecksumSHA256=checksum,
                    )
                    parts.append(
                        {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
                    )
            finally:
                await asyncio.to_thread(f.close)
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise
        return StoredFile(read, whole.hexdigest())

    async def _abort(self, key: str, upload_id: str) -> None:
        """Give up an upload; if even that fails, the bucket's lifecycle rule aborts it."""
        try:
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as e:
            log.warning("multipart_abort_failed", key=key, upload_id=upload_id, error=str(e))


def _content_type(key: str) -> str:
    return CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), "application/octet-stream")
