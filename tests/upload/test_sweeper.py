"""The sweeper: expired sessions are aborted with their parts, orphaned multipart uploads
(left by a crash between the store's call and the session's event) are aborted, and what
an open session owns is kept."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from libs.ids import new_id
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.upload.protocol import MiB, Uploader, cut, put_part, sha256_hex

FILE = os.urandom(5 * MiB + 100)
TTL_SECONDS = 5


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    return env.settings(
        UploadSettings,
        upload_min_part_bytes=5 * MiB,
        upload_session_ttl_seconds=TTL_SECONDS,
        upload_sweep_interval_seconds=0.2,
        upload_orphan_grace_seconds=1,
        upload_max_open_sessions=1,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


async def open_multipart_ids(s3: S3Client, bucket: str) -> set[str]:
    listed = await s3.list_multipart_uploads(Bucket=bucket)
    return {u["UploadId"] for u in listed.get("Uploads", [])}


async def test_an_expired_session_is_aborted_by_the_sweeper_and_its_parts_are_gone(
    upload_api: httpx.AsyncClient,
    users: Users,
    upload_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", FILE)
    upload_id = session["upload_id"]
    parts = cut(FILE, session["part_size_bytes"])
    r = await upload_api.post(
        f"/v1/uploads/{upload_id}/part-urls",
        json={"parts": [{"part_number": n, "sha256": sha256_hex(b)} for n, b in parts.items()]},
        headers=me.headers,
    )
    urls = {u["part_number"]: u for u in r.json()["urls"]}
    # A part URL never outlives its session.
    assert datetime.fromisoformat(r.json()["expires_at"]) <= datetime.fromisoformat(
        session["expires_at"]
    )
    assert await put_part(urls[1], parts[1]) == 200
    [started] = await upload_service.store.read_stream(f"upload-{upload_id}")
    key, s3_id = started.data["object_key"], started.data["s3_upload_id"]
    bucket = s3_settings.s3_scenes_bucket
    assert s3_id in await open_multipart_ids(s3, bucket)

    async def expired() -> bool:
        r = await upload_api.get(f"/v1/uploads/{upload_id}", headers=me.headers)
        return bool(r.json()["status"] == "expired")

    await eventually(expired)
    assert await open_multipart_ids(s3, bucket) == set()
    with pytest.raises(ClientError) as gone:
        await s3.list_parts(Bucket=bucket, Key=key, UploadId=s3_id)
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    assert await put_part(urls[2], parts[2]) in (403, 404)  # expired URL, or no such upload
    history = [e.event_type for e in await upload_service.store.read_stream(f"upload-{upload_id}")]
    assert history[0] == "upload.UploadStarted" and history[-1] == "upload.UploadExpired"
    refused = await me.complete(upload_id)
    assert refused.status_code == 409 and refused.json()["code"] == "upload_expired"
    # The quota it held is free again (one open session allowed here).
    assert (await me.create("next.blend", FILE))["status"] == "uploading"


async def test_orphaned_multipart_uploads_are_aborted_and_those_of_open_sessions_kept(
    upload_api: httpx.AsyncClient, users: Users, s3: S3Client, s3_settings: S3Settings
) -> None:
    bucket = s3_settings.s3_scenes_bucket
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    await me.create("shot.blend", FILE)
    manifest = await upload_api.post(
        "/v1/manifests",
        json={
            "main_file": "a.png",
            "files": [{"path": "a.png", "size_bytes": 10, "sha256": "a" * 64}],
        },
        headers=me.headers,
    )
    assert manifest.status_code == 201
    asset_session = manifest.json()["missing"][0]["upload_id"]
    assert len(await open_multipart_ids(s3, bucket)) == 1  # an asset's opens with its URLs
    await me.part_urls(asset_session, {1: os.urandom(10)})
    kept = await open_multipart_ids(s3, bucket)
    assert len(kept) == 2  # the scene's and the asset's
    # What a crash leaves: the store's multipart upload, no session recorded.
    crashed = [
        f"uploads/{owner}/upl_crashed/shot.blend",
        f"assets/{owner}/{'b' * 64}",
        f"assets/{owner}/{'a' * 64}",  # the same content as the open asset session
    ]
    orphans = {
        (await s3.create_multipart_upload(Bucket=bucket, Key=k, ChecksumAlgorithm="SHA256"))[
            "UploadId"
        ]
        for k in crashed
    }
    stray = await s3.create_multipart_upload(Bucket=bucket, Key="uploads/not-ours")

    async def swept() -> bool:
        return not (orphans & await open_multipart_ids(s3, bucket))

    await eventually(swept)
    assert await open_multipart_ids(s3, bucket) == kept | {stray["UploadId"]}
