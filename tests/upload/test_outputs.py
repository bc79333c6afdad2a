"""A job's outputs in the upload service: the archive zipped from the bucket into the bucket,
retention, and job events delivered more than once. Real PostgreSQL, NATS and S3; the job
service is driven as the scheduler drives it, and frames are put where the bridge puts them."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import asyncpg
import httpx
import orjson

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.upload.delivery import archive_lock
from tests.conftest import Env
from tests.fixtures import StartUpload, Users
from tests.upload.rendering import (
    MiB,
    complete,
    frame_bytes,
    output_rows,
    render,
    upload_events,
)
from tests.waiting import until


async def stored(s3: S3Client, bucket: str, key: str) -> bytes:
    got = await s3.get_object(Bucket=bucket, Key=key)
    body = got["Body"]
    async with body:
        data: bytes = await body.read()
    return data


async def missing(s3: S3Client, bucket: str, key: str) -> bool:
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix=key)
    return not listed.get("Contents")


def types(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [t for t, _ in events]


async def test_a_completed_jobs_frames_are_zipped_into_the_bucket_in_parts(
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    upload = await start_upload(outputs_archive_part_bytes=5 * MiB)
    bucket = s3_settings.s3_outputs_bucket
    frames = {n: frame_bytes(n, 2 * MiB) for n in (1, 2, 3)}  # 6 MiB: two parts
    job_id = await render(job_service, s3, bucket, "usr_a", frames)

    async def archived() -> list[Any]:
        return [d for t, d in await upload_events(upload, job_id) if t.endswith("ArchiveStored")]

    [stored_event] = await until(archived, "the archive")
    key = f"jobs/usr_a/{job_id}/archive/{job_id}.zip"
    data = await stored(s3, bucket, key)
    assert (stored_event["size_bytes"], stored_event["sha256"]) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert stored_event["frame_count"] == 3
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2")  # sent as a multipart upload of two parts
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
        for n, blob in frames.items():
            assert zf.read(f"frame_{n:04d}.png") == blob
            assert zf.getinfo(f"frame_{n:04d}.png").compress_type == zipfile.ZIP_STORED
    assert types(await upload_events(upload, job_id)) == [
        "upload.OutputsOpened",
        *["upload.OutputsRecorded"] * 3,
        "upload.OutputsRetained",
        "upload.OutputArchiveRequested",
        "upload.OutputArchiveStored",
    ]


async def test_a_pending_archive_is_built_after_a_restart(
    env: Env,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    first = await start_upload()
    bucket = s3_settings.s3_outputs_bucket
    job_id = await render(job_service, s3, bucket, "usr_a", {1: frame_bytes(1)}, completed=False)
    # Another replica takes the job's archive (as if it were building it) ...
    other_replica = await asyncpg.connect(env["RF_DATABASE_URL"])
    lock = archive_lock("upload", job_id)
    assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", lock)
    await complete(job_service, job_id)

    async def asked() -> bool:
        return "upload.OutputArchiveRequested" in types(await upload_events(first, job_id))

    await until(asked, "the archive to be asked for")
    await first.wired.archives.build_pending()  # it leaves it to the other replica
    # ... and both go away before it is built.
    await first.stop()
    await other_replica.close()
    rows = {r["kind"]: r for r in await output_rows(job_service.pool, job_id)}
    assert rows["archive"]["status"] == "building"
    second = await start_upload()

    async def built() -> bool:
        return "upload.OutputArchiveStored" in types(await upload_events(second, job_id))

    await until(built, "the archive after the restart")
    key = f"jobs/usr_a/{job_id}/archive/{job_id}.zip"
    with zipfile.ZipFile(io.BytesIO(await stored(s3, bucket, key))) as zf:
        assert zf.namelist() == ["frame_0001.png"]


async def test_retention_deletes_the_outputs_with_an_event_and_their_objects_are_gone(
    client: httpx.AsyncClient,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
    users: Users,
) -> None:
    upload = await start_upload(outputs_retention_days=0)
    bucket = s3_settings.s3_outputs_bucket
    job_id = await render(job_service, s3, bucket, "usr_a", {1: frame_bytes(1), 2: frame_bytes(2)})

    async def deleted() -> list[Any]:
        return [d for t, d in await upload_events(upload, job_id) if t == "upload.OutputsDeleted"]

    [event] = await until(deleted, "the outputs to be deleted")
    assert sorted(event["output_ids"]) == [
        f"{job_id}-archive",
        f"{job_id}-full-0000001",
        f"{job_id}-full-0000002",
    ]
    assert await missing(s3, bucket, f"jobs/usr_a/{job_id}/")  # frames, thumbnails, archive
    me = users.headers("usr_a")

    async def listed_as_deleted() -> dict[str, Any] | None:
        page: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}/outputs", headers=me)).json()
        return page if page["archive"]["status"] == "deleted" else None

    page = await until(listed_as_deleted, "the outputs listed as deleted")
    assert [(o["frame"], o["status"]) for o in page["items"]] == [(1, "deleted"), (2, "deleted")]
    assert all(o["deleted_at"] is not None for o in page["items"])
    for output_id in (page["items"][0]["output_id"], page["archive"]["output_id"]):
        r = await client.post(f"/v1/outputs/{output_id}/download-url", json={}, headers=me)
        assert r.status_code == 410 and r.json()["code"] == "output_deleted", r.text
    await upload.wired.retention.sweep()  # a later sweep has nothing left to do
    assert len(await deleted()) == 1


async def test_a_frames_event_delivered_twice_changes_nothing(
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    upload = await start_upload()
    bucket = s3_settings.s3_outputs_bucket
    job_id = await render(job_service, s3, bucket, "usr_a", {1: frame_bytes(1)}, completed=False)

    async def recorded() -> list[asyncpg.Record]:
        return await output_rows(upload.pool, job_id)

    rows_before = await until(recorded, "the frame to be recorded")
    before = await upload_events(upload, job_id)
    [consumer] = upload.consumers
    handled = consumer.handled
    subject = upload.settings.subject("events.job.JobFramesRendered")
    original = (await upload.js.get_last_msg(upload.settings.events_stream, subject)).data
    assert original is not None and orjson.loads(original)["data"]["job_id"] == job_id
    # the same event again, past JetStream's de-duplication (as after its window)
    await upload.js.publish(subject, original, headers={"Nats-Msg-Id": "again"})

    async def handled_again() -> bool:
        return consumer.handled > handled

    await until(handled_again, "the second delivery")
    assert await upload_events(upload, job_id) == before
    assert await output_rows(upload.pool, job_id) == rows_before


async def test_an_archive_whose_frame_is_gone_fails_and_cannot_be_downloaded(
    client: httpx.AsyncClient,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
    users: Users,
) -> None:
    upload = await start_upload()
    bucket = s3_settings.s3_outputs_bucket
    job_id = await render(job_service, s3, bucket, "usr_a", {1: frame_bytes(1)}, completed=False)
    await s3.delete_object(Bucket=bucket, Key=f"jobs/usr_a/{job_id}/full/frame_0001.png")
    await complete(job_service, job_id)

    async def failed() -> list[Any]:
        return [d for t, d in await upload_events(upload, job_id) if t.endswith("ArchiveFailed")]

    [event] = await until(failed, "the archive to fail")
    assert "is gone" in event["reason"]
    me = users.headers("usr_a")

    async def listed_as_failed() -> bool:
        page = (await client.get(f"/v1/jobs/{job_id}/outputs", headers=me)).json()
        return bool(page["archive"]["status"] == "failed")

    await until(listed_as_failed, "the archive listed as failed")
    r = await client.post(f"/v1/outputs/{job_id}-archive/download-url", json={}, headers=me)
    assert r.status_code == 409 and r.json()["code"] == "output_not_ready", r.text
    assert r.json()["details"] == {"output_id": f"{job_id}-archive", "status": "failed"}
    assert await missing(s3, bucket, f"jobs/usr_a/{job_id}/archive/")
