"""A job's scene is staged to the farm before its render is queued: the job, scheduler,
upload and bridge services in this process, a real local farm, the scene in the test's S3
bucket. What the job shows (its stage_scene step) and what the farm is given."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client
from services.deadline_bridge.settings import BridgeSettings
from tests.conftest import Env
from tests.scenes import MiB, put_scene, scene_bytes
from tests.scheduler.conftest import USER, submit


@pytest.fixture
async def services(
    render_path: dict[str, ServiceRuntime[Any]],
) -> dict[str, ServiceRuntime[Any]]:
    """The render path, running."""
    for rt in render_path.values():
        await rt.launch()
    return render_path


async def envelope(rt: ServiceRuntime[Any], job_id: str) -> dict[str, Any]:
    async with rt.pool.acquire() as conn:
        body = await conn.fetchval("SELECT envelope FROM job.jobs WHERE job_id = $1", job_id)
    job: dict[str, Any] = json.loads(body) if body else {}
    return job


async def wait_for(
    rt: ServiceRuntime[Any], job_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    job: dict[str, Any] = {}
    try:
        async with asyncio.timeout(60):
            while not until(job := await envelope(rt, job_id)):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"the job never got there; last seen: {job}") from None
    return job


def finished(job: dict[str, Any]) -> bool:
    return job.get("status") in ("completed", "failed", "cancelled")


async def job_events(rt: ServiceRuntime[Any], job_id: str, event_type: str) -> list[Any]:
    return [
        e.decode()
        for e in await rt.store.read_stream(f"job-{job_id}")
        if e.event_type == event_type
    ]


async def staging_types(rt: ServiceRuntime[Any], job_id: str) -> list[str]:
    return [e.event_type for e in await rt.store.read_stream(f"staging-{job_id}")]


async def test_a_job_on_an_uploaded_scene_is_staged_to_the_farm_then_rendered_from_the_copy(
    services: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env, stage_root: Path
) -> None:
    data = scene_bytes(3 * MiB)
    scene = await put_scene(s3, env, data)
    job_id = await submit(services["job"], scene, frames=2)

    done = await wait_for(services["job"], job_id, finished)
    assert done["status"] == "completed", done
    stage = done["steps"][0]
    assert (stage["name"], stage["status"], stage["progress_percent"]) == (
        "stage_scene",
        "succeeded",
        100.0,
    )
    assert stage["started_at"] <= stage["finished_at"] <= done["steps"][-1]["started_at"]
    assert (done["scene_id"], done["scene_file"]) == (scene.scene_id, "shot_030.blend")
    [staged] = await job_events(services["job"], job_id, "job.JobSceneStaged")
    assert not staged.reused
    assert staged.scene_key == f"staged/{USER.id}/{hashlib.sha256(data).hexdigest()}/shot_030.blend"
    assert (stage_root / staged.scene_key).read_bytes() == data
    logs = [e.message for e in await job_events(services["job"], job_id, "job.JobStepLogged")]
    assert "copying the scene to the farm: 1 file, 3.0 MiB" in logs
    # The farm was told to open the staged copy.
    bridge = services["bridge"]
    async with bridge.pool.acquire() as conn:
        farm_job_id = await conn.fetchval(
            "SELECT farm_job_id FROM bridge.renders WHERE job_id = $1", job_id
        )
    assert isinstance(bridge.settings, BridgeSettings)
    async with httpx.AsyncClient(base_url=bridge.settings.farm_url) as farm:
        [farm_job] = (await farm.get("/api/jobs", params={"JobID": farm_job_id})).json()
    assert farm_job["Props"]["PlugInfo"]["SceneFile"] == str(stage_root / staged.scene_key)


async def test_a_second_job_on_the_same_scene_reuses_the_staged_copy(
    services: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    scene = await put_scene(s3, env, scene_bytes(MiB))
    first = await submit(services["job"], scene, frames=1)
    assert (await wait_for(services["job"], first, finished))["status"] == "completed"
    second = await submit(services["job"], scene, frames=1)
    done = await wait_for(services["job"], second, finished)
    assert done["status"] == "completed" and done["steps"][0]["status"] == "succeeded"
    [one] = await job_events(services["job"], first, "job.JobSceneStaged")
    [two] = await job_events(services["job"], second, "job.JobSceneStaged")
    assert (one.reused, two.reused, two.scene_key) == (False, True, one.scene_key)
    # The upload service copied nothing for the second job: no copy was started.
    assert "upload.SceneStagingStarted" not in await staging_types(services["upload"], second)
    logs = [e.message for e in await job_events(services["job"], second, "job.JobStepLogged")]
    assert f"the farm holds this scene already: reusing {one.scene_key}" in logs


async def test_a_scene_whose_bytes_do_not_match_its_sha256_fails_the_job_before_any_render(
    services: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    declared = hashlib.sha256(b"the scene the client meant to send").hexdigest()
    scene = await put_scene(s3, env, scene_bytes(MiB), declared_sha256=declared)
    job_id = await submit(services["job"], scene)

    done = await wait_for(services["job"], job_id, finished)
    assert (done["status"], done["failure_code"]) == ("failed", "scene_checksum_mismatch")
    assert done["failure_reason"].startswith("the scene could not be staged to the farm: ")
    stage, render = done["steps"][0], done["steps"][-1]
    assert (stage["status"], stage["error_code"]) == ("failed", "scene_checksum_mismatch")
    assert declared in stage["error"]
    assert render["status"] == "pending"
    assert done["allowed_actions"] == []
    async with services["bridge"].pool.acquire() as conn:
        renders = await conn.fetchval(
            "SELECT count(*) FROM bridge.events WHERE data->>'job_id' = $1", job_id
        )
    assert renders == 0  # nothing was ever ordered from the farm
