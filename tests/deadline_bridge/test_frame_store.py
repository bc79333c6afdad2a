"""The bridge stores frame files in the outputs bucket, checked by the store itself (each
body is sent with its SHA-256), in parts when they are big. Real S3 (MiniStack)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from libs.s3 import S3Client, S3Settings
from services.deadline_bridge.outputs import FrameStore, FrameStoreFailed

MiB = 1024 * 1024


def store(s3: S3Client, bucket: str) -> FrameStore:
    return FrameStore(s3, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=2)


async def stored(s3: S3Client, bucket: str, key: str) -> bytes:
    got = await s3.get_object(Bucket=bucket, Key=key)
    body = got["Body"]
    async with body:
        data: bytes = await body.read()
    return data


async def test_a_frame_is_stored_with_its_size_and_sha256_and_storing_it_again_is_harmless(
    s3: S3Client, s3_settings: S3Settings, tmp_path: Path
) -> None:
    bucket, key = s3_settings.s3_outputs_bucket, "jobs/u1/j1/full/frame_0001.png"
    frame = tmp_path / "frame_0001.png"
    frame.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4000))
    frames = store(s3, bucket)
    first = await frames.store(str(frame), key)
    assert (first.size_bytes, first.sha256) == (
        4008,
        hashlib.sha256(frame.read_bytes()).hexdigest(),
    )
    assert await stored(s3, bucket, key) == frame.read_bytes()
    assert (await s3.head_object(Bucket=bucket, Key=key))["ContentType"] == "image/png"
    assert await frames.store(str(frame), key) == first  # a retried poll cycle


async def test_a_big_frame_is_stored_in_parts_one_in_memory_at_a_time(
    s3: S3Client, s3_settings: S3Settings, tmp_path: Path
) -> None:
    bucket, key = s3_settings.s3_outputs_bucket, "jobs/u1/j1/full/frame_0002.exr"
    frame = tmp_path / "frame_0002.exr"
    frame.write_bytes(os.urandom(11 * MiB))  # parts of 5, 5 and 1 MiB
    result = await store(s3, bucket).store(str(frame), key)
    data = frame.read_bytes()
    assert (result.size_bytes, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3") and head["ContentType"] == "image/x-exr"
    assert await stored(s3, bucket, key) == data
    uploads = await s3.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []  # nothing left half-done


async def test_a_store_that_refuses_is_a_frame_store_failure(
    s3: S3Client, s3_settings: S3Settings, tmp_path: Path
) -> None:
    frame = tmp_path / "frame_0003.png"
    frame.write_bytes(b"png")
    missing_bucket = store(s3, s3_settings.s3_outputs_bucket + "-gone")
    with pytest.raises(FrameStoreFailed, match="frame_0003"):
        await missing_bucket.store(str(frame), "jobs/u1/j1/full/frame_0003.png")
