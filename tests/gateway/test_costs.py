"""What rendering costs, at the gateway on the real servers: estimates, a job's cost with its
lines (adding up across pages), the prices and their publication, API keys' spend caps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from contracts.billing import ChargeTask, JobCostReply
from contracts.identity import RegisterUser, UserProfile
from contracts.jobs import JobPriority
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.billing.service import SERVICE as BILLING
from services.billing.settings import BillingSettings
from tests.conftest import Env
from tests.fixtures import Scenes, Users
from tests.prices import LOCAL_CPU_RATES, TEST_PRICES
from tests.waiting import until

D = Decimal
#: 10 frames of 1920x1080 at the default samples, the default machine and priority.
PARAMETERS = {
    "frame_range": {"start": 1, "end": 10},
    "resolution": {"width": 1920, "height": 1080},
}
SERVICE_ACTOR = Actor(kind="service", id="farm-test")


@pytest.fixture
def costs(client: httpx.AsyncClient, billing: ServiceRuntime[Any]) -> httpx.AsyncClient:
    """The gateway with the job, wallet and billing services behind it."""
    return client


async def estimate(api: httpx.AsyncClient, headers: dict[str, str], body: Any) -> httpx.Response:
    return await api.post("/v1/cost/estimate", json=body, headers=headers)


async def create_job(
    api: httpx.AsyncClient, scenes: Scenes, headers: dict[str, str], **spec: object
) -> str:
    r = await api.post("/v1/jobs", json=await scenes.spec(headers, **spec), headers=headers)
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job_id"]
    return job_id


async def job_cost(
    api: httpx.AsyncClient, headers: dict[str, str], job_id: str, **params: Any
) -> httpx.Response:
    return await api.get(f"/v1/jobs/{job_id}/cost", params=params, headers=headers)


# -- estimates ------------------------------------------------------------------------------


async def test_an_estimate_from_parameters_is_a_range_with_its_assumptions(
    costs: httpx.AsyncClient, users: Users
) -> None:
    r = await estimate(costs, users.new(), {**PARAMETERS, "priority": "high"})
    assert r.status_code == 200, r.text
    body = r.json()
    amounts = [body["low_credits"], body["expected_credits"], body["high_credits"]]
    assert all(isinstance(a, str) for a in amounts)
    low, expected, high = map(D, amounts)
    assert D(0) < low <= expected <= high
    assert body["currency"] == "credits" and body["duration_seconds"] > 0
    assumed = body["assumptions"]
    assert (assumed["frames"], assumed["tasks"], assumed["priority"]) == (10, 10, "high")
    assert assumed["seconds_source"] == "model" and assumed["measured_tasks"] == 0
    assert (assumed["instance_type"], assumed["price_version"]) == ("local-cpu", 1)
    assert D(assumed["price_per_hour_credits"]) == LOCAL_CPU_RATES[JobPriority.high]
    assert D(assumed["seconds_per_frame_low"]) <= D(assumed["seconds_per_frame"])
    cheaper = (await estimate(costs, users.new(), {**PARAMETERS, "priority": "low"})).json()
    assert D(cheaper["expected_credits"]) < expected


BAD_ESTIMATES: dict[str, tuple[Any, str]] = {
    "nothing": ({}, "validation_failed"),
    "no resolution": ({"frame_range": {"start": 1, "end": 10}}, "validation_failed"),
    "both a job and parameters": (
        {"job_id": "job_1", **PARAMETERS},
        "validation_failed",
    ),
    "end before start": (
        {**PARAMETERS, "frame_range": {"start": 10, "end": 1}},
        "invalid_frame_range",
    ),
    "zero chunk size": ({**PARAMETERS, "chunk_size": 0}, "validation_failed"),
    "unknown renderer": ({**PARAMETERS, "renderer": "povray"}, "validation_failed"),
    "an unknown field": ({**PARAMETERS, "discount": "0.5"}, "validation_failed"),
    "a bad job id": ({"job_id": "../etc"}, "validation_failed"),
}


async def test_bad_estimate_requests_are_422_with_a_code(
    costs: httpx.AsyncClient, users: Users
) -> None:
    for case, (body, code) in BAD_ESTIMATES.items():
        r = await estimate(costs, users.new(), body)
        assert r.status_code == 422, case
        assert r.json()["code"] == code, case


async def test_an_estimate_for_a_job_uses_its_parameters_and_only_its_owner_gets_it(
    costs: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job = await create_job(costs, scenes, me)  # 24 frames, 4 per task
    r = await estimate(costs, me, {"job_id": job})
    assert r.status_code == 200, r.text
    assumed = r.json()["assumptions"]
    assert (assumed["frames"], assumed["tasks"]) == (24, 6)
    theirs = await estimate(costs, users.new(), {"job_id": job})
    assert (theirs.status_code, theirs.json()["code"]) == (404, "job_not_found")
    missing = await estimate(costs, me, {"job_id": "job_nope"})
    assert (missing.status_code, missing.json()["code"]) == (404, "job_not_found")


# -- a job's cost ---------------------------------------------------------------------------


async def charge(billing: ServiceRuntime[Any], job_id: str, task: int, seconds: float) -> None:
    await CommandClient(billing.nc, billing.settings).send(
        ChargeTask(
            job_id=job_id,
            render_id=f"{job_id}.full.1",
            task_id=task,
            frames=[task * 4 - 3 + n for n in range(4)],
            worker="farm-w07",
            render_seconds=seconds,
            finished_at=datetime.now(UTC),
        ),
        JobCostReply,
        command_id=f"charge:{job_id}:{task}",
        actor=SERVICE_ACTOR,
    )


async def test_a_jobs_cost_lines_page_and_add_up_to_its_cost(
    costs: httpx.AsyncClient, users: Users, scenes: Scenes, billing: ServiceRuntime[Any]
) -> None:
    user = new_id("usr")
    me = users.headers(user)
    r = await costs.post(
        f"/v1/admin/users/{user}/credits",
        json={"amount_credits": "50.00"},
        headers={**users.new("admin"), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 200, r.text
    job = await create_job(costs, scenes, me)

    async def held() -> Any:
        body = (await job_cost(costs, me, job)).json()
        return body if body["cost_status"] == "held" else None

    body = await until(held)
    assert D(body["held_credits"]) > 0 and body["estimate"]["assumptions"]["frames"] == 24
    assert (body["cap_credits"], body["lines"], body["lines_total"]) == ("150.50", [], 0)
    # At local-cpu's 1 credit/hour (tests/prices.py): 0.025 -> 0.03, 0.0417 -> 0.04, 1.00.
    for task, seconds in ((1, 90.0), (2, 150.0), (3, 3600.0)):
        await charge(billing, job, task, seconds)
    await charge(billing, job, 3, 3600.0)  # said twice: charged once

    async def charged() -> Any:
        body = (await job_cost(costs, me, job, limit=2)).json()
        return body if body["lines_total"] == 3 else None

    first = await until(charged)
    assert (first["job_id"], first["job_status"], first["currency"]) == (
        job,
        "submitted",
        "credits",
    )
    assert "progress_percent" in first and "current_step" in first
    assert len(first["lines"]) == 2 and first["next_cursor"] is not None
    rest = (await job_cost(costs, me, job, limit=2, cursor=first["next_cursor"])).json()
    assert len(rest["lines"]) == 1 and rest["next_cursor"] is None
    assert rest["lines_total"] == 3 and rest["amount_total_credits"] == "1.07"
    lines = first["lines"] + rest["lines"]
    assert [ln["amount_credits"] for ln in lines] == ["0.03", "0.04", "1.00"]
    assert sum(D(ln["amount_credits"]) for ln in lines) == D(first["amount_total_credits"])
    assert D(rest["so_far_credits"]) == D("1.07")
    last = lines[2]
    assert last["line_id"] == f"task:{job}.full.1:3" and last["cause"] == "task"
    assert (last["render_id"], last["task_id"], last["frames"]) == (
        f"{job}.full.1",
        3,
        [9, 10, 11, 12],
    )
    assert (last["worker"], last["instance_type"], last["price_version"]) == (
        "farm-w07",
        "local-cpu",
        1,
    )
    assert D(last["seconds"]) == 3600 and D(last["price_per_hour_credits"]) == 1
    assert last["at"] is not None

    theirs = await job_cost(costs, users.new(), job)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "job_not_found")
    bad = await job_cost(costs, me, job, cursor="!!")
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_cursor")
    too_many = await job_cost(costs, me, job, limit=501)
    assert (too_many.status_code, too_many.json()["code"]) == (422, "validation_failed")


async def test_a_job_billing_has_not_taken_yet_is_pending_with_zeros(
    client: httpx.AsyncClient, users: Users, scenes: Scenes, env: Env
) -> None:
    stopped = await build(BILLING, env.settings(BillingSettings))  # its tables, then away
    await stopped.launch()
    await stopped.stop()
    me = users.new()
    job = await create_job(client, scenes, me)
    r = await job_cost(client, me, job)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["cost_status"], body["estimate"]) == ("pending", None)
    assert body["estimate_unknown_reason"] == "not_estimated_yet"
    assert [body[k] for k in ("so_far_credits", "held_credits", "captured_credits")] == ["0.00"] * 3
    assert (body["lines"], body["lines_total"], body["amount_total_credits"]) == ([], 0, "0.00")
    assert body["cap_credits"] == "150.50" and body["next_cursor"] is None


# -- prices ---------------------------------------------------------------------------------


def price_body(egress: str, effective_from: datetime | None = None) -> dict[str, Any]:
    prices = TEST_PRICES.model_copy(update={"egress_per_gb": D(egress)})
    body: dict[str, Any] = {"prices": prices.model_dump(mode="json")}
    if effective_from is not None:
        body["effective_from"] = effective_from.isoformat()
    return body


async def publish(
    api: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    return await api.post(
        "/v1/admin/prices", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
    )


async def prices_answer(api: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    """get_prices once billing's view shows version 1 (no_prices, 503, until then)."""

    async def answered() -> httpx.Response | None:
        r = await api.get("/v1/prices", headers=headers)
        return r if r.status_code != 503 else None

    found: httpx.Response = await until(answered)
    return found


