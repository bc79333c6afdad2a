"""The local S3 behaves like S3 where our safety depends on it: signatures, expiry, signed
sizes and checksums are checked by the store itself, not by our code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import httpx

from libs.s3 import S3Client, S3Settings, ensure_buckets

MiB = 1024 * 1024


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def put(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    # A fresh connection per request: after a refused PUT some servers leave it unusable.
    async with httpx.AsyncClient(timeout=30) as h:
        return (await h.put(url, content=body, headers=headers or {})).status_code


async def get(url: str) -> int:
    async with httpx.AsyncClient(timeout=30) as h:
        return (await h.get(url)).status_code


async def test_buckets_are_created_once_with_the_abort_rule(
    s3: S3Client, s3_settings: S3Settings
) -> None:
    await ensure_buckets(s3, s3_settings)  # a second start changes nothing
    rules = await s3.get_bucket_lifecycle_configuration(Bucket=s3_settings.s3_scenes_bucket)
    [rule] = rules["Rules"]
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7


async def test_a_part_url_accepts_only_the_signed_length_and_checksum(
    s3: S3Client, s3_settings: S3Settings
) -> None:
    bucket, key = s3_settings.s3_scenes_bucket, "uploads/u1/scene.blend"
    mpu = await s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    part = b"a" * MiB
    url = await s3.generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": bucket,
            "Key": key,
            "UploadId": mpu["UploadId"],
            "PartNumber": 1,
            "ContentLength": len(part),
            "ChecksumSHA256": sha256_b64(part),
        },
        ExpiresIn=300,
    )
    checksum = {"x-amz-checksum-sha256": sha256_b64(part)}
    assert await put(url, b"b" * MiB, checksum) == 400  # BadDigest: other bytes
    assert await put(url, part) == 403  # the signed checksum header left out
    assert await put(url, part + b"x", checksum) == 403  # another length than signed
    assert await put(url, part, checksum) == 200
    listed = await s3.list_parts(Bucket=bucket, Key=key, UploadId=mpu["UploadId"])
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, MiB)]


async def test_tampered_expired_and_anonymous_downloads_are_refused(
    s3: S3Client, s3_settings: S3Settings
) -> None:
    bucket, key = s3_settings.s3_outputs_bucket, "jobs/job_1/frame_0001.png"
    await s3.put_object(Bucket=bucket, Key=key, Body=b"png bytes")
    url = await s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    assert await get(url) == 200
    assert await get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) == 403
    assert await get(url.replace("frame_0001", "frame_0002")) == 403  # another key
    assert await get(f"{s3_settings.s3_endpoint_url}/{bucket}/{key}") == 403
    short = await s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=1
    )
    deadline = time.monotonic() + 10
    while (status := await get(short)) == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert status == 403
