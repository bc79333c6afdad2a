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
        "upload.UploadCompletionRequested",
        "upload.UploadCompleted",
    ]


async def test_a_part_with_other_bytes_is_refused_by_the_store_and_not_counted(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", FILE)
    parts = cut(FILE, session["part_size_bytes"])
    urls = await me.part_urls(session["upload_id"], parts)
    tampered = bytes([parts[1][0] ^ 1]) + parts[1][1:]
    assert await put_part(urls[1], tampered) == 400  # BadDigest: not the signed SHA-256
    checksum_only = {"x-amz-checksum-sha256": urls[1]["headers"]["x-amz-checksum-sha256"]}
    longer = {**urls[1], "headers": checksum_only}
    assert await put_part(longer, parts[1] + b"x") == 403  # not the signed length
    assert await me.stored_parts(session["upload_id"]) == []
    assert (await me.get(session["upload_id"]))["parts_confirmed"] == 0
    assert await put_part(urls[1], parts[1]) == 200
    [stored] = await me.stored_parts(session["upload_id"])
    assert stored == {"part_number": 1, "size_bytes": 5 * MiB, "sha256": sha256_hex(parts[1])}


async def test_completion_with_a_missing_part_is_refused_with_its_number(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", FILE)
    parts = cut(FILE, session["part_size_bytes"])
    await me.send(session["upload_id"], {1: parts[1], 3: parts[3]})
    r = await me.complete(session["upload_id"])
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "upload_incomplete" and body["retryable"] is False
    assert body["details"] == {
        "upload_id": session["upload_id"],
        "part_count": 3,
        "missing_part_count": 1,
        "missing_parts": [{"first": 2, "last": 2}],
        "wrong_sizes": [],
    }
    assert (await me.get(session["upload_id"]))["status"] == "uploading"
    await me.send(session["upload_id"], {2: parts[2]})
    assert (await me.complete(session["upload_id"])).json()["status"] == "completed"


async def test_completing_a_completed_upload_answers_the_same(
    upload_api: httpx.AsyncClient, users: Users, upload_service: ServiceRuntime[Any]
) -> None:
    me = Uploader(upload_api, users.new())
    done = await me.upload("shot.blend", FILE)
    again = await me.complete(done["upload_id"])
    assert again.status_code == 200 and again.json() == done
    keyed = await me.complete(done["upload_id"], **{"Idempotency-Key": "complete-1"})
    replayed = await me.complete(done["upload_id"], **{"Idempotency-Key": "complete-1"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == keyed.content and keyed.json() == done
    assert (await events(upload_service, done["upload_id"])).count("upload.UploadCompleted") == 1


async def test_an_upload_the_store_completed_before_a_crash_completes(
    upload_api: httpx.AsyncClient,
    users: Users,
    s3: S3Client,
    s3_settings: S3Settings,
    upload_service: ServiceRuntime[Any],
) -> None:
    """The service completed the multipart upload, then died before recording it: the
    store says NoSuchUpload, but the object is there with the declared size."""
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", FILE)
    await me.send(session["upload_id"], cut(FILE, session["part_size_bytes"]))
    [started] = [
        e.data for e in await upload_service.store.read_stream(f"upload-{session['upload_id']}")
    ]
    bucket, key, s3_id = started["bucket"], started["object_key"], started["s3_upload_id"]
    listed = await s3.list_parts(Bucket=bucket, Key=key, UploadId=s3_id)
    await s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=s3_id,
        MultipartUpload={
            "Parts": [
                {
                    "PartNumber": p["PartNumber"],
                    "ETag": p["ETag"],
                    "ChecksumSHA256": p["ChecksumSHA256"],
                }
                for p in listed["Parts"]
            ]
        },
    )
    assert bucket == s3_settings.s3_scenes_bucket
    r = await me.complete(session["upload_id"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


async def test_an_aborted_upload_loses_its_parts_and_takes_nothing_more(
    upload_api: httpx.AsyncClient,
    users: Users,
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", FILE)
    parts = cut(FILE, session["part_size_bytes"])
    urls = await me.part_urls(session["upload_id"], parts)
    assert await put_part(urls[1], parts[1]) == 200
    r = await me.abort(session["upload_id"])
    assert r.status_code == 200, r.text
    aborted = r.json()
    assert aborted["status"] == "aborted" and aborted["allowed_actions"] == []
    assert (await me.abort(session["upload_id"])).json() == aborted
    open_uploads = await s3.list_multipart_uploads(Bucket=s3_settings.s3_scenes_bucket)
    assert open_uploads.get("Uploads", []) == []
    assert await put_part(urls[2], parts[2]) == 404  # NoSuchUpload: the store dropped it
    assert await me.stored_parts(session["upload_id"]) == []
    for refused in (
        await me.complete(session["upload_id"]),
        await upload_api.post(
            f"/v1/uploads/{session['upload_id']}/part-urls",
            json={"parts": [{"part_number": 2, "sha256": sha256_hex(parts[2])}]},
            headers=me.headers,
        ),
    ):
        assert refused.status_code == 409
        assert refused.json()["code"] == "upload_not_open"
        assert refused.json()["details"]["status"] == "aborted"
    done = await me.upload("other.blend", FILE)
    r = await me.abort(done["upload_id"])
    assert r.status_code == 409 and r.json()["details"]["status"] == "completed"
