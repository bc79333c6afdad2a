"""Operators can read any stream or the whole feed, verify it, and rebuild every projection
from zero to exactly the read models the live services built."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest

from libs.config import BaseServiceSettings
from libs.runtime import ServiceRuntime
from tests.conftest import Env
from tests.fixtures import Scenes, Users, admin_session
from tests.job.scheduler import Scheduler
from tools import renderctl

READ_MODELS = (
    "job.jobs",
    "job.frames",
    "identity.users",
    "identity.api_keys",
    "bridge.renders",
    "upload.uploads",
)


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
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    job_service: ServiceRuntime[Any],
    scenes: Scenes,
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
            spec = await scenes.spec(me, name=f"shot {j}")
            job = (await api.post("/v1/jobs", json=spec, headers=me)).json()
            if j == 1:
                await api.patch(f"/v1/jobs/{job['job_id']}", json={"priority": "high"}, headers=me)
            if j == 1 and n == 0:
                await Scheduler(job_service).render_all(job["job_id"], list(range(1, 25)), 4)
            if j == 0 and n == 1:
                scheduler = Scheduler(job_service)
                await scheduler.prepare(job["job_id"])
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
    history: None, cli_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await renderctl.run(["migrate"], settings(cli_env)) == 0
    assert "bridge: applied deadline-bridge/0001_renders" in capsys.readouterr().out
    live = await snapshot(cli_env["RF_DATABASE_URL"])
    assert len(live["job.jobs"]) == 9 and len(live["identity.users"]) == 4
    assert len(live["job.frames"]) == 28
    assert await renderctl.run(["rebuild"], settings(cli_env)) == 0
    out = capsys.readouterr().out
    for table in READ_MODELS:  # every declared projection, bridge.renders included
        assert f"rebuilt {table} from " in out
    assert await snapshot(cli_env["RF_DATABASE_URL"]) == live
    assert await renderctl.run(["rebuild", "--verify"], settings(cli_env)) == 0


async def constraints(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'job.jobs'::regclass ORDER BY 1"
    )
    return [r["conname"] for r in rows]


async def test_readers_see_the_whole_model_during_a_rebuild_and_the_live_projector_resumes(
    history: None, cli_env: Env, api: httpx.AsyncClient, users: Users
) -> None:
    conn = await asyncpg.connect(cli_env["RF_DATABASE_URL"])
    seen: list[int] = []
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            seen.append(await conn.fetchval("SELECT count(*) FROM job.jobs"))
            await asyncio.sleep(0)

    before = await constraints(conn)
    reader = asyncio.create_task(read())
    try:
        for _ in range(3):
            assert await renderctl.run(["rebuild", "--projection", "jobs"], settings(cli_env)) == 0
    finally:
        stop.set()
        await reader
    assert len(seen) > 10 and set(seen) == {9}
    indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")
    assert {r["indexname"] for r in indexes} == {
        "jobs_pkey",
        "jobs_owner",
        "jobs_by_state",
        "jobs_status",
        "jobs_test_render_open",
        "jobs_not_progressing",
        "jobs_render_kind",
    }
    assert await constraints(conn) == before  # the migration's names, not jobs__next_*
    # The live projector goes on from where the rebuild got to.
    job_id, owner = (
        await conn.fetchrow("SELECT job_id, owner_id FROM job.jobs WHERE status = 'submitted'")
    ).values()
    await conn.close()
    renamed = await api.patch(
        f"/v1/jobs/{job_id}", json={"name": "renamed"}, headers=users.headers(owner)
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert await renderctl.run(["rebuild", "--verify"], settings(cli_env)) == 0


async def test_verify_prints_what_differs_and_fails(
    history: None, cli_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = await asyncpg.connect(cli_env["RF_DATABASE_URL"])
    try:
        job_id = await conn.fetchval("SELECT min(job_id) FROM job.jobs")
        await conn.execute("UPDATE job.jobs SET status = 'tampered' WHERE job_id = $1", job_id)
        frame = await conn.fetchrow("DELETE FROM job.frames WHERE frame = 9 RETURNING job_id")
        await conn.execute(
            "INSERT INTO identity.api_keys (key_id, user_id, name, scopes, key_hash, created_at)"
            " VALUES ('key_stray', 'usr_x', 'x', '{}', 'h', now())"
        )
        capsys.readouterr()
        assert await renderctl.run(["rebuild", "--verify"], settings(cli_env)) == 1
        out = capsys.readouterr().out
        assert f'job.jobs changed ({job_id}): status: live "tampered"' in out
        assert f"job.frames missing ({frame['job_id']}, 9)" in out
        assert "identity.api_keys extra (key_stray)" in out
        assert "verified job.jobs: 1 difference(s)" in out
        # Verifying changed nothing; rebuilding repairs it.
        assert await conn.fetchval("SELECT status FROM job.jobs WHERE job_id = $1", job_id) == (
            "tampered"
        )
        assert await renderctl.run(["rebuild"], settings(cli_env)) == 0
        assert await renderctl.run(["rebuild", "--verify"], settings(cli_env)) == 0
        assert await conn.fetchval("SELECT to_regclass('job.jobs__next')") is None
    finally:
        await conn.close()


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
