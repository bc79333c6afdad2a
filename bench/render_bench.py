"""Sections 6 and 7: the render path's own overhead, and the bridge's polling cost.

6. Real processes (local farm with one warm worker, job, scheduler, upload, deadline-bridge,
   gateway): for one-frame jobs on one uploaded scene (staged by the first, a warm-up, and
   reused by the others), the time from sending ``POST /v1/jobs`` to the farm recording the
   submission (the farm job's ``Date``), and from the farm recording the last task's
   completion (``Comp``) to the job's ``JobCompleted`` (the envelope's ``updated_at``). All
   three clocks are this machine's. Then the time to stage a fresh scene of
   ``stage_mib`` MiB to the farm (copied from the store and its SHA-256 checked): the job's
   ``stage_scene`` step, start to end.
7. The bridge in this process against a farm holding 1,000 active jobs of ours (no workers,
   so they stay active): requests, bridge CPU and farm CPU per poll cycle, for the first
   cycle (every job looked at) and for steady cycles (nothing changed), against the naive
   way of one ``GET /api/jobs?JobID=`` per job.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.api_bench import wait_http_ok
from bench.infra import Child, Infra, Servers
from bench.report import Figure, percentile
from bench.scenes import upload_scene
from contracts.jobs import FrameRange, JobPriority, Renderer, RenderSettings, Resolution
from contracts.render import RenderAccepted, RenderKind, SubmitRender
from libs.auth import issue_access_token
from libs.bus.commands import Actor, CommandClient
from services.gateway.settings import GatewaySettings

SECTION_RENDER = "6"
SECTION_POLL = "7"


@dataclass(frozen=True)
class RenderOptions:
    jobs: int = 10
    stage_mib: int = 64
    poll_jobs: int = 1000
    steady_cycles: int = 5


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _base_env(servers: Servers, dsn: str, prefix: str) -> dict[str, str]:
    return {
        "RF_DATABASE_URL": dsn,
        "RF_NATS_URL": servers.nats_url,
        "RF_NATS_PREFIX": prefix,
        "RF_REDIS_URL": servers.redis_url,
        "RF_REDIS_PREFIX": prefix,
        "RF_LOG_LEVEL": "WARNING",
    }


async def start_farm(
    infra: Infra,
    name: str,
    workers: int,
    frame_seconds: float = 0.05,
    extra: tuple[str, ...] = (),
) -> tuple[Child, str]:
    from deploy.local.servers import free_port

    port = free_port()
    data = infra.root / name
    child = infra.spawn(
        name,
        [
            *("-m", "deploy.farm", "serve", "--port", str(port), "--data-dir", str(data)),
            *("--workers", str(workers), "--blender", "builtin"),
            *("--frame-seconds", str(frame_seconds)),
            *("--outputs-root", str(data / "renders")),
            *extra,
        ],
        {},
    )
    await wait_http_ok(port, "/", 60, child)
    return child, f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class RenderPath:
    """The render path's services, running: the gateway's address and its token keys."""

    gateway_url: str
    settings: GatewaySettings

    def bearer(self, user_id: str, role: str) -> dict[str, str]:
        """Authorization headers for ``user_id`` in ``role``."""
        return {"Authorization": f"Bearer {issue_access_token(self.settings, user_id, role)}"}

    async def fund(self, api: httpx.AsyncClient, user_id: str) -> None:
        """Grant ``user_id`` more credits than any bench run spends (nothing renders without
        a hold), as an admin."""
        granted = await api.post(
            f"/v1/admin/users/{user_id}/credits",
            json={"amount_credits": "1000000.00"},
            headers={**self.bearer("usr_admin", "admin"), "Idempotency-Key": uuid.uuid4().hex},
        )
        granted.raise_for_status()


#: The render path; no render starts without a hold, so the wallet and billing run beside it.
#: The farm renders built-in, so the scene service lets scenes that are not .blend through.
RENDER_PATH_SERVICES = (
    "job",
    "scheduler",
    "upload",
    "scene",
    "wallet",
    "billing",
    "deadline_bridge",
    "gateway",
)


async def start_render_path(
    infra: Infra,
    servers: Servers,
    *,
    label: str,
    dsn: str,
    prefix: str,
    farm_url: str,
    farm_name: str,
    scenes: str,
    extra_env: dict[str, str] | None = None,
) -> RenderPath:
    """Start the render path's services on ``dsn`` against the farm ``farm_name`` at
    ``farm_url``, each ready before the next; ``label`` prefixes their process names."""
    from deploy.local.servers import free_port

    keys = {"k1": secrets.token_hex(32)}
    env = {
        **_base_env(servers, dsn, prefix),
        **infra.s3_env(prefix),
        "RF_STAGE_ROOT": str(infra.root / scenes),
        "RF_JWT_KEYS": json.dumps(keys),
        "RF_JWT_ACTIVE_KID": "k1",
        "RF_TOKEN_PEPPER": secrets.token_hex(32),
        "RF_FARM_URL": farm_url,
        "RF_FARM_OUTPUTS_ROOT": str(infra.root / farm_name / "renders"),
        "RF_SCENES_ROOT": str(infra.root / scenes),
        "RF_RATE_LIMIT_USER_PER_SECOND": "1000000",
        "RF_RATE_LIMIT_USER_BURST": "1000000",
        "RF_SCENE_OPAQUE_SCENES": "allow",
        **(extra_env or {}),
    }
    gateway_port = free_port()
    for name in RENDER_PATH_SERVICES:
        health = free_port()
        child = infra.spawn(
            f"{label}-{name}",
            ["-m", f"services.{name}"],
            {**env, "RF_HEALTH_PORT": str(health), "RF_GATEWAY_PORT": str(gateway_port)},
        )
        await wait_http_ok(health, "/readyz", 60, child)
    settings = GatewaySettings(jwt_keys=keys, jwt_active_kid="k1", token_pepper="x" * 32)
    return RenderPath(f"http://127.0.0.1:{gateway_port}", settings)


async def run_render_overhead(infra: Infra, servers: Servers, opts: RenderOptions) -> list[Figure]:
    _, farm_url = await start_farm(infra, "farm-overhead", workers=1)
    dsn = await infra.create_database("render")
    path = await start_render_path(
        infra,
        servers,
        label="render",
        dsn=dsn,
        prefix=f"b{infra.tag}r",
        farm_url=farm_url,
        farm_name="farm-overhead",
        scenes="scenes",
    )
    headers = path.bearer("usr_bench", "user")
    to_farm: list[float] = []
    to_done: list[float] = []
    async with (
        httpx.AsyncClient(base_url=path.gateway_url, timeout=30) as api,
        httpx.AsyncClient(base_url=farm_url, timeout=30) as farm_api,
    ):
        await path.fund(api, "usr_bench")
        scene_id = await upload_scene(api, headers, b"RFSCENE-bench" * 1000)
        for i in range(opts.jobs + 1):  # the first one stages the scene and warms up
            sent = time.time()
            job = await _render(api, headers, scene_id, f"bench {i}")
            job_id = job["job_id"]
            states = "Active,Completed"
            farm_jobs = (await farm_api.get("/api/jobs", params={"States": states})).json()
            [farm_job] = [
                j for j in farm_jobs if j["Props"].get("ExDic", {}).get("rf_job_id") == job_id
            ]
            tasks = (await farm_api.get("/api/tasks", params={"JobID": farm_job["_id"]})).json()
            last_task = max(_when(t["Comp"]) for t in tasks["Tasks"])
            if i == 0:
                continue
            to_farm.append(_when(farm_job["Date"]) - sent)
            to_done.append(_when(job["updated_at"]) - last_task)
        big = secrets.token_bytes(2**20) * opts.stage_mib
        staged = await _render(api, headers, await upload_scene(api, headers, big), "stage")
    stage = staged["steps"][0]
    stage_seconds = _when(stage["finished_at"]) - _when(stage["started_at"])
    to_farm.sort()
    to_done.sort()
    common = {"unit": "s", "target": 1.0, "direction": "max"}
    return [
        Figure(
            SECTION_RENDER,
            "POST /v1/jobs -> farm job exists, p50",
            percentile(to_farm, 50),
            note=f"{opts.jobs} one-frame jobs, one warm worker",
            **common,  # type: ignore[arg-type]
        ),
        Figure(SECTION_RENDER, "POST /v1/jobs -> farm job exists, max", to_farm[-1], **common),  # type: ignore[arg-type]
        Figure(
            SECTION_RENDER,
            "last task done -> job completed, p50",
            percentile(to_done, 50),
            note="bridge polls every 0.5 s (RF_POLL_INTERVAL_SECONDS)",
            **common,  # type: ignore[arg-type]
        ),
        Figure(SECTION_RENDER, "last task done -> job completed, max", to_done[-1], **common),  # type: ignore[arg-type]
        Figure(
            SECTION_RENDER,
            f"stage a fresh {opts.stage_mib} MiB scene to the farm",
            stage_seconds,
            unit="s",
            note=f"{opts.stage_mib / stage_seconds:.0f} MiB/s: read from the store, SHA-256"
            " checked, written to the farm's scene root",
        ),
    ]


async def _render(
    api: httpx.AsyncClient, headers: dict[str, str], scene_id: str, name: str
) -> dict[str, Any]:
    """Create a one-frame job on ``scene_id`` and wait until it has completed."""
    spec = {
        "name": name,
        "scene_id": scene_id,
        "frame_range": {"start": 1, "end": 1},
        "resolution": {"width": 320, "height": 180},
    }
    r = await api.post("/v1/jobs", json=spec, headers=headers)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        got = await api.get(f"/v1/jobs/{job_id}", headers=headers)
        got.raise_for_status()
        job: dict[str, Any] = got.json()
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.01)
    if job["status"] != "completed":
        raise RuntimeError(f"bench job ended {job['status']}: {job}")
    return job


async def run_poll_cost(infra: Infra, servers: Servers, opts: RenderOptions) -> list[Figure]:
    from libs.runtime import build
    from services.deadline_bridge.service import SERVICE
    from services.deadline_bridge.settings import BridgeSettings

    farm, farm_url = await start_farm(infra, "farm-poll", workers=0)
    dsn = await infra.create_database("poll")
    env = _base_env(servers, dsn, f"b{infra.tag}p")
    settings = BridgeSettings.model_validate(
        {k[3:].lower(): v for k, v in env.items()}
        | {
            "farm_url": farm_url,
            "farm_outputs_root": str(infra.root / "farm-poll" / "renders"),
            "poll_interval_seconds": 3600.0,  # this section drives the cycles itself
        }
    )
    bridge = await build(SERVICE, settings)
    await bridge.launch()
    try:
        client = CommandClient(bridge.nc, settings, timeout=60)
        actor = Actor(kind="service", id="bench")
        slots = asyncio.Semaphore(16)

        async def order(i: int) -> None:
            cmd = SubmitRender(
                job_id=f"job_poll{i:05d}",
                owner_id="usr_bench",
                kind=RenderKind.full,
                attempt=1,
                name=f"poll {i}",
                scene_key="scenes/bench.blend",
                renderer=Renderer.blender_cycles,
                frame_range=FrameRange(start=1, end=10),
                chunk_size=1,
                resolution=Resolution(width=320, height=180),
                render_settings=RenderSettings(),
                priority=JobPriority.normal,
            )
            async with slots:
                await client.send(cmd, RenderAccepted, command_id=f"poll-{i}", actor=actor)

        await asyncio.gather(*(order(i) for i in range(opts.poll_jobs)))
        poller = bridge.wired.poller

        async def measure() -> tuple[int, float, float, float, int]:
            requests, cpu, farm_cpu = (
                bridge.wired.farm.requests,
                time.process_time(),
                farm.cpu_seconds(),
            )
            started = time.perf_counter()
            looked_at = await poller.cycle()
            wall = time.perf_counter() - started
            return (
                bridge.wired.farm.requests - requests,
                time.process_time() - cpu,
                farm.cpu_seconds() - farm_cpu,
                wall,
                looked_at,
            )

        first = await measure()
        steady = [await measure() for _ in range(opts.steady_cycles)]
        req = sum(s[0] for s in steady) / len(steady)
        cpu = sum(s[1] for s in steady) / len(steady)
        farm_cpu = sum(s[2] for s in steady) / len(steady)
        wall = sum(s[3] for s in steady) / len(steady)
        # The naive baseline: one GET /api/jobs?JobID= per active job, timed on a sample.
        ids = [row[1] for row in await _farm_ids(bridge)]
        sample = ids[:100]
        cpu0, started = time.process_time(), time.perf_counter()
        for farm_id in sample:
            await bridge.wired.farm.jobs_by_id([farm_id])
        naive_wall = (time.perf_counter() - started) * len(ids) / len(sample)
        naive_cpu = (time.process_time() - cpu0) * len(ids) / len(sample)
    finally:
        await bridge.stop()
    n = opts.poll_jobs
    return [
        Figure(
            SECTION_POLL,
            f"requests per steady poll cycle, {n} active jobs",
            req,
            "req",
            baseline=float(len(ids)),
            baseline_name="one request per job",
            note=f"first cycle: {first[0]} requests (looked at {first[4]} jobs), {first[3]:.2f} s",
        ),
        Figure(
            SECTION_POLL,
            "bridge CPU per steady poll cycle",
            cpu * 1000,
            "ms",
            baseline=naive_cpu * 1000,
            baseline_name="one request per job",
            note=f"wall {wall * 1000:.0f} ms (naive {naive_wall * 1000:.0f} ms);"
            f" first cycle CPU {first[1] * 1000:.0f} ms",
        ),
        Figure(
            SECTION_POLL,
            "farm CPU per steady poll cycle",
            farm_cpu * 1000,
            "ms",
            note="the local farm answering the listing (a real Web Service differs)",
        ),
    ]


async def _farm_ids(bridge: Any) -> list[tuple[str, str]]:
    from services.deadline_bridge.projections import active_renders

    async with bridge.pool.acquire() as conn:
        rows: list[tuple[str, str]] = await active_renders(conn)
    return rows
