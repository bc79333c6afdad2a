"""Property: whatever string a client puts in any text field of a public route, the answer
is never a 5xx, and a 4xx always has the one error shape with a known code.

Strings are arbitrary Unicode plus the hostile ones (NUL, other controls, lone surrogates
escaped in JSON, very long strings, path traversal). They go through the real in-process
gateway, identity, job and upload services, so a string that passes validation reaches
PostgreSQL: new jobs name a real completed upload.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import ERRORS
from libs.runtime import ServiceRuntime, build
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from services.job import service as job_service_
from services.job.settings import JobSettings
from tests.conftest import Env
from tests.fixtures import SCENE_ID, Scenes, Users, job_spec

EXAMPLES = 30
ERROR_FIELDS = {"code", "message", "retryable", "details", "trace_id"}
HOSTILE = [
    "",
    "\x00",
    "a\x00b",
    "\x01\x02\x1f\x7f\x85",
    "tab\there",
    "line\nbreak",
    "cr\rlf",
    "\ud800",
    "a\udfffb",
    "\ufffe\uffff",
    "😀" * 100,
    "x" * 5000,
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "a//b",
    "a\\b",
    "scenes/../../x",
    "%00",
    "' OR 1=1 --",
    "${jndi:ldap://x}",
]
TEXT = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=300),
    # Any code point, surrogates included (sent as \\uXXXX escapes in the JSON).
    st.text(st.characters(codec=None, exclude_categories=()), max_size=50),
    st.text(st.characters(max_codepoint=0x9F), max_size=50),  # ASCII, controls, C1
    st.text(st.sampled_from("a./\\\x00"), max_size=20),  # path-ish
)


@pytest.fixture
def gateway_settings(env: Env) -> GatewaySettings:
    """No rate limits in the way: every example must reach the services."""
    return env.settings(
        GatewaySettings,
        rate_limit_ip_per_second=10_000,
        rate_limit_ip_burst=10_000,
        rate_limit_user_per_second=10_000,
        rate_limit_user_burst=10_000,
    )


@pytest.fixture
async def job_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    """No active-job limit in the way: one user creates every example's job."""
    rt = await build(job_service_.SERVICE, env.settings(JobSettings, active_job_limit=100_000))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def raw(
    gateway: Gateway, job_service: ServiceRuntime[Any], identity_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """The API, answering a 500 as a response instead of raising the app's exception."""
    transport = httpx.ASGITransport(app=gateway.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    body: object = None
    params: dict[str, str] | None = None
    auth: bool = True


def segment(text: str) -> str:
    """``text`` as one URL path segment (surrogates percent-encoded as their raw bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


_n = itertools.count()


def unique_email() -> str:
    return f"prop{next(_n)}@studio.test"


#: Every text field of every public route: field name -> (job id -> request).
FIELDS: dict[str, Callable[[str, str], Call]] = {
    "register.email": lambda t, _: Call(
        "POST",
        "/v1/auth/register",
        {"email": t, "password": "long-enough-1", "display_name": "Ada"},
        auth=False,
    ),
    "register.password": lambda t, _: Call(
        "POST",
        "/v1/auth/register",
        {"email": unique_email(), "password": t, "display_name": "Ada"},
        auth=False,
    ),
    "register.display_name": lambda t, _: Call(
        "POST",
        "/v1/auth/register",
        {"email": unique_email(), "password": "long-enough-1", "display_name": t},
        auth=False,
    ),
    "login.email": lambda t, _: Call(
        "POST", "/v1/auth/login", {"email": t, "password": "whatever"}, auth=False
    ),
    "login.password": lambda t, _: Call(
        "POST", "/v1/auth/login", {"email": "ada@studio.test", "password": t}, auth=False
    ),
    "refresh.refresh_token": lambda t, _: Call(
        "POST", "/v1/auth/refresh", {"refresh_token": t}, auth=False
    ),
    "create_job.name": lambda t, _: Call("POST", "/v1/jobs", job_spec(name=t)),
    "create_job.scene_id": lambda t, _: Call("POST", "/v1/jobs", job_spec(scene_id=t)),
    "create_job.camera": lambda t, _: Call(
        "POST", "/v1/jobs", job_spec(render_settings={"camera": t})
    ),
    "create_job.cost_cap_credits": lambda t, _: Call(
        "POST", "/v1/jobs", job_spec(cost_cap_credits=t)
    ),
    "update_job.name": lambda t, job: Call("PATCH", f"/v1/jobs/{job}", {"name": t}),
    "update_job.camera": lambda t, job: Call(
        "PATCH", f"/v1/jobs/{job}", {"render_settings": {"camera": t}}
    ),
    "cancel_job.reason": lambda t, job: Call("POST", f"/v1/jobs/{job}/cancel", {"reason": t}),
    "create_api_key.name": lambda t, _: Call(
        "POST", "/v1/api-keys", {"name": t, "scopes": ["jobs:read"]}
    ),
    "get_job.job_id": lambda t, _: Call("GET", f"/v1/jobs/{segment(t)}"),
    "revoke_api_key.key_id": lambda t, _: Call("POST", f"/v1/api-keys/{segment(t)}/revoke"),
    "list_jobs.cursor": lambda t, _: Call("GET", "/v1/jobs", params={"cursor": t}),
    "list_jobs.status": lambda t, _: Call("GET", "/v1/jobs", params={"status": t}),
    "list_job_events.cursor": lambda t, job: Call(
        "GET", f"/v1/jobs/{job}/events", params={"cursor": t}
    ),
    "list_job_frames.cursor": lambda t, job: Call(
        "GET", f"/v1/jobs/{job}/frames", params={"cursor": t}
    ),
}
GROUPS = {
    "auth": [f for f in FIELDS if f.split(".")[0] in ("register", "login", "refresh")],
    "job_bodies": [f for f in FIELDS if f.startswith(("create_job", "update_job", "cancel"))],
    "paths_and_queries": [
        f for f in FIELDS if f.startswith(("get_job", "revoke", "list", "create_api_key"))
    ],
}
assert sorted(itertools.chain(*GROUPS.values())) == sorted(FIELDS)


def check(call: Call, r: httpx.Response) -> None:
    assert r.status_code < 500, f"{call}: {r.status_code} {r.text}"
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == ERROR_FIELDS, (call, body)
        cls = ERRORS.get(body["code"])
        assert cls is not None and cls.http_status == r.status_code, (call, body)
        assert isinstance(body["message"], str) and isinstance(body["retryable"], bool)


@pytest.mark.parametrize("group", sorted(GROUPS))
async def test_no_string_in_any_text_field_makes_the_api_fail(
    raw: httpx.AsyncClient, users: Users, scenes: Scenes, group: str
) -> None:
    loop = asyncio.get_running_loop()
    me = users.new()
    scene_id = await scenes.of(me)
    r = await raw.post("/v1/jobs", json=job_spec(scene_id=scene_id), headers=me)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]

    async def send(call: Call) -> None:
        body = call.body
        if isinstance(body, dict) and body.get("scene_id") == SCENE_ID:
            body = {**body, "scene_id": scene_id}  # the caller's real upload
        headers = {**(me if call.auth else {}), "content-type": "application/json"}
        content = None if body is None else json.dumps(body).encode()  # \\ud800 escapes
        query = call.params
        if query is not None:
            url = httpx.URL(call.url).copy_with(
                query="&".join(
                    f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
                    for k, v in query.items()
                ).encode()
            )
            r = await raw.request(call.method, url, content=content, headers=headers)
        else:
            r = await raw.request(call.method, call.url, content=content, headers=headers)
        check(call, r)

    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    def explore(field: str) -> None:
        make = FIELDS[field]

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(text=TEXT)
        def property_holds(text: str) -> None:
            run(send(make(text, job_id)))

        property_holds()

    for field in GROUPS[group]:
        # Hypothesis drives each example from a thread; the request runs on this loop.
        await asyncio.to_thread(explore, field)
