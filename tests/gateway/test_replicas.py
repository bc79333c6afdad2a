"""Two gateway processes on one Redis prefix, database and bus: what each keeps per process
(rate-limit leases, API keys) still holds across both.

The two "processes" are two gateway runtimes in this test process, each with its own
connections, caches and limiter (exactly what a worker process has).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from libs.runtime import ServiceRuntime, build
from services.gateway.service import SERVICE, Gateway
from services.gateway.settings import GatewaySettings
from tests.fixtures import Users, admin_session
from tests.gateway.test_accounts import approved_user


@asynccontextmanager
async def gateway_client(
    settings: GatewaySettings,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    rt = await build(SERVICE, settings)
    await rt.launch()
    try:
        transport = httpx.ASGITransport(app=rt.wired.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield rt.wired, client
    finally:
        await rt.stop()


async def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(
    api: httpx.AsyncClient,
    gateway: Gateway,
    gateway_settings: GatewaySettings,
    identity_service: ServiceRuntime[Any],
) -> None:
    admin = await admin_session(api, identity_service)
    me = await approved_user(api, admin, "replicas@studio.test")
    key = (
        await api.post("/v1/api-keys", json={"name": "k", "scopes": ["jobs:read"]}, headers=me)
    ).json()
    as_key = {"X-API-Key": key["secret"]}
    async with gateway_client(gateway_settings) as (_, other):
        for client in (api, other):  # both now hold the key in their caches
            assert (await client.get("/v1/jobs", headers=as_key)).status_code == 200
        r = await api.post(f"/v1/api-keys/{key['key_id']}/revoke", headers=me)
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        pending = {"this": api, "other": other}
        while pending and time.monotonic() - revoked_at < 1.0:
            for name, client in list(pending.items()):
                r = await client.get("/v1/jobs", headers=as_key)
                if r.status_code == 401:
                    assert r.json()["code"] == "api_key_revoked"
                    del pending[name]
            await asyncio.sleep(0.02)
        assert not pending, f"still accepted after 1 s by {sorted(pending)}"


async def test_two_gateways_never_admit_more_than_the_shared_bucket_holds(
    job_service: ServiceRuntime[Any], gateway_settings: GatewaySettings, users: Users
) -> None:
    burst, lease = 30, 10
    settings = gateway_settings.model_copy(
        update={
            "rate_limit_user_per_second": 0.01,  # no refill during the test
            "rate_limit_user_burst": burst,
            "rate_limit_lease_tokens": lease,
            # A lease outlives the test: an unused leased token is dropped at expiry (never
            # returned), which on a slow machine would under-admit and hide the count.
            "rate_limit_lease_seconds": 120.0,
        }
    )
    me = users.new()
    async with gateway_client(settings) as (a, ca), gateway_client(settings) as (b, cb):
        statuses: list[int] = []
        for i in range(100):
            r = await (ca if i % 2 else cb).get("/v1/jobs", headers=me)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["code"] == "rate_limited"
                assert int(r.headers["Retry-After"]) >= 1
        # Every token admitted was leased from the shared bucket first: no over-admission
        # without refill (with refill, at most 2 x (lease - 1) beyond it in any window).
        assert statuses.count(200) == burst
        assert set(statuses) == {200, 429}
        # Leases, not a Redis round trip per request (refusals are remembered locally).
        assert a.limiter.leases + b.limiter.leases <= burst // lease + 4


async def test_concurrent_requests_share_one_lease(
    job_service: ServiceRuntime[Any], gateway_settings: GatewaySettings, users: Users
) -> None:
    settings = gateway_settings.model_copy(update={"rate_limit_lease_tokens": 10})
    me = users.new()
    async with gateway_client(settings) as (gw, client):
        rs = await asyncio.gather(*(client.get("/v1/jobs", headers=me) for _ in range(20)))
        assert {r.status_code for r in rs} == {200}
        assert gw.limiter.leases <= 4
