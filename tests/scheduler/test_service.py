"""The scheduler as it runs: the job, scheduler, upload and bridge services in this process
on real PostgreSQL, NATS, S3 and a local farm, with faults put into the scheduler's
consumer."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext

from contracts.jobs import JobStatus
from libs.bus.consumer import DurableConsumer
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client
from tests.conftest import Env
from tests.scenes import put_scene, scene_bytes
from tests.scheduler.conftest import submit


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
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    scheduler = render_path["scheduler"]
    [consumer] = scheduler.consumers
    # A plain asyncio timeout (not nats-py's), as seen in live stacks, then an error that
    # ends the consumer task: the first is survived in place, the second by a restart.
    calls = break_fetch(consumer, [TimeoutError(), RuntimeError("fetch died")])
    scheduler.restart_delay = 0.05
    for rt in render_path.values():
        await rt.launch()
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await submit(render_path["job"], scene)
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