async def test_admins_publish_prices_and_the_new_version_comes_into_force(
    costs: httpx.AsyncClient, users: Users
) -> None:
    me, admin = users.new(), users.new("admin")
    r = await prices_answer(costs, me)
    assert r.status_code == 200, r.text
    assert r.json()["in_force"]["version"] == 1 and r.json()["next"] is None
    assert D(r.json()["in_force"]["prices"]["egress_per_gb"]) == TEST_PRICES.egress_per_gb

    refused = await publish(costs, me, price_body("0.0100"))
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    r = await publish(costs, admin, price_body("0.1000"))
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2 and r.json()["prices"]["egress_per_gb"] == "0.1000"

    async def in_force(version: int) -> Any:
        body = (await costs.get("/v1/prices", headers=me)).json()
        return body if body["in_force"]["version"] == version else None

    await until(lambda: in_force(2))
    later = datetime.now(UTC) + timedelta(days=30)
    r = await publish(costs, admin, price_body("0.1100", later))
    assert r.status_code == 201, r.text

    async def scheduled() -> Any:
        body = (await costs.get("/v1/prices", headers=me)).json()
        return body if body["next"] is not None else None

    body = await until(scheduled)
    assert (body["in_force"]["version"], body["next"]["version"]) == (2, 3)
    assert datetime.fromisoformat(body["next"]["effective_from"]) == later
    r = await estimate(costs, me, PARAMETERS)
    assert r.json()["assumptions"]["price_version"] == 2


