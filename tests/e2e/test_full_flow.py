"""The whole system as separate processes, over real HTTP, NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import orjson
import pytest

from deploy.local.servers import free_port
from tests.conftest import Env
from tests.fixtures import job_spec
from tests.processes import ROOT, Process, service
from tests.upload.protocol import Uploader

SCENE = b"RFSCENE-v1 " + bytes(range(256)) * 100


@pytest.fixture
def processes(env: Env, tmp_path: Path) -> Iterator[dict[str, Process]]:
    base = {
        **os.environ,
        **env,
        "RF_LOG_LEVEL": "INFO",
        "RF_UPLOAD_MIN_PART_BYTES": str(5 * 2**20),
        "RF_STAGE_ROOT": str(tmp_path / "scenes"),
    }
    gateway_port = free_port()
    services = {
        name: service(
            name,
            {
                **base,
                "RF_HEALTH_PORT": str(free_port()),
                "RF_GATEWAY_PORT": str(gateway_port),
                # Two worker processes under their parent, as `make up` runs it.
                "RF_GATEWAY_WORKERS": "2",
            },
            tmp_path,
        )
        for name in ("identity", "job", "upload", "gateway")
    }
    services["gateway"].base_url = f"http://127.0.0.1:{gateway_port}"  # type: ignore[attr-defined]
    yield services
    for s in services.values():
        if s.proc and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture
async def system(processes: dict[str, Process]) -> AsyncIterator[httpx.AsyncClient]:
    for s in processes.values():
        s.start()
    for s in processes.values():
        await s.ready()
    base_url = processes["gateway"].base_url  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


def renderctl(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.renderctl", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "RF_ADMIN_PASSWORD": "admin-password-1"},
        timeout=60,
    )


async def test_a_studio_signs_up_gets_approved_and_manages_a_job_through_an_api_key(
    system: httpx.AsyncClient, processes: dict[str, Process], env: Env
) -> None:
    api = system
    made = renderctl(env, "create-admin", "--email", "ops@farm.test")
    assert made.returncode == 0, made.stderr
    admin_tokens = (
        await api.post(
            "/v1/auth/login", json={"email": "ops@farm.test", "password": "admin-password-1"}
        )
    ).json()
    admin = {"Authorization": f"Bearer {admin_tokens['access_token']}"}

    user = (
        await api.post(
            "/v1/auth/register",
            json={
                "email": "lead@studio.test",
                "password": "lighting-lead-1",
                "display_name": "Lead",
            },
        )
    ).json()
    assert (
        await api.post(f"/v1/admin/users/{user['user_id']}/approve", headers=admin)
    ).status_code == 200
    tokens = (
        await api.post(
            "/v1/auth/login", json={"email": "lead@studio.test", "password": "lighting-lead-1"}
        )
    ).json()
    me = {"Authorization": f"Bearer {tokens['access_token']}"}
    key = (
        await api.post(
            "/v1/api-keys", json={"name": "mcp", "scopes": ["jobs:read", "jobs:write"]}, headers=me
        )
    ).json()
    agent = {"X-API-Key": key["secret"], "Idempotency-Key": "shot-010-v1"}
    scene = await Uploader(api, {"X-API-Key": key["secret"]}).upload("shot_010.blend", SCENE)

    created = await api.post("/v1/jobs", json=job_spec(scene_id=scene["upload_id"]), headers=agent)
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["x-trace-id"] and created.headers["x-request-id"]
    assert (await api.get(f"/v1/jobs/{job['job_id']}", headers=agent)).json() == job
    patched = await api.patch(f"/v1/jobs/{job['job_id']}", json={"priority": "high"}, headers=agent)
    assert patched.json()["priority"] == "high"
    cancelled = await api.post(
        f"/v1/jobs/{job['job_id']}/cancel", headers={"X-API-Key": key["secret"]}
    )
    assert cancelled.json()["status"] == "cancelled"

    # Every job event reached JetStream once, in feed order, with the event id as the
    # message id.
    conn = await asyncpg.connect(env["RF_DATABASE_URL"])
    try:
        rows = await conn.fetch("SELECT event_id, type FROM job.events ORDER BY global_position")
    finally:
        await conn.close()
    stored = [(str(r["event_id"]), r["type"]) for r in rows]
    assert [t for _, t in stored if t.endswith(("JobSubmitted", "JobCancelled"))] == [
        "job.JobSubmitted",
        "job.JobCancelled",
    ]
    nc = await nats.connect(env["RF_NATS_URL"])
    try:
        js = nc.jetstream()
        stream = f"{env['RF_NATS_PREFIX'].upper()}EVENTS"
        prefix = f"{env['RF_NATS_PREFIX']}.events.job."
        published: list[tuple[str, str]] = []
        for _ in range(50):
            state = (await js.stream_info(stream)).state
            published = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                if not (msg.subject or "").startswith(prefix):
                    continue
                body = orjson.loads(msg.data or b"{}")
                assert msg.headers and msg.headers["Nats-Msg-Id"] == body["event_id"]
                assert msg.subject == prefix + body["type"].removeprefix("job.")
                published.append((body["event_id"], body["type"]))
            if len(published) >= len(stored):
                break
            await asyncio.sleep(0.1)
        assert published == stored
        newest = await js.get_last_msg(stream, prefix + "JobSubmitted")
        assert newest.data is not None
        submitted = orjson.loads(newest.data)
        assert submitted["data"]["job_id"] == job["job_id"]
    finally:
        await nc.close()

    # A graceful stop loses nothing: the last call is in the action log once it has stopped.
    last = await api.get(f"/v1/jobs/{job['job_id']}/events", headers=agent)
    assert [e["type"] for e in last.json()["items"]][-1] == "job.JobCancelled"
    for s in processes.values():
        assert s.stop() == 0
    conn = await asyncpg.connect(env["RF_DATABASE_URL"])
    try:
        ops = await conn.fetch(
            "SELECT operation_id AS op FROM gateway.action_log ORDER BY at, request_id"
        )
    finally:
        await conn.close()
    assert [r["op"] for r in ops][-1] == "list_job_events"
    assert renderctl(env, "verify").returncode == 0


async def test_a_killed_job_service_is_a_retryable_503_and_recovers_on_restart(
    system: httpx.AsyncClient, processes: dict[str, Process], users_headers: dict[str, str]
) -> None:
    api, job = system, processes["job"]
    scene = await Uploader(api, users_headers).upload("shot_010.blend", SCENE)
    spec = job_spec(scene_id=scene["upload_id"])
    first = await api.post("/v1/jobs", json=spec, headers=users_headers)
    assert first.status_code == 201
    job.stop(signal.SIGKILL)
    down = await api.post("/v1/jobs", json=spec, headers=users_headers)
    assert down.status_code == 503
    assert down.json()["code"] == "service_unavailable" and down.json()["retryable"] is True
    assert (
        await api.get(f"/v1/jobs/{first.json()['job_id']}", headers=users_headers)
    ).status_code == 200
    job.start()
    await job.ready()
    retried = await api.post("/v1/jobs", json=spec, headers=users_headers)
    assert retried.status_code == 201
    listed = (await api.get("/v1/jobs", headers=users_headers)).json()["items"]
    assert len(listed) == 2


@pytest.fixture
def users_headers(env: Env) -> dict[str, str]:
    from libs.auth import issue_access_token
    from services.gateway.settings import GatewaySettings

    token = issue_access_token(env.settings(GatewaySettings), "usr_e2e", "user")
    return {"Authorization": f"Bearer {token}"}
