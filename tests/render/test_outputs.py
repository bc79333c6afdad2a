"""A rendered job's frames are in the outputs bucket and downloadable through signed URLs:
the farm, the bridge, the upload service and the gateway as separate processes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import zipfile
from typing import Any

import httpx

from services.gateway.settings import GatewaySettings
from tests.fixtures import Users
from tests.render.conftest import RenderSystem

PNG = b"\x89PNG\r\n\x1a\n"


async def fetch(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A GET on a fresh connection (the store may refuse it)."""
    async with httpx.AsyncClient(timeout=30) as h:
        return await h.get(url, headers=headers or {})


async def outputs(system: RenderSystem, job_id: str) -> dict[str, Any]:
    r = await system.api.get(f"/v1/jobs/{job_id}/outputs", headers=system.headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def download_url(
    system: RenderSystem, output_id: str, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return await system.api.post(
        f"/v1/outputs/{output_id}/download-url", json=body, headers=headers or system.headers
    )


async def rendered(system: RenderSystem, frames: int = 3) -> str:
    """A completed job whose frames the upload service has all recorded, with their expiry
    from the job's end (it follows the job's events, so it may be a moment behind the job)."""
    job = await system.create_job(frame_range={"start": 1, "end": frames})
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    job_id: str = job["job_id"]
    for _ in range(100):
        items = (await outputs(system, job_id))["items"]
        if len(items) == frames and all(o["expires_at"] is not None for o in items):
            return job_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"the outputs of {job_id} were never all recorded")


async def test_every_frame_is_in_the_outputs_bucket_as_the_farm_wrote_it(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job_id = await rendered(system)
    on_farm = system.farm_files(job_id)
    assert sorted(on_farm) == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    page = await outputs(system, job_id)
    assert (page["job_id"], page["job_status"], page["next_cursor"]) == (job_id, "completed", None)
    items = page["items"]
    assert [o["frame"] for o in items] == [1, 2, 3]
    for o in items:
        data = on_farm[o["file_name"]].read_bytes()
        assert o["object_key"] == f"jobs/{system.owner_id}/{job_id}/full/{o['file_name']}"
        assert (o["size_bytes"], o["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert await system.stored(o["object_key"]) == data
        assert o["status"] == "ready" and o["expires_at"] is not None
    # the job's frames name the same objects, and nothing of the farm's disk
    r = await system.api.get(f"/v1/jobs/{job_id}/frames", headers=system.headers)
    frames = r.json()["items"]
    assert [(f["output_id"], f["object_key"]) for f in frames] == [
        (o["output_id"], o["object_key"]) for o in items
    ]
    assert str(system.outputs) not in r.text and "path" not in frames[0]
    completed = await system.events("bridge", "render.RenderTaskCompleted", job_id)
    assert str(system.outputs) not in str(completed)


async def test_a_download_url_gives_the_exact_bytes_and_a_range_resumes(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job_id = await rendered(system, frames=1)
    [frame] = (await outputs(system, job_id))["items"]
    data = system.farm_files(job_id)["frame_0001.png"].read_bytes()
    r = await download_url(system, frame["output_id"])
    assert r.status_code == 200, r.text
    minted = r.json()
    assert (minted["output_id"], minted["file_name"]) == (frame["output_id"], "frame_0001.png")
    assert (minted["size_bytes"], minted["sha256"]) == (len(data), frame["sha256"])
    got = await fetch(minted["url"])
    assert got.status_code == 200 and got.content == data and data.startswith(PNG)
    assert got.headers["content-disposition"] == 'attachment; filename="frame_0001.png"'
    part = await fetch(minted["url"], {"Range": "bytes=8-99"})
    assert part.status_code == 206 and part.content == data[8:100]
    # a fresh URL can be minted at any time, e.g. to go on after the first expired
    again = (await download_url(system, frame["output_id"], expires_in_seconds=600)).json()
    assert again["url"] != minted["url"]
    assert (await fetch(again["url"], {"Range": f"bytes=100-{len(data) - 1}"})).content == data[
        100:
    ]


async def test_a_tampered_an_expired_and_another_objects_url_are_refused_by_the_store(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job_id = await rendered(system, frames=2)
    first, second = (await outputs(system, job_id))["items"]
    url = (await download_url(system, first["output_id"])).json()["url"]
    assert (await fetch(url)).status_code == 200
    assert (await fetch(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))).status_code == 403
    other = url.replace(first["file_name"], second["file_name"])  # the same signature on it
    assert other != url and (await fetch(other)).status_code == 403
    short = (await download_url(system, first["output_id"], expires_in_seconds=1)).json()["url"]
    deadline = time.monotonic() + 10
    while (status := (await fetch(short)).status_code) == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert status == 403


async def test_another_users_outputs_are_not_found_and_a_url_lives_at_most_7_days(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job_id = await rendered(system, frames=1)
    [frame] = (await outputs(system, job_id))["items"]
    stranger = Users(system.env.settings(GatewaySettings)).new()
    r = await system.api.get(f"/v1/jobs/{job_id}/outputs", headers=stranger)
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    for output_id in (frame["output_id"], f"{job_id}-archive", "job_missing-full-0000001"):
        r = await download_url(system, output_id, headers=stranger)
        assert r.status_code == 404 and r.json()["code"] == "output_not_found", output_id
    r = await download_url(system, "job_missing-full-0000001")
    assert r.status_code == 404 and r.json()["code"] == "output_not_found"
    for too_long in (604_801, 0, "3600"):
        r = await download_url(system, frame["output_id"], expires_in_seconds=too_long)
        assert r.status_code == 422 and r.json()["code"] == "validation_failed", too_long
    week = (await download_url(system, frame["output_id"], expires_in_seconds=604_800)).json()
    assert "X-Amz-Expires=604800" in week["url"]


async def test_the_archive_holds_every_frame_with_its_bytes(render_system: RenderSystem) -> None:
    system = render_system
    job_id = await rendered(system, frames=4)
    page = await outputs(system, job_id)
    for _ in range(200):
        if page["archive"] is not None and page["archive"]["status"] == "ready":
            break
        await asyncio.sleep(0.1)
        page = await outputs(system, job_id)
    archive = page["archive"]
    assert archive["status"] == "ready", page
    assert (archive["output_id"], archive["file_name"]) == (f"{job_id}-archive", f"{job_id}.zip")
    minted = (await download_url(system, archive["output_id"])).json()
    data = (await fetch(minted["url"])).content
    assert (len(data), hashlib.sha256(data).hexdigest()) == (
        archive["size_bytes"],
        archive["sha256"],
    )
    on_farm = system.farm_files(job_id)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(on_farm)
        for name, path in on_farm.items():
            assert zf.read(name) == path.read_bytes()


async def test_frames_wait_for_an_unreachable_bucket_instead_of_failing_their_task(
    render_system: RenderSystem,
) -> None:
    system = render_system
    late = f"{system.s3_settings.s3_outputs_bucket}-late"
    bridge = system.procs["deadline_bridge"]
    bridge.stop()
    bridge.env = {**bridge.env, "RF_S3_OUTPUTS_BUCKET": late, "RF_S3_CREATE_BUCKETS": "false"}
    bridge.start()
    await bridge.ready()
    job = await system.create_job(frame_range={"start": 1, "end": 2})

    async def bridge_says_storage_is_away() -> bool:
        async with httpx.AsyncClient() as h:
            r = await h.get(bridge.ready_url)
        return r.status_code == 503 and "frame storage" in r.text

    for _ in range(300):
        if await bridge_says_storage_is_away():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the bridge never said the outputs bucket is away")
    [farm_job] = await system.farm_jobs_of(job["job_id"])
    tasks = (await system.farm_api.get("/api/tasks", params={"JobID": farm_job["_id"]})).json()
    assert any(t["Stat"] == 5 for t in tasks["Tasks"])  # rendered on the farm, ...
    assert (await system.job(job["job_id"]))["frames_done"] == 0  # ... not recorded yet
    await system.s3.create_bucket(Bucket=late)  # the store is back
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed" and done["frames_done"] == 2
    assert await system.events("bridge", "render.RenderTaskFailed", job["job_id"]) == []
    listed = await system.s3.list_objects_v2(Bucket=late, Prefix=f"jobs/{system.owner_id}/")
    assert sorted(o["Key"].rsplit("/", 1)[-1] for o in listed["Contents"]) == [
        "frame_0001.png",
        "frame_0001.thumb.jpg",
        "frame_0002.png",
        "frame_0002.thumb.jpg",
    ]
    await bridge.ready()
