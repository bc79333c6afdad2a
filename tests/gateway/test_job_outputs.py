"""A job's outputs through the public API: pages by output id with the job's status, the
archive, ownership, and what a download URL needs."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from tests.fixtures import StartUpload, Users
from tests.upload.rendering import frame_bytes, output_rows, render, submit
from tests.waiting import until


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_a_jobs_outputs_are_listed_in_pages_with_the_jobs_status(
    client: httpx.AsyncClient,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
    users: Users,
) -> None:
    upload = await start_upload(outputs_archive=False)
    frames = {n: frame_bytes(n) for n in range(1, 6)}
    job_id = await render(job_service, s3, s3_settings.s3_outputs_bucket, "usr_a", frames)

    async def all_recorded() -> bool:  # the upload service follows the job's events
        return len(await output_rows(upload.pool, job_id)) == 5

    await until(all_recorded, "every frame recorded")
    me = users.headers("usr_a")
    url = f"/v1/jobs/{job_id}/outputs"
    seen: list[dict[str, Any]] = []
    page: dict[str, Any] = {"next_cursor": None}
    while True:
        params = {"limit": 2, **({"cursor": page["next_cursor"]} if page["next_cursor"] else {})}
        r = await client.get(url, params=params, headers=me)
        assert r.status_code == 200, r.text
        page = r.json()
        assert (page["job_id"], page["job_status"], page["archive"]) == (job_id, "completed", None)
        seen += page["items"]
        if page["next_cursor"] is None:
            break
    assert [o["frame"] for o in seen] == [1, 2, 3, 4, 5]
    assert seen[0]["output_id"] == f"{job_id}-full-0000001"
    assert seen[0]["size_bytes"] == len(frames[1])
    for bad in ("%%%", cursor("job_other-full-0000001"), cursor(f"{job_id}-full-0000001;")):
        r = await client.get(url, params={"cursor": bad}, headers=me)
        assert r.status_code == 422 and r.json()["code"] == "invalid_cursor", bad


async def test_a_job_not_yet_rendered_has_no_outputs_and_another_users_job_has_none_to_show(
    client: httpx.AsyncClient,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    users: Users,
) -> None:
    await start_upload()
    job_id = await submit(job_service, "usr_a", 4)
    r = await client.get(f"/v1/jobs/{job_id}/outputs", headers=users.headers("usr_a"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "job_id": job_id,
        "job_status": "submitted",
        "progress_percent": 0.0,
        "current_step": None,
        "items": [],
        "archive": None,
        "next_cursor": None,
    }
    r = await client.get(f"/v1/jobs/{job_id}/outputs", headers=users.headers("usr_b"))
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"


async def test_download_urls_name_the_public_store_are_idempotent_and_refuse_bad_input(
    client: httpx.AsyncClient,
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
    users: Users,
) -> None:
    # clients reach the store by another name than the services do
    public = s3_settings.s3_endpoint_url.replace("127.0.0.1", "localhost")
    upload = await start_upload(s3_public_endpoint_url=public)
    frame = frame_bytes(1)
    job_id = await render(job_service, s3, s3_settings.s3_outputs_bucket, "usr_a", {1: frame})

    async def recorded() -> bool:  # (its archive may be there too)
        rows = await output_rows(upload.pool, job_id)
        return any(r["kind"] == "frame" for r in rows)

    await until(recorded, "the frame recorded")
    me = users.headers("usr_a")
    url = f"/v1/outputs/{job_id}-full-0000001/download-url"
    first = await client.post(url, json={}, headers={**me, "Idempotency-Key": "k1"})
    again = await client.post(url, json={}, headers={**me, "Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["url"].startswith(f"{public}/")
    assert "X-Amz-Expires=3600" in first.json()["url"]  # the default
    async with httpx.AsyncClient() as store:
        assert (await store.get(first.json()["url"])).content == frame
    longer = await client.post(url, json={"expires_in_seconds": 7200}, headers=me)
    assert longer.status_code == 200 and "X-Amz-Expires=7200" in longer.json()["url"]
    for body in (
        {"expires_in_seconds": 604_801},
        {"expires_in_seconds": 0},
        {"expires_in_seconds": 1.5},
        {"expires_in": 60},
    ):
        r = await client.post(url, json=body, headers=me)
        assert r.status_code == 422 and r.json()["code"] == "validation_failed", body
    r = await client.post("/v1/outputs/not%20an%20id/download-url", json={}, headers=me)
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"