async def test_bad_price_lists_are_refused(costs: httpx.AsyncClient, users: Users) -> None:
    admin = users.new("admin")
    assert (await prices_answer(costs, admin)).json()["in_force"]["version"] == 1
    untiered = price_body("0.1000")
    del untiered["prices"]["instances"][0]["rates"]["urgent"]
    past = price_body("0.1000", datetime.now(UTC) - timedelta(days=1))
    unlisted = price_body("0.1000")
    unlisted["prices"]["default_instance_type"] = "m7.metal"
    for case, body in {
        "a tier unpriced": untiered,
        "in the past": past,
        "default": unlisted,
    }.items():
        r = await publish(costs, admin, body)
        assert (r.status_code, r.json()["code"]) == (422, "validation_failed"), case
    r = await costs.get("/v1/prices", headers=admin)
    assert r.json()["in_force"]["version"] == 1


# -- API keys' spend caps -------------------------------------------------------------------


async def api_key_of(
    api: httpx.AsyncClient, identity: ServiceRuntime[Any], users: Users, email: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """A new approved user's session and a new API key of theirs."""
    profile = await CommandClient(identity.nc, identity.settings).send(
        RegisterUser(email=email, password="a-long-password-1", display_name=email, approved=True),
        UserProfile,
        command_id=new_id("cmd"),
        actor=Actor(kind="cli", id="renderctl"),
    )
    session = users.headers(profile.user_id)
    r = await api.post(
        "/v1/api-keys", json={"name": "mcp", "scopes": ["jobs:read", "jobs:write"]}, headers=session
    )
    assert r.status_code == 201, r.text
    key: dict[str, Any] = r.json()
    return session, key


async def test_a_user_sets_and_reads_their_own_keys_spend_caps(
    api: httpx.AsyncClient,
    identity_service: ServiceRuntime[Any],
    billing: ServiceRuntime[Any],
    users: Users,
) -> None:
    me, key = await api_key_of(api, identity_service, users, "ada@studio.test")
    other, theirs = await api_key_of(api, identity_service, users, "bob@studio.test")
    path = f"/v1/api-keys/{key['key_id']}"
    r = await api.get(f"{path}/spend", headers=me)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "api_key_id": key["key_id"],
        "daily_cap_credits": None,
        "total_cap_credits": None,
        "today_credits": "0.00",
        "total_credits": "0.00",
        "currency": "credits",
    }
    caps = {"daily_cap_credits": "5.00", "total_cap_credits": None}
    r = await api.put(f"{path}/spend-caps", json=caps, headers=me)
    assert r.status_code == 200, r.text
    assert (r.json()["daily_cap_credits"], r.json()["total_cap_credits"]) == ("5.00", None)

    async def capped() -> Any:
        body = (await api.get(f"{path}/spend", headers=me)).json()
        return body if body["daily_cap_credits"] == "5.00" else None

    await until(capped)
    for headers, key_id in ((other, key["key_id"]), (me, theirs["key_id"]), (me, "key_nope")):
        r = await api.put(f"/v1/api-keys/{key_id}/spend-caps", json=caps, headers=headers)
        assert (r.status_code, r.json()["code"]) == (404, "api_key_not_found")
        r = await api.get(f"/v1/api-keys/{key_id}/spend", headers=headers)
        assert (r.status_code, r.json()["code"]) == (404, "api_key_not_found")
    as_key = {"Authorization": f"Bearer {key['secret']}"}
    r = await api.put(f"{path}/spend-caps", json={"daily_cap_credits": None}, headers=as_key)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    for bad in ({"daily_cap_credits": "-1.00"}, {"total_cap_credits": "1.001"}, {"cap": "1"}):
        r = await api.put(f"{path}/spend-caps", json=bad, headers=me)
        assert (r.status_code, r.json()["code"]) == (422, "validation_failed"), bad
    assert (await api.get(f"{path}/spend", headers=me)).json()["daily_cap_credits"] == "5.00"
