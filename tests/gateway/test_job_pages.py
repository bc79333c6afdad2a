"""Every page about a job (its frames, events, outputs and cost) says where the job stands,
with the envelope's own figures: job_id, job_status, progress_percent and current_step."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from libs.runtime import ServiceRuntime
from tests.fixtures import Scenes, Users
from tests.job.scheduler import Scheduler

PAGES = ("frames", "events", "outputs", "cost")


async def states(client: httpx.AsyncClient, job_id: str, me: dict[str, str]) -> dict[str, Any]:
    """The job's state as each page tells it, and as its envelope does."""
    r = await client.get(f"/v1/jobs/{job_id}", headers=me)
    assert r.status_code == 200, r.text
    job = r.json()
    told: dict[str, Any] = {
        "envelope": (job["job_id"], job["status"], job["progress_percent"], job["current_step"])
    }
    for page in PAGES:
        r = await client.get(f"/v1/jobs/{job_id}/{page}", headers=me)
        assert r.status_code == 200, (page, r.text)
        body = r.json()
        told[page] = (
            body["job_id"],
            body["job_status"],
            body["progress_percent"],
            body["current_step"],
        )
    return told


@pytest.mark.usefixtures("billing")
async def test_every_page_about_a_job_carries_its_status_progress_and_current_step(
    client: httpx.AsyncClient, scenes: Scenes, job_service: ServiceRuntime[Any], users: Users
) -> None:
    me = users.new()
    spec = await scenes.spec(me, frame_range={"start": 1, "end": 24}, chunk_size=4)
    r = await client.post("/v1/jobs", json=spec, headers=me)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    scheduler = Scheduler(job_service)

    await scheduler.prepare(job_id)
    await scheduler.queue(job_id)
    told = await states(client, job_id, me)
    # Queued: the four preparation steps ran (5 % each); waiting adds nothing.
    assert set(told.values()) == {(job_id, "queued", 20.0, None)}, told

    await scheduler.start(job_id)
    await scheduler.send(scheduler.task(job_id, 0, [1, 2, 3, 4]))
    told = await states(client, job_id, me)
    # 4 of 24 frames: the render's 75 % times 16.7 %, on top of the preparation's 20 %.
    assert set(told.values()) == {(job_id, "rendering", 32.5, "render")}, told

    r = await client.get(f"/v1/jobs/{job_id}/frames", headers=users.new())
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
