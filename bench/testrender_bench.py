"""Section 15: a test render's backend overhead on a warm worker.

Real processes (the local farm with a standby worker for the test pool, and the render path
with the scene service): for jobs submitted with ``start_full_render=false`` on one staged
scene, once each job is ready, the time from sending ``POST /v1/jobs/{id}/test-render`` of
one frame until the job's envelope shows the test render completed, minus the farm's own
time for that frame (the farm task's ``Start`` to ``Comp``). What is left is ours: the job
command, the scheduler's order, the bridge's submission and polling, the job's read model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.infra import Infra, Servers
from bench.render_bench import _when, start_farm, start_render_path
from bench.report import Figure, percentile
from bench.scenes import upload_scene

SECTION = "15"


@dataclass(frozen=True)
class TestRenderBenchOptions:
    __test__ = False  # not a pytest test class

    jobs: int = 8
    frame_seconds: float = 1.0


async def _job(api: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    got = await api.get(f"/v1/jobs/{job_id}", headers=headers)
    got.raise_for_status()
    job: dict[str, Any] = got.json()
    return job


async def _until(
    api: httpx.AsyncClient, headers: dict[str, str], job_id: str, done: Any, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = await _job(api, headers, job_id)
        if done(job):
            return job
        if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"bench job did not get there: {job}")
        await asyncio.sleep(0.01)


async def run_test_render_overhead(
    infra: Infra, servers: Servers, opts: TestRenderBenchOptions
) -> list[Figure]:
    _, farm_url = await start_farm(
        infra,
        "farm-testrender",
        workers=2,
        frame_seconds=opts.frame_seconds,
        extra=("--standby-workers", "1", "--standby-pools", "test"),
    )
    dsn = await infra.create_database("testrender")
    path = await start_render_path(
        infra,
        servers,
        label="testrender",
        dsn=dsn,
        prefix=f"b{infra.tag}t",
        farm_url=farm_url,
        farm_name="farm-testrender",
        scenes="scenes-testrender",
    )
    headers = path.bearer("usr_bench", "user")
    overheads: list[float] = []
    totals: list[float] = []
    async with (
        httpx.AsyncClient(base_url=path.gateway_url, timeout=30) as api,
        httpx.AsyncClient(base_url=farm_url, timeout=30) as farm_api,
    ):
        await path.fund(api, "usr_bench")
        scene_id = await upload_scene(api, headers, b"RFSCENE-testrender" * 1000)
        for i in range(opts.jobs + 1):  # the first stages the scene and warms up
            spec = {
                "name": f"test render {i}",
                "scene_id": scene_id,
                "frame_range": {"start": 1, "end": 100},
                "resolution": {"width": 320, "height": 180},
                "start_full_render": False,
            }
            r = await api.post("/v1/jobs", json=spec, headers=headers)
            r.raise_for_status()
            job_id = r.json()["job_id"]
            await _until(api, headers, job_id, lambda j: j["status"] == "ready")
            sent = time.time()
            asked = await api.post(
                f"/v1/jobs/{job_id}/test-render", json={"frames": [50]}, headers=headers
            )
            asked.raise_for_status()
            await _until(api, headers, job_id, lambda j: j["test_render"]["status"] == "completed")
            ready = time.time()
            farm_jobs = (await farm_api.get("/api/jobs", params={"States": "Completed"})).json()
            [farm_job] = [
                j for j in farm_jobs if j["Props"].get("ExDic", {}).get("rf_job_id") == job_id
            ]
            tasks = (await farm_api.get("/api/tasks", params={"JobID": farm_job["_id"]})).json()
            [task] = tasks["Tasks"]
            render = _when(task["Comp"]) - _when(task["Start"])
            # Cancel it: the next job's test render finds the standby worker free.
            await api.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
            if i == 0:
                continue
            totals.append(ready - sent)
            overheads.append(ready - sent - render)
    overheads.sort()
    totals.sort()
    return [
        Figure(
            SECTION,
            "POST test-render -> ready, minus the frame's render time, p50",
            percentile(overheads, 50),
            unit="s",
            target=2.0,
            direction="max",
            note=f"{opts.jobs} one-frame test renders on a warm standby worker;"
            f" the frame renders {opts.frame_seconds} s; total p50 {percentile(totals, 50):.2f} s",
        ),
        Figure(
            SECTION,
            "POST test-render -> ready, minus the frame's render time, max",
            overheads[-1],
            unit="s",
            target=2.0,
            direction="max",
            note="bridge polls every 0.5 s (RF_POLL_INTERVAL_SECONDS)",
        ),
    ]
