"""Accounts through the public API: approval, sessions, refresh rotation, API keys, admin."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from libs.runtime import ServiceRuntime
from services.gateway.service import Gateway
from tests.fixtures import Scenes, admin_session, job_spec

PASSWORD = "a-long-password"


async def register(api: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await api.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": email}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def login(api: httpx.AsyncClient, email: str) -> httpx.Response:
    return await api.post("/v1/auth/login", json={"email": email, "password": PASSWORD})


async def approved_user(
    api: httpx.AsyncClient, admin: dict[str, str], email: str
) -> dict[str, str]:
    user = await register(api, email)
    r = await api.post(f"/v1/admin/users/{user['user_id']}/approve", headers=admin)
    assert r.status_code == 200, r.text
    tokens = (await login(api, email)).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_a_user_can_log_in_only_after_an_admin_approves(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    user = await register(api, "artist@studio.test")
    assert user["status"] == "pending_approval"
    r = await login(api, "artist@studio.test")
    assert (r.status_code, r.json()["code"]) == (403, "user_not_approved")
    pending = (await api.get("/v1/admin/users?status=pending_approval", headers=admin)).json()
    assert [u["user_id"] for u in pending["items"]] == [user["user_id"]]
    approved = await api.post(f"/v1/admin/users/{user['user_id']}/approve", headers=admin)
    assert approved.json()["status"] == "active"
    tokens = (await login(api, "artist@studio.test")).json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in_seconds"] <= 900
    me = await api.get("/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["email"] == "artist@studio.test"


async def test_wrong_password_and_unknown_email_look_the_same(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    await register(api, "a@studio.test")
    wrong = await api.post(
        "/v1/auth/login", json={"email": "a@studio.test", "password": "nope-nope-1"}
    )
    unknown = await api.post(
        "/v1/auth/login", json={"email": "b@studio.test", "password": "nope-nope-1"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
    assert wrong.json()["message"] == unknown.json()["message"]


async def test_a_registered_email_cannot_register_again(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    await register(api, "dup@studio.test")
    r = await api.post(
        "/v1/auth/register",
        json={"email": "DUP@studio.test", "password": PASSWORD, "display_name": "x"},
    )
    assert (r.status_code, r.json()["code"]) == (409, "email_taken")


async def test_reusing_a_refresh_token_revokes_the_session(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    await approved_user(api, admin, "r@studio.test")
    first = (await login(api, "r@studio.test")).json()["refresh_token"]
    second = await api.post("/v1/auth/refresh", json={"refresh_token": first})
    assert second.status_code == 200
    newer = second.json()["refresh_token"]
    assert newer != first
    stolen = await api.post("/v1/auth/refresh", json={"refresh_token": first})
    assert (stolen.status_code, stolen.json()["code"]) == (401, "refresh_token_reused")
    after = await api.post("/v1/auth/refresh", json={"refresh_token": newer})
    assert (after.status_code, after.json()["code"]) == (401, "refresh_token_invalid")


async def test_an_api_key_acts_for_its_user_within_its_scopes_until_revoked(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "mcp@studio.test")
    r = await api.post(
        "/v1/api-keys", json={"name": "mcp-server", "scopes": ["jobs:read"]}, headers=me
    )
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["secret"].startswith(f"rfk_live_{key['key_id']}_")
    listed = (await api.get("/v1/api-keys", headers=me)).json()["items"]
    assert [k["key_id"] for k in listed] == [key["key_id"]] and "secret" not in listed[0]
    as_key = {"Authorization": f"Bearer {key['secret']}"}
    assert (await api.get("/v1/jobs", headers=as_key)).status_code == 200
    assert (await api.get("/v1/jobs", headers={"X-API-Key": key["secret"]})).status_code == 200
    denied = await api.post("/v1/jobs", json=job_spec(), headers=as_key)
    assert (denied.status_code, denied.json()["code"]) == (403, "insufficient_scope")
    no_admin = await api.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["jobs:read"]}, headers=as_key
    )
    assert (no_admin.status_code, no_admin.json()["code"]) == (403, "forbidden")
    forged = key["secret"][:-4] + "AAAA"
    r = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
    assert (r.status_code, r.json()["code"]) == (401, "invalid_api_key")
    revoked = await api.post(f"/v1/api-keys/{key['key_id']}/revoke", headers=me)
    assert revoked.json()["revoked_at"] is not None
    r = await api.get("/v1/jobs", headers=as_key)
    assert (r.status_code, r.json()["code"]) == (401, "api_key_revoked")


async def test_api_key_use_is_recorded_as_last_used(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "use@studio.test")
    key = (
        await api.post("/v1/api-keys", json={"name": "k", "scopes": ["jobs:read"]}, headers=me)
    ).json()
    assert key["last_used_at"] is None
    await api.get("/v1/jobs", headers={"X-API-Key": key["secret"]})
    for _ in range(50):
        [info] = (await api.get("/v1/api-keys", headers=me)).json()["items"]
        if info["last_used_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert info["last_used_at"] is not None


async def test_admin_routes_refuse_ordinary_users(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "plain@studio.test")
    r = await api.get("/v1/admin/users", headers=me)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")


async def test_every_api_call_is_recorded_in_the_action_log(
    api: httpx.AsyncClient,
    gateway: Gateway,
    identity_service: ServiceRuntime[Any],
    scenes: Scenes,
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "log@studio.test")
    created = await api.post("/v1/jobs", json=await scenes.spec(me), headers=me)
    await api.get("/v1/jobs/job_missing", headers=me)
    await api.get("/v1/jobs")
    await gateway.action_log.flush()
    calls = [c.model_dump(mode="json") for c in await gateway.action_log.calls(None, None, 1000)]
    by_op = {(c["operation_id"], c["status_code"]): c for c in calls}
    made = by_op[("create_job", 201)]
    assert made["target_ids"] == {"job_id": created.json()["job_id"]}
    assert made["outcome"] == "succeeded" and made["user_id"] and made["trace_id"]
    missing = by_op[("get_job", 404)]
    assert (missing["outcome"], missing["error_code"]) == ("refused", "job_not_found")
    assert missing["target_ids"] == {"job_id": "job_missing"}
    anonymous = [c for c in calls if c["status_code"] == 401]
    assert anonymous and anonymous[0]["error_code"] == "unauthenticated"
    logins = [c for c in calls if c["operation_id"] == "login_user"]
    assert logins and all(c["latency_ms"] > 0 for c in logins)
    # Admins read it through the API, a page at a time, newest first.
    page = (await api.get("/v1/admin/api-calls?limit=2", headers=admin)).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = await api.get(f"/v1/admin/api-calls?cursor={page['next_cursor']}", headers=admin)
    seen = [c["request_id"] for c in page["items"] + rest.json()["items"]]
    assert len(seen) == len(set(seen)) >= 5
    mine = (await api.get(f"/v1/admin/api-calls?user_id={made['user_id']}", headers=admin)).json()
    assert {c["user_id"] for c in mine["items"]} == {made["user_id"]}
    r = await api.get("/v1/admin/api-calls", headers=me)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")


async def test_revoking_someone_elses_key_is_not_found_even_after_they_revoked_it(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    owner = await approved_user(api, admin, "owner@studio.test")
    other = await approved_user(api, admin, "other@studio.test")
    key = (
        await api.post("/v1/api-keys", json={"name": "k", "scopes": ["jobs:read"]}, headers=owner)
    ).json()
    assert (
        await api.post(f"/v1/api-keys/{key['key_id']}/revoke", headers=owner)
    ).status_code == 200
    r = await api.post(f"/v1/api-keys/{key['key_id']}/revoke", headers=other)
    assert (r.status_code, r.json()["code"]) == (404, "api_key_not_found")
    assert "name" not in r.json()


async def test_identity_secrets_stay_out_of_the_events_published_on_the_bus(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    import orjson

    admin = await admin_session(api, identity_service)
    await approved_user(api, admin, "bus@studio.test")
    relay = identity_service.tailers[0]
    js = identity_service.js
    settings = identity_service.settings
    await relay.catch_up()
    msg = await js.get_last_msg(
        settings.events_stream, settings.subject("events.identity.UserRegistered")
    )
    assert msg.data is not None
    data = orjson.loads(msg.data)["data"]
    assert data["email"] == "bus@studio.test"
    assert data["password_hash"] == "redacted"


async def test_a_job_submitted_with_an_api_key_names_the_key_its_spend_caps_apply_to(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any], scenes: Scenes
) -> None:
    """The gateway passes the caller's API key on (null for a session): billing applies the
    key's spend caps to the job."""
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "farm-bot@studio.test")
    r = await api.post(
        "/v1/api-keys", json={"name": "farm-bot", "scopes": ["jobs:write"]}, headers=me
    )
    assert r.status_code == 201, r.text
    key = r.json()
    by_key = await api.post(
        "/v1/jobs", json=await scenes.spec(me), headers={"X-API-Key": key["secret"]}
    )
    assert by_key.status_code == 201, by_key.text
    by_session = await api.post("/v1/jobs", json=await scenes.spec(me), headers=me)
    assert by_session.status_code == 201, by_session.text
    submitted = []
    for job in (by_key.json(), by_session.json()):
        page = (await api.get(f"/v1/jobs/{job['job_id']}/events", headers=me)).json()
        submitted.append(page["items"][0]["data"]["api_key_id"])
    assert submitted == [key["key_id"], None]
