"""The auth middleware refuses every bad credential with a 401 and a code."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt

from services.gateway.settings import GatewaySettings
from tests.fixtures import Users


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def code_of(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, str]:
    r = await client.get("/v1/jobs", headers=headers)
    return r.status_code, r.json()["code"]


async def test_no_credentials_is_401_unauthenticated(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/jobs")
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_an_expired_token_is_refused(client: httpx.AsyncClient, users: Users) -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    assert await code_of(client, users.headers("usr_x", now=old)) == (401, "token_expired")


async def test_a_tampered_token_is_refused(client: httpx.AsyncClient, users: Users) -> None:
    token = users.new()["Authorization"].split()[1]
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = f"{header}.{b64(claims)}.{sig}"
    assert await code_of(client, {"Authorization": f"Bearer {forged}"}) == (401, "invalid_token")


def signed(settings: GatewaySettings, **changes: object) -> str:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "sub": "usr_x",
        "role": "user",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(changes)
    key = settings.jwt_keys[settings.jwt_active_kid]
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": "k1", "typ": "at+jwt"})


async def test_a_token_for_another_audience_or_issuer_is_refused(
    client: httpx.AsyncClient, gateway_settings: GatewaySettings
) -> None:
    for changes in ({"aud": "someone-else"}, {"iss": "someone-else"}):
        token = signed(gateway_settings, **changes)
        assert await code_of(client, {"Authorization": f"Bearer {token}"}) == (401, "invalid_token")


async def test_a_token_missing_a_required_claim_is_refused(
    client: httpx.AsyncClient, gateway_settings: GatewaySettings
) -> None:
    token = signed(gateway_settings)
    claims = jwt.decode(token, options={"verify_signature": False})
    del claims["jti"]
    key = gateway_settings.jwt_keys["k1"]
    token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": "k1", "typ": "at+jwt"})
    assert await code_of(client, {"Authorization": f"Bearer {token}"}) == (401, "invalid_token")


async def test_an_unsigned_alg_none_token_is_refused(client: httpx.AsyncClient) -> None:
    now = int(datetime.now(UTC).timestamp())
    header = b64({"alg": "none", "typ": "at+jwt", "kid": "k1"})
    payload = b64({"sub": "usr_x", "role": "admin", "iat": now, "exp": now + 600, "jti": "x"})
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert await code_of(client, {"Authorization": f"Bearer {token}"}) == (401, "invalid_token")


async def test_a_token_signed_with_a_retired_or_unknown_key_is_refused(
    client: httpx.AsyncClient, gateway_settings: GatewaySettings
) -> None:
    token = jwt.encode(
        {"sub": "x"}, "k" * 40, algorithm="HS256", headers={"kid": "nope", "typ": "at+jwt"}
    )
    assert await code_of(client, {"Authorization": f"Bearer {token}"}) == (401, "invalid_token")


async def test_a_token_signed_with_the_next_key_is_accepted_for_rotation(
    client: httpx.AsyncClient, gateway_settings: GatewaySettings
) -> None:
    rotated = gateway_settings.model_copy(update={"jwt_active_kid": "k0"})
    from libs.auth import issue_access_token

    token = issue_access_token(rotated, "usr_rotated", "user")
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


async def test_a_malformed_api_key_is_refused(client: httpx.AsyncClient) -> None:
    assert await code_of(client, {"X-API-Key": "rfk_live_garbage"}) == (401, "invalid_api_key")


async def test_too_many_requests_get_429_with_retry_after_and_a_code(
    env: object, job_service: object, gateway_settings: GatewaySettings, users: Users
) -> None:
    from libs.runtime import build
    from services.gateway.service import SERVICE

    settings = gateway_settings.model_copy(
        update={"rate_limit_user_per_second": 0.01, "rate_limit_user_burst": 3}
    )
    rt = await build(SERVICE, settings)
    await rt.launch()
    try:
        transport = httpx.ASGITransport(app=rt.wired.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            me, other = users.new(), users.new()
            statuses = [(await client.get("/v1/jobs", headers=me)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            r = await client.get("/v1/jobs", headers=me)
            assert r.json()["code"] == "rate_limited" and r.json()["retryable"] is True
            assert int(r.headers["Retry-After"]) >= 1
            assert (await client.get("/v1/jobs", headers=other)).status_code == 200
    finally:
        await rt.stop()
