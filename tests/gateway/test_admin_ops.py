"""Administrators across users: every user's jobs (filters, stuck jobs), killing a job,
suspending and reactivating a user (refused on every gateway process within a second), the
operations views (queues and bus consumers, dead letters, quarantine and its retry), and
each admin action in the action log with the admin as actor.

Real servers: the gateway, identity and job services in this process; a second gateway for
the suspension's reach. The farm side of a kill and of a suspension is in
``tests/render/test_admin_render.py``."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from contracts.jobs import JobAccepted, JobChanges, UpdateJob
from contracts.preparation import SCENE_QUEUE
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.projection import Row
from libs.eventstore.store import RecordedEvent
from libs.runtime import ServiceRuntime
from libs.workqueue import WorkQueue
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from services.job.projections import JobsProjection
from tests.conftest import Env
from tests.fixtures import Users, admin_session
from tests.gateway.test_accounts import login, register
from tests.gateway.test_replicas import gateway_client
from tests.job.test_service import submit
from tests.waiting import until

#: Every admin route added here, as (method, path) with placeholders filled.
ROUTES = [
    ("GET", "/v1/admin/jobs"),
    ("GET", "/v1/admin/jobs/stuck"),
    ("POST", "/v1/admin/jobs/job_x/kill"),
    ("POST", "/v1/admin/users/usr_x/suspend"),
    ("POST", "/v1/admin/users/usr_x/reactivate"),
    ("GET", "/v1/admin/queues"),
    ("GET", "/v1/admin/dead-letters"),
    ("GET", "/v1/admin/quarantine"),
    ("POST", "/v1/admin/quarantine/job/jobs/job-x/retry"),
]
REASON = {"reason": "terms of service"}


async def user_with_key(
    api: httpx.AsyncClient, admin: dict[str, str], email: str
) -> tuple[str, dict[str, str], dict[str, str], str]:
    """An approved user: id, session headers, API-key headers, refresh token."""
    user = await register(api, email)
    r = await api.post(f"/v1/admin/users/{user['user_id']}/approve", headers=admin)
    assert r.status_code == 200, r.text
    tokens = (await login(api, email)).json()
    session = {"Authorization": f"Bearer {tokens['access_token']}"}
    key = await api.post(
        "/v1/api-keys", json={"name": "ci", "scopes": ["jobs:read"]}, headers=session
    )
    assert key.status_code == 201, key.text
    return user["user_id"], session, {"X-API-Key": key.json()["secret"]}, tokens["refresh_token"]


async def rename(rt: ServiceRuntime[Any], job_id: str, owner: str, name: str) -> None:
    await CommandClient(rt.nc, rt.settings, timeout=10).send(
        UpdateJob(job_id=job_id, owner_id=owner, changes=JobChanges(name=name)),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=Actor(kind="user", id=owner),
    )


async def test_the_admin_routes_are_for_administrators_sessions_only(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    _, session, _, _ = await user_with_key(api, admin, "plain@studio.test")
    admin_key = await api.post(
        "/v1/api-keys", json={"name": "ops", "scopes": ["jobs:read"]}, headers=admin
    )
    as_admin_key = {"X-API-Key": admin_key.json()["secret"]}
    for method, path in ROUTES:
        body = REASON if method == "POST" else None
        for headers in (session, as_admin_key):
            r = await api.request(method, path, json=body, headers=headers)
            assert (r.status_code, r.json()["code"]) == (403, "forbidden"), (path, r.text)
        r = await api.request(method, path, json=body)
        assert r.status_code == 401, path


async def test_bad_input_answers_4xx_with_a_code(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    me = (await api.get("/v1/me", headers=admin)).json()["user_id"]
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", "/v1/admin/jobs?older_than_seconds=-1", None, 422, "validation_failed"),
        ("GET", "/v1/admin/jobs?status=lost", None, 422, "validation_failed"),
        ("GET", "/v1/admin/jobs?limit=0", None, 422, "validation_failed"),
        ("GET", "/v1/admin/jobs?cursor=%21%21", None, 422, "invalid_cursor"),
        ("GET", "/v1/admin/jobs/stuck?minutes=0", None, 422, "validation_failed"),
        ("POST", "/v1/admin/jobs/job_missing/kill", REASON, 404, "job_not_found"),
        ("POST", "/v1/admin/jobs/job_missing/kill", {"reason": ""}, 422, "validation_failed"),
        ("POST", "/v1/admin/jobs/job_missing/kill", {}, 422, "validation_failed"),
        ("POST", "/v1/admin/users/usr_missing/suspend", REASON, 404, "user_not_found"),
        ("POST", "/v1/admin/users/usr_missing/reactivate", None, 404, "user_not_found"),
        ("POST", f"/v1/admin/users/{me}/suspend", REASON, 409, "cannot_suspend_self"),
        ("GET", "/v1/admin/dead-letters?limit=0", None, 422, "validation_failed"),
        (
            "POST",
            "/v1/admin/quarantine/job/jobs/job-missing/retry",
            None,
            404,
            "quarantined_stream_not_found",
        ),
        ("POST", "/v1/admin/quarantine/Bad-Schema/jobs/x/retry", None, 422, "validation_failed"),
    ]
    for method, path, body, status, code in cases:
        r = await api.request(method, path, json=body, headers=admin)
        assert (r.status_code, r.json()["code"]) == (status, code), (path, r.text)


async def test_every_users_jobs_filtered_and_the_stuck_ones(
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    job_service: ServiceRuntime[Any],
    gateway: Gateway,
) -> None:
    admin = await admin_session(api, identity_service)
    a1 = await submit(job_service, "usr_a")
    a2 = await submit(job_service, "usr_a")
    b1 = await submit(job_service, "usr_b")
    everyone = (await api.get("/v1/admin/jobs", headers=admin)).json()
    assert [j["job_id"] for j in everyone["items"]] == [b1, a2, a1]
    assert everyone["next_cursor"] is None
    page = (await api.get("/v1/admin/jobs?limit=2", headers=admin)).json()
    rest = await api.get(f"/v1/admin/jobs?limit=2&cursor={page['next_cursor']}", headers=admin)
    assert [j["job_id"] for j in page["items"] + rest.json()["items"]] == [b1, a2, a1]
    only_a = (await api.get("/v1/admin/jobs?user_id=usr_a", headers=admin)).json()
    assert [j["job_id"] for j in only_a["items"]] == [a2, a1]
    submitted = await api.get("/v1/admin/jobs?status=submitted&user_id=usr_b", headers=admin)
    assert [j["job_id"] for j in submitted.json()["items"]] == [b1]
    # Nothing is on the farm: no job on either pool, and an unknown pool matches none.
    for pool in (gateway.settings.farm_pool, gateway.settings.test_pool, "gpu"):
        on_pool = (await api.get(f"/v1/admin/jobs?pool={pool}", headers=admin)).json()
        assert on_pool["items"] == [], pool
    old = (await api.get("/v1/admin/jobs?older_than_seconds=3600", headers=admin)).json()
    assert old["items"] == []
    young = (await api.get("/v1/admin/jobs?older_than_seconds=0", headers=admin)).json()
    assert len(young["items"]) == 3

    # Stuck: no progress event for a minute: none yet; the threshold is checked against
    # each job's last progress time, so a job moved just now is never in it.
    stuck = (await api.get("/v1/admin/jobs/stuck?minutes=1", headers=admin)).json()
    assert stuck == {"minutes": 1, "items": []}
    async with job_service.pool.acquire() as conn:  # an hour without progress
        await conn.execute(
            "UPDATE job.jobs SET progressed_at = progressed_at - interval '1 hour'"
            " WHERE job_id = ANY($1)",
            [a1, b1],
        )
    stuck = (await api.get("/v1/admin/jobs/stuck?minutes=30", headers=admin)).json()
    assert [s["job"]["job_id"] for s in stuck["items"]] == sorted([a1, b1])
    assert all(s["idle_seconds"] >= 3600 for s in stuck["items"])
    killed = await api.post(f"/v1/admin/jobs/{a1}/kill", json=REASON, headers=admin)
    assert killed.status_code == 200, killed.text
    stuck = (await api.get("/v1/admin/jobs/stuck?minutes=30", headers=admin)).json()
    assert [s["job"]["job_id"] for s in stuck["items"]] == [b1]  # a1 ended


async def test_an_admin_kill_is_a_cancel_recorded_as_the_admins_kill_and_told_to_the_owner(
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    job_service: ServiceRuntime[Any],
    notifier: ServiceRuntime[Any],
    users: Users,
) -> None:
    admin = await admin_session(api, identity_service)
    admin_id = (await api.get("/v1/me", headers=admin)).json()["user_id"]
    job_id = await submit(job_service, "usr_a")
    r = await api.post(
        f"/v1/admin/jobs/{job_id}/kill", json={"reason": "mining crypto"}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"  # nothing on the farm: cancelled at once
    again = await api.post(f"/v1/admin/jobs/{job_id}/kill", json=REASON, headers=admin)
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")  # no change
    events = (await api.get(f"/v1/jobs/{job_id}/events", headers=admin)).json()["items"]
    assert [e["type"] for e in events] == [
        "job.JobSubmitted",
        "job.JobKilled",
        "job.JobCancellationRequested",
        "job.JobCancelled",
    ]
    killed = events[1]
    assert killed["actor_id"] == admin_id
    assert killed["data"] == {
        "job_id": job_id,
        "owner_id": "usr_a",
        "job_name": "shot_010",
        "cause": "admin_kill",
        "reason": "mining crypto",
        "killed_by": admin_id,
        "status": "submitted",
        "at": killed["data"]["at"],
    }

    async def told() -> list[dict[str, Any]]:
        r = await api.get("/v1/notifications", headers=users.headers("usr_a"))
        return [n for n in r.json()["items"] if n["kind"] == "job.killed"]

    [notification] = await until(told, "the owner told of the kill")
    assert notification["payload"] == {
        "job_id": job_id,
        "job_name": "shot_010",
        "cause": "admin_kill",
        "reason": "mining crypto",
    }


async def test_a_suspended_user_is_refused_by_every_gateway_within_a_second(
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    job_service: ServiceRuntime[Any],
    gateway_settings: GatewaySettings,
) -> None:
    admin = await admin_session(api, identity_service)
    user_id, session, as_key, refresh = await user_with_key(api, admin, "suspend@studio.test")
    job_id = await submit(job_service, user_id)
    async with gateway_client(gateway_settings) as (_, other):
        for client in (api, other):  # both hold the key and the verified token
            for headers in (session, as_key):
                assert (await client.get("/v1/jobs", headers=headers)).status_code == 200
        r = await api.post(
            f"/v1/admin/users/{user_id}/suspend", json={"reason": "chargebacks"}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "suspended"
        suspended_at = time.monotonic()
        pending = {
            (g, c): (client, h)
            for g, client in (("this", api), ("other", other))
            for c, h in (("session", session), ("key", as_key))
        }
        while pending and time.monotonic() - suspended_at < 1.0:
            for name, (client, headers) in list(pending.items()):
                r = await client.get("/v1/jobs", headers=headers)
                if r.status_code == 403:
                    assert r.json()["code"] == "user_suspended"
                    del pending[name]
            await asyncio.sleep(0.02)
        assert not pending, f"still accepted after 1 s by {sorted(pending)}"

        r = await login(api, "suspend@studio.test")
        assert (r.status_code, r.json()["code"]) == (403, "user_suspended")
        r = await api.post("/v1/auth/refresh", json={"refresh_token": refresh})
        assert (r.status_code, r.json()["code"]) == (403, "user_suspended")
        listed = (await api.get("/v1/admin/users?status=suspended", headers=admin)).json()
        assert [u["user_id"] for u in listed["items"]] == [user_id]
        # Their active job was killed (the default: RF_JOB_SUSPENDED_USER_JOBS=cancel).
        job = await until(
            lambda: _status(api, admin, job_id, "cancelled"), "the suspended user's job killed"
        )
        events = (await api.get(f"/v1/jobs/{job_id}/events", headers=admin)).json()["items"]
        [killed] = [e["data"] for e in events if e["type"] == "job.JobKilled"]
        assert (killed["cause"], killed["reason"]) == (
            "user_suspended",
            "the account was suspended: chargebacks",
        )
        assert job["status"] == "cancelled"

        r = await api.post(f"/v1/admin/users/{user_id}/reactivate", headers=admin)
        assert (r.status_code, r.json()["status"]) == (200, "active")
        for client in (api, other):
            for headers in (session, as_key):
                await until(functools.partial(_accepted, client, headers), "accepted again")
        assert (await login(api, "suspend@studio.test")).status_code == 200


async def _status(
    api: httpx.AsyncClient, admin: dict[str, str], job_id: str, status: str
) -> dict[str, Any] | None:
    job: dict[str, Any] = (await api.get(f"/v1/jobs/{job_id}", headers=admin)).json()
    return job if job["status"] == status else None


async def _accepted(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    return (await client.get("/v1/jobs", headers=headers)).status_code == 200


async def test_the_queues_consumers_and_dead_letters(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any], env: Env
) -> None:
    admin = await admin_session(api, identity_service)
    redis = aioredis.from_url(env["RF_REDIS_URL"])
    try:
        queue = WorkQueue(redis, SCENE_QUEUE, prefix=env["RF_REDIS_PREFIX"])
        await queue.enqueue("prep-1", {"job_id": "job_1"}, "full")
        await queue.enqueue("prep-2", {"job_id": "job_2"}, "full")
        item = await queue.take("worker-a")
        assert item is not None
        await queue.dead_letter(item, "scene_unreadable: not a blend file")
    finally:
        await redis.aclose()
    view = (await api.get("/v1/admin/queues", headers=admin)).json()
    depth = {d["priority"]: d for d in view["scene_queue"]}
    assert list(depth) == ["test", "full"]
    assert (depth["full"]["waiting"], depth["full"]["dead"]) == (1, 1)
    assert view["scene_queue_dead_letters"] == 1
    # The job service's suspension manager is a durable consumer; its lag is shown.
    durables = {c["durable"]: c for c in view["consumers"]}
    assert "job-suspensions" in durables
    assert durables["job-suspensions"]["pending"] >= 0
    assert view["events_stream_last_seq"] >= 1 and view["bus_dead_letters"] == 0

    letters = (await api.get("/v1/admin/dead-letters", headers=admin)).json()["items"]
    [letter] = letters
    assert (letter["item_id"], letter["priority"], letter["payload"]) == (
        "prep-1",
        "full",
        {"job_id": "job_1"},
    )
    assert letter["error"] == "scene_unreadable: not a blend file"
    assert (letter["deliveries"], letter["consumer"]) == (1, "worker-a")


async def test_a_quarantined_stream_is_shown_and_retried_by_its_service(
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    job_service: ServiceRuntime[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = await admin_session(api, identity_service)
    poisoned = await submit(job_service, "usr_a")
    original = JobsProjection.evolve

    def buggy(self: JobsProjection, row: Row | None, e: Any, rec: RecordedEvent) -> Row | None:
        if e.job_id == poisoned and getattr(e, "name", None) == "v2":
            raise RuntimeError("a bug in the jobs read model")
        return original(self, row, e, rec)

    monkeypatch.setattr(JobsProjection, "evolve", buggy)
    await rename(job_service, poisoned, "usr_a", "v2")
    await rename(job_service, poisoned, "usr_a", "v3")  # held behind it
    [held] = (await api.get("/v1/admin/quarantine", headers=admin)).json()["items"]
    assert {k: held[k] for k in ("schema_name", "projection", "stream_id", "events")} == {
        "schema_name": "job",
        "projection": "jobs",
        "stream_id": f"job-{poisoned}",
        "events": 2,
    }
    assert (held["event_type"], held["version"]) == ("job.JobRenamed", 2)
    assert held["error"].endswith("RuntimeError: a bug in the jobs read model")
    retry = f"/v1/admin/quarantine/job/jobs/job-{poisoned}/retry"
    again = (await api.post(retry, headers=admin)).json()
    assert again["applied"] == 0 and "RuntimeError" in again["error"]  # still broken

    monkeypatch.setattr(JobsProjection, "evolve", original)  # the fix is deployed
    r = await api.post(retry, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "schema_name": "job",
        "projection": "jobs",
        "stream_id": f"job-{poisoned}",
        "applied": 2,
        "error": None,
    }
    assert (await api.get("/v1/admin/quarantine", headers=admin)).json()["items"] == []
    job = (await api.get(f"/v1/jobs/{poisoned}", headers=admin)).json()
    assert job["name"] == "v3"
    r = await api.post("/v1/admin/quarantine/job/frames/x/retry", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "quarantined_stream_not_found")


async def test_a_retry_is_logged_with_the_stream_it_targets(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    admin_id = (await api.get("/v1/me", headers=admin)).json()["user_id"]
    r = await api.post("/v1/admin/quarantine/job/jobs/job-x/retry", headers=admin)
    assert r.status_code == 404

    async def logged() -> dict[str, Any] | None:
        r = await api.get(f"/v1/admin/api-calls?user_id={admin_id}", headers=admin)
        calls = [c for c in r.json()["items"] if c["operation_id"] == "admin_retry_quarantine"]
        return calls[0] if calls else None

    call = await until(logged, "the retry in the action log")
    assert call["target_ids"] == {"schema": "job", "projection": "jobs", "stream_id": "job-x"}
    assert (call["outcome"], call["error_code"]) == ("refused", "quarantined_stream_not_found")


async def test_admin_actions_are_in_the_action_log_with_the_admin_as_actor(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any], job_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    admin_id = (await api.get("/v1/me", headers=admin)).json()["user_id"]
    user = await register(api, "logged@studio.test")
    job_id = await submit(job_service, "usr_a")
    calls = [
        ("POST", f"/v1/admin/users/{user['user_id']}/suspend", REASON),
        ("POST", f"/v1/admin/users/{user['user_id']}/reactivate", None),
        ("POST", f"/v1/admin/jobs/{job_id}/kill", REASON),
        ("GET", "/v1/admin/jobs?user_id=usr_a", None),
        ("GET", "/v1/admin/jobs/stuck?minutes=5", None),
        ("GET", "/v1/admin/queues", None),
        ("GET", "/v1/admin/quarantine", None),
        ("GET", "/v1/admin/dead-letters", None),
    ]
    for method, path, body in calls:
        r = await api.request(method, path, json=body, headers=admin)
        assert r.status_code == 200, (path, r.text)

    wanted = {
        "suspend_user": {"user_id": user["user_id"]},
        "reactivate_user": {"user_id": user["user_id"]},
        "admin_kill_job": {"job_id": job_id},
        "admin_list_jobs": {},
        "admin_list_stuck_jobs": {},
        "admin_queues": {},
        "admin_quarantine": {},
        "admin_dead_letters": {},
    }

    async def logged() -> dict[str, dict[str, Any]] | None:
        r = await api.get(f"/v1/admin/api-calls?user_id={admin_id}&limit=200", headers=admin)
        found = {c["operation_id"]: c for c in r.json()["items"]}
        return found if set(wanted) <= set(found) else None

    found = await until(logged, "the admin's calls in the action log")
    for operation, targets in wanted.items():
        call = found[operation]
        assert call["user_id"] == admin_id and call["api_key_id"] is None, call
        assert call["outcome"] == "succeeded" and call["status_code"] == 200, call
        assert call["target_ids"] == targets, call
    assert found["admin_kill_job"]["path"] == f"/v1/admin/jobs/{job_id}/kill"
