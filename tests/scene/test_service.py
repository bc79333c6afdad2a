"""The scene service as it runs: ``scene.PrepareScene`` queues a job's staged scene, a worker
process checks, repaths and applies the job's settings with Blender, and every step shows on
the job. Real Blender-built scenes, the job service on PostgreSQL and NATS, the queue on
Valkey, the scene service as an OS process that a test kills."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.jobs import (
    FrameRange,
    JobAccepted,
    JobSpec,
    RecordSceneStaged,
    RenderSettings,
    Resolution,
    SubmitJob,
)
from contracts.preparation import JobSceneSettings, PreparationQueued, PrepareScene
from contracts.staging import SceneKind, SceneRef
from deploy.local.servers import free_port
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from libs.workqueue import WorkQueue
from services.job.service import SERVICE as JOB
from services.job.settings import JobSettings
from services.scene.service import QUEUE_NAME
from tests.conftest import Env
from tests.job.scheduler import SCHEDULER, T0
from tests.processes import Process, service
from tests.scene.conftest import OWNER, Stage
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("blender_python")

Built = Callable[[str], Path]


@pytest.fixture
async def jobs(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(JOB, env.settings(JobSettings))
    await rt.launch()
    yield rt
    await rt.stop()


class SceneProcesses:
    """Scene service processes on one stage root; each a worker the test may kill."""

    def __init__(self, env: Env, stage: Stage, log_dir: Path) -> None:
        self.env, self.stage, self.log_dir = env, stage, log_dir
        self.started: list[Process] = []

    async def start(self, **settings: str) -> Process:
        environ = {
            **os.environ,
            **self.env,
            "RF_HEALTH_PORT": str(free_port()),
            "RF_STAGE_ROOT": str(self.stage.root),
            # A killed worker's item is taken again after this many seconds.
            "RF_SCENE_VISIBILITY_TIMEOUT_SECONDS": "3",
            "RF_SCENE_DEAD_LETTER_POLL_SECONDS": "0.2",
            **settings,
        }
        proc = service("scene", environ, self.log_dir)
        proc.log = self.log_dir / f"scene-{len(self.started)}.log"
        proc.start()
        self.started.append(proc)
        await proc.ready()
        return proc


@pytest.fixture
def scenes(env: Env, stage: Stage, tmp_path: Path) -> Iterator[SceneProcesses]:
    processes = SceneProcesses(env, stage, tmp_path)
    yield processes
    for proc in processes.started:
        proc.kill()


async def staged_job(jobs: ServiceRuntime[Any], key: str, **settings: Any) -> PrepareScene:
    """A job on the staged scene ``key``, its staging recorded as the scheduler does; the
    scheduler's order to prepare it."""
    job_id = new_id("job")
    scene = SceneRef(
        scene_id=new_id("upl"),
        kind=SceneKind.upload,
        main_file="scene.blend",
        file_count=1,
        size_bytes=1,
        content_sha256=key.split("/")[2],
    )
    spec = JobSpec(
        name="shot_030",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=2),
        chunk_size=1,
        resolution=Resolution(width=320, height=180),
        render_settings=RenderSettings(samples=4),
        **settings,
    )
    client = CommandClient(jobs.nc, jobs.settings, timeout=10)
    owner = Actor(kind="user", id=OWNER)
    submit = SubmitJob(job_id=job_id, owner_id=OWNER, spec=spec, scene=scene)
    await client.send(submit, JobAccepted, command_id=uuid.uuid4().hex, actor=owner)
    staged = RecordSceneStaged(job_id=job_id, scene_key=key, reused=False, at=T0)
    await client.send(staged, JobAccepted, command_id=uuid.uuid4().hex, actor=SCHEDULER)
    # The order carries the job's settings, as the scheduler keeps them from its events.
    settings_ = JobSceneSettings(
        renderer=spec.renderer,
        frame_range=spec.frame_range,
        resolution=spec.resolution,
        render_settings=spec.render_settings,
    )
    return PrepareScene(job_id=job_id, owner_id=OWNER, staged_key=key, settings=settings_)


async def prepare(jobs: ServiceRuntime[Any], order: PrepareScene) -> PreparationQueued:
    client = CommandClient(jobs.nc, jobs.settings, timeout=10)
    return await client.send(order, PreparationQueued, command_id=uuid.uuid4().hex, actor=SCHEDULER)


async def envelope(jobs: ServiceRuntime[Any], job_id: str) -> dict[str, Any]:
    async with jobs.pool.acquire() as conn:
        body = await conn.fetchval("SELECT envelope FROM job.jobs WHERE job_id = $1", job_id)
    result: dict[str, Any] = json.loads(body) if body else {}
    return result


