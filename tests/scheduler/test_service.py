"""The scheduler as it runs: the job, scheduler and bridge services in this process on
real PostgreSQL, NATS and a local farm, with faults put into the scheduler's consumer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from contracts.jobs import FrameRange, JobAccepted, JobSpec, JobStatus, Resolution, SubmitJob
from libs.bus.commands import Actor, CommandClient
from libs.bus.consumer import DurableConsumer
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.deadline_bridge.service import SERVICE as BRIDGE
from services.deadline_bridge.settings import BridgeSettings
from services.job.service import SERVICE as JOB
from services.job.settings import JobSettings
from services.scheduler.service import SERVICE as SCHEDULER
from services.scheduler.settings import SchedulerSettings
from tests.conftest import Env
from tests.farm.conftest import Farm

USER = Actor(kind="user", id="usr_1")


@pytest.fixture
async def render_path(
    env: Env, tmp_path: Path, make_farm: Callable[..., Farm]
) -> AsyncIterator[dict[str, ServiceRuntime[Any]]]:
    farm = make_farm(workers=1)
    started = {
        "job": await build(JOB, env.settings(JobSettings)),
        "scheduler": await build(SCHEDULER, env.settings(SchedulerSettings)),
        "bridge": await build(
            BRIDGE,
            env.settings(
                BridgeSettings,
                farm_url=farm.url,
                farm_outputs_root=str(tmp_path / "renders"),
                scenes_root=str(tmp_path / "scenes"),
                poll_interval_seconds=0.2,
            ),
        ),
    }
    yield started
    for rt in started.values():
        await rt.stop()


def break_fetch(consumer: DurableConsumer, faults: list[BaseException]) -> list[int]:
    """Make the consumer's next fetches raise ``faults``, one each, then fetch for real."""
    real = consumer._fetch
    calls = [0]

    async def fetch(sub: JetStreamContext.PullSubscription) -> list[Any]:
        calls[0] += 1
        if faults:
            raise faults.pop(0)
        return await real(sub)

    consumer._fetch = fetch  # type: ignore[method-assign]
    return calls


async def submit(rt: ServiceRuntime[Any]) -> str:
    job_id = new_id("job")
    spec = JobSpec(
        name="shot_050",
        scene_key="scenes/shot_050.blend",
        frame_range=FrameRange(start=1, end=2),
        chunk_size=1,
        resolution=Resolution(width=320, height=180),
    )
    await CommandClient(rt.nc, rt.settings, timeout=10).send(
        SubmitJob(job_id=job_id, owner_id=USER.id, spec=spec),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=USER,
    )
    return job_id


async def status_of(rt: ServiceRuntime[Any], job_id: str) -> str | None:
    async with rt.pool.acquire() as conn:
        status: str | None = await conn.fetchval(
            "SELECT status FROM job.jobs WHERE job_id = $1", job_id
        )
    return status


async def wait_for_status(rt: ServiceRuntime[Any], job_id: str, status: JobStatus) -> None:
    async with asyncio.timeout(60):
        while await status_of(rt, job_id) != status.value:
            await asyncio.sleep(0.1)


async def test_a_job_still_renders_after_the_consumers_fetch_dies_on_timeouts_and_a_crash(
    render_path: dict[str, ServiceRuntime[Any]],
) -> None:
    scheduler = render_path["scheduler"]
    [consumer] = scheduler.consumers
    # A plain asyncio timeout (not nats-py's), as seen in live stacks, then an error that
    # ends the consumer task: the first is survived in place, the second by a restart.
    calls = break_fetch(consumer, [TimeoutError(), RuntimeError("fetch died")])
    scheduler.restart_delay = 0.05
    for rt in render_path.values():
        await rt.launch()
    job_id = await submit(render_path["job"])
    await wait_for_status(render_path["job"], job_id, JobStatus.completed)
    report = scheduler.task_report()[f"consumer:{consumer.durable}"]
    assert calls[0] > 2 and report["restarts"] == 1 and report["running"]
    assert "fetch died" in str(report["last_error"])
    assert await scheduler.ready() == (True, "ready")


async def test_a_consumer_that_keeps_dying_fails_readiness_and_stops_the_process(
    render_path: dict[str, ServiceRuntime[Any]],
) -> None:
    scheduler = render_path["scheduler"]
    [consumer] = scheduler.consumers
    break_fetch(consumer, [RuntimeError(f"broken {n}") for n in range(100)])
    scheduler.restart_delay, scheduler.max_restarts = 0.01, 3
    serving = asyncio.create_task(scheduler.serve())
    code = await asyncio.wait_for(serving, 30)
    assert code == 1
    report = scheduler.task_report()[f"consumer:{consumer.durable}"]
    assert report["gave_up"] and report["restarts"] == 3
    ready, why = await scheduler.ready()
    assert not ready and why == "stopping"
