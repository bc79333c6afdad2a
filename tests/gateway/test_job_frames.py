"""A job's rendered frames through the public API: pages by frame number, what the farm
measured of each frame's task, ownership."""

from __future__ import annotations

from typing import Any

import httpx

from libs.runtime import ServiceRuntime
from tests.fixtures import Scenes, Users, admin_session
from tests.job.scheduler import T0, Scheduler, outputs


async def rendered_job(
    client: httpx.AsyncClient,
    scenes: Scenes,
    job_service: ServiceRuntime[Any],
    me: dict[str, str],
) -> str:
    spec = await scenes.spec(me, frame_range={"start": 0, "end": 20, "step": 2}, chunk_size=3)
    r = await client.post("/v1/jobs", json=spec, headers=me)
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job_id"]
    frames = list(range(0, 21, 2))  # 11 frames, frame 0 included
    await Scheduler(job_service).render_all(job_id, frames, chunk_size=3)
    return job_id


async def test_a_jobs_frames_are_listed_by_frame_number_in_cursor_pages(
    client: httpx.AsyncClient, scenes: Scenes, job_service: ServiceRuntime[Any], users: Users
) -> None:
    me = users.new()
    job_id = await rendered_job(client, scenes, job_service, me)
    url = f"/v1/jobs/{job_id}/frames"
    seen: list[dict[str, object]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        r = await client.get(url, params=params, headers=me)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [f["frame"] for f in seen] == list(range(0, 21, 2))
    expected = outputs(job_id, [0])[0]
    assert seen[0] == {
        "frame": 0,
        "output_id": expected.output_id,
        "object_key": expected.object_key,
        "size_bytes": expected.size_bytes,
        "sha256": expected.sha256,
        "worker": "worker-1",
        "rendered_at": (T0.replace(second=30)).isoformat().replace("+00:00", "Z"),
        "task_id": 0,
        "render_seconds": 30.0,
        "peak_memory_bytes": 3 * 2**30,
    }
    assert [f["task_id"] for f in seen] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    everything = (await client.get(url, headers=me)).json()
    assert everything["items"] == seen and everything["next_cursor"] is None
    job = (await client.get(f"/v1/jobs/{job_id}", headers=me)).json()
    assert (job["status"], job["frames_done"], job["frames_total"]) == ("completed", 11, 11)


async def test_another_users_job_has_no_frames_to_show_and_bad_cursors_are_refused(
    client: httpx.AsyncClient, scenes: Scenes, job_service: ServiceRuntime[Any], users: Users
) -> None:
    me = users.new()
    job_id = await rendered_job(client, scenes, job_service, me)
    url = f"/v1/jobs/{job_id}/frames"
    r = await client.get(url, headers=users.new())
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    r = await client.get("/v1/jobs/job_missing/frames", headers=me)
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    for bad in ("%%%", "bm90LWEtZnJhbWU", "OTk5OTk5OTk5OTk5"):  # junk, "not-a-frame", too big
        r = await client.get(url, params={"cursor": bad}, headers=me)
        assert r.status_code == 422 and r.json()["code"] == "invalid_cursor", bad
    r = await client.get(url, params={"limit": 0}, headers=me)
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"


async def test_a_job_not_yet_rendered_has_an_empty_frame_list(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any], users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job = (await api.post("/v1/jobs", json=await scenes.spec(me), headers=me)).json()
    r = await api.get(f"/v1/jobs/{job['job_id']}/frames", headers=me)
    assert r.json() == {
        "job_id": job["job_id"],
        "job_status": "submitted",
        "progress_percent": 0.0,
        "current_step": None,
        "items": [],
        "next_cursor": None,
    }
    admin = await admin_session(api, identity_service)  # an admin may read any job's frames
    r = await api.get(f"/v1/jobs/{job['job_id']}/frames", headers=admin)
    assert r.status_code == 200 and r.json()["items"] == []
