"""HTTP-level errors keep their status and headers, and the OpenAPI documents every details."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from contracts.errors import ERRORS, ErrorCode
from libs.runtime import ServiceRuntime
from services.gateway.app import create_app
from services.gateway.service import Gateway
from tests.fixtures import Scenes, Users, admin_session, job_spec
from tests.gateway.test_accounts import approved_user


async def test_a_wrong_method_answers_405_with_its_allow_header(
    client: httpx.AsyncClient, users: Users
) -> None:
    r = await client.delete("/v1/jobs", headers=users.new())
    assert (r.status_code, r.json()["code"], r.json()["retryable"]) == (
        405,
        "method_not_allowed",
        False,
    )
    # Starlette names the methods of the first route on the path (GET and POST are two).
    allowed = set(r.headers["allow"].replace(" ", "").split(","))
    assert allowed and allowed <= {"GET", "POST"}


async def test_a_body_over_the_limit_answers_413_payload_too_large(
    gateway: Gateway, job_service: ServiceRuntime[Any], users: Users, scenes: Scenes
) -> None:
    app = create_app(gateway)
    app.max_body_size = 512  # the gateway sets no limit itself; Starlette enforces this one
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        me = users.new()
        body = json.dumps(job_spec(name="x" * 600)).encode()

        # Starlette answers a too-long Content-Length itself (plain text); a streamed body
        # over the limit raises its 413, which the gateway answers.
        async def chunks() -> AsyncIterator[bytes]:
            yield body

        headers = {**me, "content-type": "application/json"}
        r = await client.post("/v1/jobs", content=chunks(), headers=headers)
        assert (r.status_code, r.json()["code"], r.json()["retryable"]) == (
            413,
            "payload_too_large",
            False,
        )
        spec = await scenes.spec(me)
        assert (await client.post("/v1/jobs", json=spec, headers=me)).status_code == 201


async def test_an_expired_api_key_answers_api_key_expired(
    api: httpx.AsyncClient, identity_service: ServiceRuntime[Any]
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "expiring@studio.test")
    expires = datetime.now(UTC) + timedelta(seconds=2)
    r = await api.post(
        "/v1/api-keys",
        json={"name": "ci", "scopes": ["jobs:read"], "expires_at": expires.isoformat()},
        headers=me,
    )
    assert r.status_code == 201, r.text
    key = r.json()
    as_key = {"X-API-Key": key["secret"]}
    assert (await api.get("/v1/jobs", headers=as_key)).status_code == 200
    # The gateway now holds the key in its per-process cache; expiry is still checked
    # against the clock on every request.
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    r = await api.get("/v1/jobs", headers=as_key)
    assert (r.status_code, r.json()["code"], r.json()["retryable"]) == (
        401,
        "api_key_expired",
        False,
    )


async def test_the_openapi_documents_the_details_schema_of_every_declared_code(
    gateway: Gateway,
) -> None:
    spec = gateway.app.openapi()
    schemas = spec["components"]["schemas"]
    for cls in ERRORS:
        if cls.Details is not None:
            assert cls.Details.__name__ in schemas, cls.code
    assert schemas["ErrorBody"]["properties"]["code"]["$ref"].endswith("/ErrorCode")
    assert schemas["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    seen = set()
    for path in spec["paths"].values():
        for op in path.values():
            for status, response in op["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                for code, details in response["x-error-details"].items():
                    found = ERRORS.get(code)
                    assert found is not None and str(found.http_status) == status, (code, status)
                    assert f"`{code}`" in response["description"]
                    if found.Details is None:
                        assert details == {"type": "null"}
                    else:
                        name = details["$ref"].removeprefix("#/components/schemas/")
                        assert name == found.Details.__name__ and name in schemas
                    seen.add(code)
    get_job = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["404"]
    assert get_job["x-error-details"] == {"job_not_found": {"$ref": "#/components/schemas/JobRef"}}
    assert {"job_limit_reached", "insufficient_scope", "rate_limited", "job_cancelling"} <= seen
