"""Operators can read any stream or the whole feed, verify it, and rebuild every projection
from zero to exactly the read models the live services built."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest

from libs.config import BaseServiceSettings
from libs.runtime import ServiceRuntime
from tests.conftest import Env
from tests.fixtures import admin_session, job_spec
from tests.job.scheduler import Scheduler
from tools import renderctl

READ_MODELS = ("job.jobs", "job.frames", "identity.users", "identity.api_keys")


async def snapshot(dsn: str) -> dict[str, list[dict[str, object]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")]
            for table in READ_MODELS
        }
    finally:
        await conn.close()


@pytest.fixture
async def history(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any], job_service: ServiceRuntime[Any]
) -> None:
    """Some real history: users, approvals, keys, jobs created, changed, rendered (frames
    included) and cancelled."""
    admin = await admin_session(api, identity_service)
    for n in range(3):
        email = f"artist{n}@studio.test"
        user = (
            await api.post(
                "/v1/auth/register",
                json={"email": email, "password": "a-long-password", "display_name": f"Artist {n}"},
            )
        ).json()
        await api.post(f"/v1/admin/users/{user['user_id']}/approve", headers=admin)
        tokens = (
            await api.post("/v1/auth/login", json={"email": email, "password": "a-long-password"})
        ).json()
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        key = (
            await api.post(
                "/v1/api-keys", json={"name": "mcp", "scopes": ["jobs:read"]}, headers=me
            )
        ).json()
        if n == 1:
            await api.post(f"/v1/api-keys/{key['key_id']}/revoke", headers=me)
        for j in range(3):
            job = (await api.post("/v1/jobs", json=job_spec(name=f"shot {j}"), headers=me)).json()
            if j == 1:
                await api.patch(f"/v1/jobs/{job['job_id']}", json={"priority": "high"}, headers=me)
            if j == 1 and n == 0:
                await Scheduler(job_service).render_all(job["job_id"], list(range(1, 25)), 4)
            if j == 0 and n == 1:
                scheduler = Scheduler(job_service)
                await scheduler.queue(job["job_id"])
                await scheduler.send(scheduler.task(job["job_id"], 2, [9, 10, 11, 12]))
            if j == 2:
                await api.post(f"/v1/jobs/{job['job_id']}/cancel", headers=me)


@pytest.fixture
def cli_env(env: Env) -> Env:
    return env


def settings(env: Env) -> BaseServiceSettings:
    return env.settings(BaseServiceSettings, service_name="renderctl")


async def test_rebuilding_every_projection_reproduces_the_live_read_models(
    history: None, cli_env: Env
) -> None:
    live = await snapshot(cli_env["RF_DATABASE_URL"])
    assert len(live["job.jobs"]) == 9 and len(live["identity.users"]) == 4
    assert len(live["job.frames"]) == 28
    assert await renderctl.run(["rebuild"], settings(cli_env)) == 0
    assert await snapshot(cli_env["RF_DATABASE_URL"]) == live


async def test_a_stream_prints_its_events_in_order(
    history: None, cli_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = await asyncpg.connect(cli_env["RF_DATABASE_URL"])
    job_id = await conn.fetchval("SELECT job_id FROM job.jobs WHERE status = 'cancelled' LIMIT 1")
    await conn.close()
    assert await renderctl.run(["events", f"job-{job_id}"], settings(cli_env)) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in lines] == [
        "job.JobSubmitted",
        "job.JobCancellationRequested",
        "job.JobCancelled",
    ]
    assert {e["schema"] for e in lines} == {"job"}
    assert lines[0]["metadata"]["actor"]["kind"] == "user"


async def test_the_global_feed_prints_from_a_position_and_verifies_clean(
    history: None, cli_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await renderctl.run(
            ["events", "--all", "--schema", "job", "--from", "3"], settings(cli_env)
        )
        == 0
    )
    positions = [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()]
    assert positions == list(range(4, 4 + len(positions))) and len(positions) > 10
    assert await renderctl.run(["verify"], settings(cli_env)) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
