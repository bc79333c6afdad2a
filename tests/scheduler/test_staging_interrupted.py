"""A job's scene staging interrupted: the job cancelled while its scene is copied, and the
upload service restarted mid-copy. The render path in this process (job, scheduler, upload,
bridge, a local farm), copying in small chunks so that there is time to act mid-copy."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from contracts.jobs import CancelJob, JobAccepted
from libs.bus.commands import CommandClient
from libs.eventstore.store import EventStore
from libs.runtime import ServiceRuntime, build
from libs.s3 import S3Client
from services.upload.service import SERVICE as UPLOAD
from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.scenes import MiB, put_scene, scene_bytes
from tests.scheduler.conftest import USER, submit
from tests.scheduler.test_staging import envelope, finished, staging_types, wait_for


def copying(job: dict[str, Any]) -> bool:
    """Whether the job's scene is being copied and some of it is."""
    steps = job.get("steps") or [{}]
    return bool(steps[0].get("status") == "running" and steps[0]["progress_percent"] > 0)


@pytest.fixture
def upload_settings(env: Env, stage_root: Path) -> UploadSettings:
    """Copies in 4 KiB chunks, recording progress every 16 KiB: a few MiB take seconds."""
    return env.settings(
        UploadSettings,
        stage_root=str(stage_root),
        stage_poll_seconds=0.2,
        stage_chunk_bytes=4096,
        stage_progress_seconds=0,
        stage_progress_bytes=16 * 1024,
    )


async def test_a_job_cancelled_while_its_scene_is_staged_is_cancelled_and_the_copy_stops(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env, stage_root: Path
) -> None:
    services = render_path
    for rt in services.values():
        await rt.launch()
    scene = await put_scene(s3, env, scene_bytes(4 * MiB))
    job_id = await submit(services["job"], scene)
    staging = await wait_for(services["job"], job_id, copying)
    assert (staging["status"], staging["current_step"]) == ("preparing", "stage_scene")
    assert "cancel" in staging["allowed_actions"]
    await CommandClient(services["job"].nc, services["job"].settings, timeout=10).send(
        CancelJob(job_id=job_id, owner_id=USER.id, reason="wrong scene"),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=USER,
    )
    job = await envelope(services["job"], job_id)
    assert (job["status"], job["steps"][0]["status"]) == ("cancelled", "cancelled")

    async def copy_stopped() -> bool:
        types = await staging_types(services["upload"], job_id)
        return "upload.SceneStagingCancelled" in types and not (
            services["upload"].wired.stager.active
        )

    async with asyncio.timeout(30):
        while not await copy_stopped():
            await asyncio.sleep(0.05)
    assert "upload.SceneStaged" not in await staging_types(services["upload"], job_id)
    assert not (stage_root / f"staged/{USER.id}/{scene.content_sha256}").exists()
    assert list((stage_root / "staged" / ".incoming").iterdir()) == []
    assert (await envelope(services["job"], job_id))["status"] == "cancelled"


async def test_the_upload_service_restarted_mid_staging_finishes_the_job(
    render_path: dict[str, ServiceRuntime[Any]],
    s3: S3Client,
    env: Env,
    upload_settings: UploadSettings,
) -> None:
    for rt in render_path.values():
        await rt.launch()
    scene = await put_scene(s3, env, scene_bytes(4 * MiB, "restart"))
    job_id = await submit(render_path["job"], scene, frames=1)
    await wait_for(render_path["job"], job_id, copying)
    await render_path["upload"].stop()
    stopped = EventStore(render_path["job"].pool, "upload")  # read its store from outside
    left = [e.event_type for e in await stopped.read_stream(f"staging-{job_id}")]
    assert left[-1] == "upload.SceneStagingProgressed"  # stopped mid-copy
    render_path["upload"] = await build(UPLOAD, upload_settings)
    await render_path["upload"].launch()
    done = await wait_for(render_path["job"], job_id, finished)
    assert done["status"] == "completed" and done["steps"][0]["status"] == "succeeded"
    types = await staging_types(render_path["upload"], job_id)
    assert types.count("upload.SceneStagingStarted") == 1 and types[-1] == "upload.SceneStaged"
