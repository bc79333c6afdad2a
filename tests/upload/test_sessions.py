"""Upload sessions through the gateway API, with the parts PUT straight to the real local S3
(MiniStack, which checks signatures, signed lengths and checksums as S3 does)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from tests.fixtures import Users
from tests.upload.protocol import MiB, Uploader, cut, put_part, sha256_hex

#: Three parts of the tests' 5 MiB plan: 5 MiB, 5 MiB and 1 KiB.
FILE = os.urandom(10 * MiB + 1024)


async def events(rt: ServiceRuntime[Any], upload_id: str) -> list[str]:
    return [e.event_type for e in await rt.store.read_stream(f"upload-{upload_id}")]


async def test_a_file_is_sent_in_parts_straight_to_the_store_and_completed(
    upload_api: httpx.AsyncClient,
    users: Users,
    upload_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot_010.blend", FILE, "application/x-blender")
    assert session["upload_id"].startswith("upl_")
    assert session["status"] == "uploading" and session["kind"] == "scene"
    assert (session["part_size_bytes"], session["part_count"]) == (5 * MiB, 3)
    assert (session["size_bytes"], session["sha256"]) == (len(FILE), sha256_hex(FILE))
    assert session["parts_confirmed"] == 0 and session["progress_percent"] == 0
    assert session["allowed_actions"] == [
        "create_upload_part_urls",
        "complete_upload",
        "abort_upload",
    ]
    parts = cut(FILE, session["part_size_bytes"])
    urls = await me.part_urls(session["upload_id"], parts)
    assert [u["size_bytes"] for u in urls.values()] == [5 * MiB, 5 * MiB, 1024]
    assert urls[3]["headers"]["content-length"] == "1024"
    assert urls[3]["method"] == "PUT"

    for n in (1, 3):
        assert await put_part(urls[n], parts[n]) == 200
    progress = await me.get(session["upload_id"])
    assert (progress["parts_confirmed"], progress["bytes_confirmed"]) == (2, 5 * MiB + 1024)
    assert progress["progress_percent"] == round(100 * (5 * MiB + 1024) / len(FILE), 2)
    assert await put_part(urls[2], parts[2]) == 200

    r = await me.complete(session["upload_id"])
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "completed" and done["allowed_actions"] == []
    assert (done["parts_confirmed"], done["bytes_confirmed"]) == (3, len(FILE))
    assert done["progress_percent"] == 100 and done["completed_at"] is not None

    listed = await s3.list_objects_v2(Bucket=s3_settings.s3_scenes_bucket, Prefix="uploads/")
    [obj] = listed["Contents"]
    assert obj["Key"].endswith(f"/{session['upload_id']}/shot_010.blend")
    body = await (await s3.get_object(Bucket=s3_settings.s3_scenes_bucket, Key=obj["Key"]))[
        "Body"
    ].read()
    assert hashlib.sha256(body).hexdigest() == session["sha256"]
    assert await events(upload_service, session["upload_id"]) == [
        "upload.UploadStarted",
        "upload.UploadPartsConfirmed",
        "upload.UploadCompleted",
    ]
