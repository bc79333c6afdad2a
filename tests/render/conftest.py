"""The render path as real processes: the local farm, job, scheduler, upload, scene, deadline-bridge
and gateway, each a separate OS process over real HTTP, NATS, PostgreSQL and S3. Jobs render
scenes uploaded through the upload API, staged by the upload service into the folder the
farm reads scenes from; the bridge stores the frames in the outputs bucket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from deploy.local.servers import free_port
from libs.ids import new_id
from libs.s3 import S3Client, S3Settings, open_s3
from services.gateway.settings import GatewaySettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.processes import Process, service
from tests.upload.protocol import Uploader

#: No render starts without a hold: billing holds each job's estimate in the wallet.
SERVICES = (
    "job",
    "scheduler",
    "upload",
    "scene",
    "deadline_bridge",
    "wallet",
    "billing",
    "gateway",
)
#: A scene file as the farm's built-in renderer takes it (it reads only the name). It is not
#: a ``.blend``: the scene service lets it through as staged (``RF_SCENE_OPAQUE_SCENES``).
SCENE = b"RFSCENE-v1 " + bytes(range(256)) * 400


@dataclass
class RenderSystem:
    env: Env
    api: httpx.AsyncClient
    farm_api: httpx.AsyncClient
    procs: dict[str, Process]
    outputs: Path
    scenes: Path
    headers: dict[str, str]
    #: The user the requests are made as (``headers``).
    owner_id: str
    #: A client on the test's buckets, to look at what the services stored.
    s3: S3Client
    s3_settings: S3Settings

    async def upload(self, data: bytes = SCENE, name: str = "shot_020.blend") -> str:
        """A completed scene upload of the test's user; its id."""
        done = await Uploader(self.api, self.headers).upload(name, data)
        upload_id: str = done["upload_id"]
        return upload_id

    async def create_job(self, scene_id: str | None = None, **spec: Any) -> dict[str, Any]:
        """A job on ``scene_id`` (by default on a new upload of :data:`SCENE`)."""
        body = {
            "name": "shot_020 comp",
            "scene_id": scene_id or await self.upload(),
            "frame_range": {"start": 1, "end": 6},
            "chunk_size": 1,
            "resolution": {"width": 320, "height": 180},
            **spec,
        }
        r = await self.api.post("/v1/jobs", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        r = await self.api.get(f"/v1/jobs/{job_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    async def wait(self, job_id: str, until: Any, timeout: float = 60) -> dict[str, Any]:
        """Poll the job until ``until(job)`` holds."""
        job: dict[str, Any] = {}
        for _ in range(int(timeout * 10)):
            job = await self.job(job_id)
            if until(job):
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"job never got there; last seen: {job}\nrender events: {await self.history(job_id)}"
        )

    async def history(self, job_id: str) -> list[str]:
        """Every bridge and job event type of the job, in order (for failure messages)."""
        conn = await asyncpg.connect(self.env["RF_DATABASE_URL"])
        try:
            rows = await conn.fetch(
                "SELECT type FROM bridge.events WHERE data->>'job_id' = $1"
                " ORDER BY global_position",
                job_id,
            )
        finally:
            await conn.close()
        return [r["type"] for r in rows]

    async def finished(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return await self.wait(
            job_id, lambda j: j["status"] in ("completed", "failed", "cancelled"), timeout
        )

    def farm_files(self, job_id: str) -> dict[str, Path]:
        """The frame files the farm wrote for the job, by file name."""
        return {f.name: f for f in self.outputs.rglob("frame_*") if job_id in str(f)}

    async def stored(self, key: str) -> bytes:
        """The object ``key`` of the outputs bucket."""
        got = await self.s3.get_object(Bucket=self.s3_settings.s3_outputs_bucket, Key=key)
        body = got["Body"]
        async with body:
            data: bytes = await body.read()
        return data

    async def farm_jobs_of(self, job_id: str) -> list[dict[str, Any]]:
        """Every farm job (in any state) that belongs to our job."""
        states = "Active,Suspended,Completed,Failed,Pending"
        jobs = (await self.farm_api.get("/api/jobs", params={"States": states})).json()
        return [j for j in jobs if j["Props"].get("ExDic", {}).get("rf_job_id") == job_id]

    async def events(self, schema: str, event_type: str, job_id: str) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.env["RF_DATABASE_URL"])
        try:
            rows = await conn.fetch(
                f"SELECT data FROM {schema}.events WHERE type = $1 AND data->>'job_id' = $2"
                " ORDER BY global_position",
                event_type,
                job_id,
            )
        finally:
            await conn.close()
        return [orjson.loads(r["data"]) if isinstance(r["data"], str) else r["data"] for r in rows]


class FarmProcess(Process):
    """The farm's web service process, with its port and outputs folder."""

    port: int
    outputs: Path


@pytest.fixture
def farm_blender() -> str:
    """What the farm renders Blender jobs with: the built-in renderer, unless a test module
    gives a Blender (``deploy/farm``'s ``--blender``)."""
    return "builtin"


@pytest.fixture
def scene_env() -> dict[str, str]:
    """The scene service's settings: scenes that are not ``.blend`` files render as staged
    (the built-in renderer takes any file); a test module with Blender refuses them."""
    return {"RF_SCENE_OPAQUE_SCENES": "allow"}


@pytest.fixture
def farm_process(tmp_path: Path, farm_blender: str) -> Iterator[FarmProcess]:
    port = free_port()
    outputs = tmp_path / "renders"
    outputs.mkdir()
    farm = FarmProcess(
        "farm",
        "deploy.farm",
        dict(os.environ),
        tmp_path,
        f"http://127.0.0.1:{port}/",
        args=(
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "farm"),
            "--workers",
            "2",
            "--outputs-root",
            str(outputs),
            "--frame-seconds",
            "0.3",
            "--blender",
            farm_blender,
        ),
    )
    farm.port = port
    farm.outputs = outputs
    yield farm
    if farm.running:
        farm.stop()