async def settled(jobs: ServiceRuntime[Any], job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job once its scene steps ended: ready, or failed."""

    async def check() -> dict[str, Any] | None:
        job = await envelope(jobs, job_id)
        return job if job.get("status") in ("ready", "failed") else None

    found: dict[str, Any] = await until(check, f"job {job_id} ready or failed", timeout)
    return found


def steps(job: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in job["steps"]}


async def test_a_textured_scene_is_checked_repathed_and_given_the_jobs_settings(
    jobs: ServiceRuntime[Any], scenes: SceneProcesses, built: Built, stage: Stage
) -> None:
    await scenes.start()
    order = await staged_job(jobs, stage.upload(built("textured")))
    queued = await prepare(jobs, order)
    assert (queued.item_id, queued.queued) == (order.job_id, True)
    assert (await prepare(jobs, order)).queued is False  # asked again: queued once

    job = await settled(jobs, order.job_id)
    assert job["status"] == "ready", job
    assert steps(job) == {
        "stage_scene": "succeeded",
        "scene_check": "succeeded",
        "repath": "succeeded",
        "render_settings": "succeeded",
        "test_render": "pending",
        "render": "pending",
    }
    # The scene's own 1920x1080 and frames 1-3 differ from the job's: noted, then applied.
    codes = {f["code"]: f["severity"] for f in job["scene_findings"]}
    assert codes["resolution_differs"] in ("info", "warning")
    assert "asset_missing" not in codes
    prepared = stage.root / "prepared" / order.job_id / "scene.blend"
    assert prepared.is_file()
    assert (stage.root / "prepared" / order.job_id / "textures" / "checker.png").is_file()


async def test_a_scene_whose_texture_was_not_uploaded_stops_at_the_check_with_its_finding(
    jobs: ServiceRuntime[Any], scenes: SceneProcesses, built: Built, stage: Stage
) -> None:
    await scenes.start()
    order = await staged_job(jobs, stage.upload(built("textured"), drop=("textures/checker.png",)))
    await prepare(jobs, order)

    job = await settled(jobs, order.job_id)
    assert (job["status"], job["failure_code"]) == ("failed", "scene_check_failed")
    [missing] = [f for f in job["scene_findings"] if f["code"] == "asset_missing"]
    assert (missing["severity"], missing["path"]) == ("error", "//textures/checker.png")
    assert "textures/checker.png" in job["failure_reason"]
    assert steps(job)["scene_check"] == "failed"
    assert steps(job)["repath"] == "pending" and steps(job)["render"] == "pending"
    assert not (stage.root / "prepared" / order.job_id).exists()  # nothing prepared


async def test_a_worker_killed_mid_step_has_its_step_finished_by_another_and_recorded_once(
    jobs: ServiceRuntime[Any], scenes: SceneProcesses, built: Built, stage: Stage
) -> None:
    first = await scenes.start()
    order = await staged_job(jobs, stage.upload(built("textured")))
    await prepare(jobs, order)

    async def applying_settings() -> bool:
        job = await envelope(jobs, order.job_id)
        return bool(job) and steps(job).get("render_settings") == "running"

    await until(applying_settings, "the settings step running (Blender started)", 120)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    await scenes.start()  # another worker: takes the item once its visibility timeout passed

    job = await settled(jobs, order.job_id)
    assert job["status"] == "ready", job
    recorded = await jobs.store.read_stream(f"job-{order.job_id}")
    types = [e.event_type for e in recorded]
    assert types.count("job.JobSceneChecked") == 1
    assert types.count("job.JobScenePrepared") == 1
    starts = [e.data["step"] for e in recorded if e.event_type == "job.JobStepStarted"]
    assert len(starts) == len(set(starts)) == 4  # each step started once, staging included


async def test_an_item_the_workers_keep_failing_is_a_dead_letter_and_fails_its_job(
    env: Env, jobs: ServiceRuntime[Any], scenes: SceneProcesses, built: Built, stage: Stage
) -> None:
    # A Blender that cannot start: the settings step fails on every delivery.
    await scenes.start(
        RF_SCENE_BLENDER=str(stage.root / "no-such-blender"), RF_SCENE_MAX_DELIVERIES="2"
    )
    order = await staged_job(jobs, stage.upload(built("textured")))
    await prepare(jobs, order)

    job = await settled(jobs, order.job_id)
    assert job["status"] == "failed"
    assert job["failure_code"] in ("scene_settings_failed", "scene_preparation_failed")
    redis = aioredis.from_url(env["RF_REDIS_URL"])
    try:
        queue = WorkQueue(redis, QUEUE_NAME, prefix=env["RF_REDIS_PREFIX"])
        [dead] = await queue.dead_letters()
        assert dead.item_id == order.job_id
    finally:
        await redis.aclose()