@pytest.fixture
async def render_system(
    env: Env, tmp_path: Path, farm_process: FarmProcess, scene_env: dict[str, str]
) -> AsyncIterator[RenderSystem]:
    farm_url = f"http://127.0.0.1:{farm_process.port}"
    outputs = farm_process.outputs
    gateway_port = free_port()
    base = {
        **os.environ,
        **env,
        "RF_LOG_LEVEL": "INFO",
        "RF_FARM_URL": farm_url,
        "RF_FARM_OUTPUTS_ROOT": str(outputs),
        "RF_SCENES_ROOT": str(tmp_path / "scenes"),
        "RF_STAGE_ROOT": str(tmp_path / "scenes"),
        "RF_UPLOAD_MIN_PART_BYTES": str(5 * 2**20),
        "RF_POLL_INTERVAL_SECONDS": "0.2",
        **scene_env,
        "RF_GATEWAY_PORT": str(gateway_port),
    }
    procs = {
        name: service(name, {**base, "RF_HEALTH_PORT": str(free_port())}, tmp_path)
        for name in SERVICES
    }
    farm_process.start()
    for p in procs.values():
        p.start()
    await farm_process.ready()
    for p in procs.values():
        await p.ready()
    owner_id = new_id("usr")
    users = Users(env.settings(GatewaySettings))
    headers = users.headers(owner_id)
    s3_settings = env.settings(S3Settings)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=15) as api,
        httpx.AsyncClient(base_url=farm_url, timeout=15) as farm_api,
        open_s3(s3_settings) as s3,
    ):
        granted = await api.post(
            f"/v1/admin/users/{owner_id}/credits",
            json={"amount_credits": "1000.00"},
            headers={**users.headers(new_id("usr"), "admin"), "Idempotency-Key": owner_id},
        )
        assert granted.status_code == 200, granted.text
        yield RenderSystem(
            env,
            api,
            farm_api,
            procs,
            outputs,
            tmp_path / "scenes",
            headers,
            owner_id,
            s3,
            s3_settings,
        )
    for p in procs.values():
        p.kill()
