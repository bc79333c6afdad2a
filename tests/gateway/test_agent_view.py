"""The agent's view of the API: every route declares who may call it, ``GET /v1/openapi.json``
answers only what the caller's credentials allow, and an MCP server generated from a key's
view (fastmcp, as an agent builder makes one) can call every tool it has."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import httpx2
import jsonschema  # type: ignore[import-untyped]
import pytest
from fastapi import APIRouter, FastAPI
from fastmcp import Client, FastMCP
from fastmcp.server.providers.openapi import MCPType
from fastmcp.utilities.openapi.models import HTTPRoute

import tests.notifier.conftest as notifier_fixtures
import tests.payments.conftest as payment_fixtures
from contracts.identity import ApiKeySecret, CreateApiKey, RegisterUser, Scope, UserProfile
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.gateway.access import Access, declared, open_paths, requires
from services.gateway.service import Gateway
from tests.fixtures import Users, admin_session
from tests.notifier.conftest import Receiver
from tests.payments.conftest import StandIn
from tests.upload.protocol import put_part
from tests.upload.rendering import frame_bytes, render
from tests.waiting import until

# The Razorpay stand-in and the payments service, for the payment tools.
razorpay = payment_fixtures.razorpay
notifier = notifier_fixtures.notifier
notifier_settings = notifier_fixtures.notifier_settings
receiver = notifier_fixtures.receiver
payments_settings = payment_fixtures.payments_settings
payments_service = payment_fixtures.payments_service
gateway_settings = payment_fixtures.gateway_settings

PUBLIC_OPS = {"register_user", "login_user", "refresh_session"}
ADMIN_OPS = {
    "list_users",
    "approve_user",
    "list_api_calls",
    "list_fleet_vms",
    "get_fleet_usage",
    "admin_list_jobs",
    "admin_list_stuck_jobs",
    "admin_kill_job",
    "suspend_user",
    "reactivate_user",
    "admin_queues",
    "admin_dead_letters",
    "admin_quarantine",
    "admin_retry_quarantine",
    "grant_credits",
    "publish_prices",
}
SESSION_OPS = {
    "create_api_key",
    "list_api_keys",
    "revoke_api_key",
    "set_api_key_spend_caps",
    "get_api_key_spend",
}
SIGNED_OPS = {"receive_payment_webhook"}
#: Server-Sent Events (``x-rf-stream``): in the full spec only; no tool of them would return.
STREAM_OPS = {"stream_events"}
SYSTEM = Actor(kind="cli", id="renderctl")


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: op
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }


async def caller_spec(gateway: Gateway, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as c:
        r = await c.get("/v1/openapi.json", headers=headers)
    assert r.status_code == 200, r.text
    spec: dict[str, Any] = r.json()
    return spec


def key_may_call(extensions: dict[str, Any], scopes: set[str]) -> bool:
    """The static rule documented for generators: an API key may call an operation whose
    x-rf-access is authenticated or scope, if it holds every scope in x-rf-scopes, unless it
    is a stream (x-rf-stream), which no tool can wrap."""
    access, needs = extensions["x-rf-access"], set(extensions["x-rf-scopes"])
    stream = bool(extensions.get("x-rf-stream"))
    return access in ("authenticated", "scope") and needs <= scopes and not stream


async def api_key(identity: ServiceRuntime[Any], user_id: str, *scopes: Scope) -> dict[str, str]:
    commands = CommandClient(identity.nc, identity.settings)
    key = await commands.send(
        CreateApiKey(user_id=user_id, name="agent", scopes=list(scopes)),
        ApiKeySecret,
        command_id=new_id("cmd"),
        actor=SYSTEM,
    )
    return {"X-API-Key": key.secret}


async def agent_user(identity: ServiceRuntime[Any]) -> str:
    commands = CommandClient(identity.nc, identity.settings)
    profile = await commands.send(
        RegisterUser(
            email=f"{new_id('agent').lower()}@studio.test",
            password="agent-password-1",
            display_name="Agent",
            approved=True,
        ),
        UserProfile,
        command_id=new_id("cmd"),
        actor=SYSTEM,
    )
    return profile.user_id


# -- the declarations -------------------------------------------------------------------


async def test_every_route_declares_who_may_call_it_and_the_openapi_tags_it(
    gateway: Gateway,
) -> None:
    routes = list(declared(gateway.app.routes))  # refuses a route that declares nothing
    documented = {r.operation_id: req for _, r, req in routes if r.include_in_schema}
    ops = operations(gateway.app.openapi())
    assert set(documented) == set(ops)
    for op_id, op in ops.items():
        requirement = documented[op_id]
        assert op["x-rf-access"] == requirement.access.value, op_id
        assert op["x-rf-scopes"] == ([requirement.scope.value] if requirement.scope else [])
        if requirement.access in (Access.public, Access.signed):
            assert op["security"] == [], op_id
    by_access = {a: {o for o, op in ops.items() if op["x-rf-access"] == a} for a in Access}
    assert by_access[Access.public] == PUBLIC_OPS
    assert by_access[Access.admin] == ADMIN_OPS
    assert by_access[Access.session] == SESSION_OPS
    assert by_access[Access.signed] == SIGNED_OPS
    assert by_access[Access.authenticated] == {"get_current_user", "get_prices"}


def test_a_route_that_declares_nothing_is_refused_when_the_app_is_made() -> None:
    forgotten, open_thing = APIRouter(), APIRouter()

    @forgotten.get("/v1/forgotten", operation_id="get_forgotten")
    async def get_forgotten() -> dict[str, str]:
        return {}

    @open_thing.get("/v1/open/{thing}", dependencies=[requires(Access.public)])
    async def get_open_thing(thing: str) -> dict[str, str]:
        return {}

    for router, refusal in (
        (forgotten, "/v1/forgotten declares no requirement"),
        (open_thing, "no path parameters"),
    ):
        app = FastAPI()
        app.include_router(router)
        with pytest.raises(RuntimeError, match=refusal):
            open_paths(app.routes)


# -- the per-caller OpenAPI --------------------------------------------------------------


async def test_each_caller_gets_the_operations_its_credentials_allow(
    api: httpx.AsyncClient, gateway: Gateway, identity_service: ServiceRuntime[Any], users: Users
) -> None:
    full = operations(gateway.app.openapi())
    everyone = set(full)
    anonymous = await caller_spec(gateway, {})
    assert set(operations(anonymous)) == PUBLIC_OPS
    user = await caller_spec(gateway, users.new())
    assert set(operations(user)) == everyone - ADMIN_OPS - SIGNED_OPS - STREAM_OPS
    admin = await caller_spec(gateway, await admin_session(api, identity_service))
    assert set(operations(admin)) == everyone - STREAM_OPS

    owner = await agent_user(identity_service)
    for scopes in ({Scope.jobs_read}, {Scope.jobs_write}, {Scope.jobs_read, Scope.jobs_write}):
        key = await api_key(identity_service, owner, *scopes)
        seen = operations(await caller_spec(gateway, key))
        held = {s.value for s in scopes}
        assert set(seen) == {o for o, op in full.items() if key_may_call(op, held)}, scopes
        assert not set(seen) & (ADMIN_OPS | SESSION_OPS | PUBLIC_OPS | SIGNED_OPS)
        assert all(set(op["x-rf-scopes"]) <= held for op in seen.values())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as c:
        # Who may call is checked before the body: a read-only key learns that first.
        reader = await api_key(identity_service, owner, Scope.jobs_read)
        r = await c.post("/v1/jobs", json={"name": 1}, headers=reader)
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text
    # Only the schemas the operations use: none of the admin pages.
    assert "UserPage" not in (await caller_spec(gateway, key))["components"]["schemas"]
    assert "UserPage" in gateway.app.openapi()["components"]["schemas"]

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as c:
        bad = await c.get("/v1/openapi.json", headers={"Authorization": "Bearer nope"})
        full_doc = await c.get("/openapi.json")
    assert bad.status_code == 401 and bad.json()["code"] == "invalid_token"
    assert set(operations(full_doc.json())) == everyone  # the full document, for people


async def test_a_generator_filtering_the_full_spec_statically_gets_the_same_tools(
    gateway: Gateway, identity_service: ServiceRuntime[Any]
) -> None:
    """x-rf-access and x-rf-scopes let a generator cut the full document itself."""
    owner = await agent_user(identity_service)
    held = {Scope.jobs_read.value}
    key = await api_key(identity_service, owner, Scope.jobs_read)

    def only_the_keys(route: HTTPRoute, mcp_type: MCPType) -> MCPType | None:
        return None if key_may_call(route.extensions, held) else MCPType.EXCLUDE

    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gateway", headers=key
    )
    static = FastMCP.from_openapi(
        openapi_spec=gateway.app.openapi(),
        client=http,
        route_map_fn=only_the_keys,
        name="render-farm",
    )
    async with Client(static) as mcp:
        static_tools = {t.name for t in await mcp.list_tools()}
    assert static_tools == set(operations(await caller_spec(gateway, key)))


# -- every tool of a key's MCP server ------------------------------------------------------


Call = Callable[..., Awaitable[dict[str, Any]]]


class Agent:
    """An MCP client on a server generated from the key's own OpenAPI; every call must
    succeed with an answer that validates against the tool's output schema."""

    def __init__(self, gateway: Gateway, key: dict[str, str]) -> None:
        self.gateway, self.key = gateway, key
        self.called: set[str] = set()
        self.listed: set[str] = set()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Call]:
        """The agent's MCP session: ``call(tool, **arguments)`` answers the structured
        content; the tools listed are in ``listed``."""
        spec = await caller_spec(self.gateway, self.key)
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.gateway.app),
            base_url="http://gateway",
            headers=self.key,
        )
        server = FastMCP.from_openapi(openapi_spec=spec, client=http, name="render-farm")
        async with Client(server) as mcp:
            listed = {t.name: t for t in await mcp.list_tools()}
            self.listed = set(listed)

            async def call(name: str, /, **args: Any) -> dict[str, Any]:
                result = await mcp.call_tool(name, args, raise_on_error=False)
                assert not result.is_error, (name, result.content)
                body: dict[str, Any] | None = result.structured_content
                assert body is not None, name
                jsonschema.validate(body, listed[name].output_schema)
                self.called.add(name)
                return body

            yield call


async def send_file(call: Call, upload_id: str, data: bytes) -> None:
    """One part to the store through a URL the agent asked for, then completed."""
    sha = hashlib.sha256(data).hexdigest()
    urls = await call(
        "create_upload_part_urls", upload_id=upload_id, parts=[{"part_number": 1, "sha256": sha}]
    )
    assert await put_part(urls["urls"][0], data) == 200
    await call("list_upload_parts", upload_id=upload_id)
    done = await call("complete_upload", upload_id=upload_id)
    assert done["status"] == "completed"


@pytest.mark.usefixtures("billing", "payments_service", "notifier")
async def test_a_keys_mcp_server_has_only_tools_it_may_call_and_every_one_succeeds(
    gateway: Gateway,
    job_service: ServiceRuntime[Any],
    identity_service: ServiceRuntime[Any],
    upload_api: httpx.AsyncClient,
    s3: S3Client,
    s3_settings: S3Settings,
    razorpay: StandIn,
    receiver: Receiver,
) -> None:
    owner = await agent_user(identity_service)
    writer = Agent(
        gateway, await api_key(identity_service, owner, Scope.jobs_read, Scope.jobs_write)
    )
    scene = b"RFSCENE-v1 " + new_id("scene").encode() * 1000
    asset = b"texture " + new_id("asset").encode() * 100
    async with writer.session() as call:
        assert not writer.listed & (ADMIN_OPS | SESSION_OPS | PUBLIC_OPS | SIGNED_OPS)
        assert "stream_events" not in writer.listed  # a stream is no tool: full spec only
        me = await call("get_current_user")
        assert me["user_id"] == owner
        await call("get_prices")
        await call("get_wallet")
        await call("list_wallet_transactions")
        await receiver.start()
        hook = await call(
            "create_webhook", url=receiver.url("/ok/agent"), kinds=["payment.succeeded"]
        )
        assert hook["secret"].startswith("whsec_")
        await call("list_webhooks")
        prefs = await call(
            "set_notification_preferences", kinds={"render.completed": {"email": False}}
        )
        assert prefs["kinds"]["render.completed"]["email"] is False
        await call("get_notification_preferences")

        sha = hashlib.sha256(scene).hexdigest()
        upload = await call(
            "create_upload", file_name="shot_010.blend", size_bytes=len(scene), sha256=sha
        )
        await call("get_upload", upload_id=upload["upload_id"])
        await send_file(call, upload["upload_id"], scene)
        await call("list_uploads")
        spare_sha = hashlib.sha256(b"spare").hexdigest()
        spare = await call("create_upload", file_name="spare.blend", size_bytes=5, sha256=spare_sha)
        assert (await call("abort_upload", upload_id=spare["upload_id"]))["status"] == "aborted"

        files = [
            {"path": "shot_020.blend", "size_bytes": len(scene), "sha256": sha},
            {
                "path": "tex/wood.png",
                "size_bytes": len(asset),
                "sha256": hashlib.sha256(asset).hexdigest(),
            },
        ]
        manifest = await call("create_manifest", main_file="shot_020.blend", files=files)
        for missing in manifest["missing"]:
            data = scene if missing["sha256"] == sha else asset
            await send_file(call, missing["upload_id"], data)
        await call("get_manifest", manifest_id=manifest["manifest_id"])
        complete = await call("complete_manifest", manifest_id=manifest["manifest_id"])
        assert complete["status"] == "complete"

        job = await call(
            "create_job",
            name="agent shot",
            scene_id=upload["upload_id"],
            frame_range={"start": 1, "end": 10},
            resolution={"width": 640, "height": 360},
            start_full_render=False,
            **{"Idempotency-Key": "agent-job-1"},
        )
        job_id = job["job_id"]
        await call("get_job", job_id=job_id)
        await call("list_jobs")
        await call("update_job", job_id=job_id, name="agent shot v2")
        await call(
            "estimate_cost", frame_range={"start": 1, "end": 10}, resolution=job["resolution"]
        )
        await call("estimate_cost", job_id=job_id)
        tested = await call("start_test_render", job_id=job_id)
        assert tested["test_render"]["status"] == "requested"
        await call("start_full_render", job_id=job_id)
        for page in ("list_job_events", "list_job_frames", "list_job_outputs", "get_job_cost"):
            body = await call(page, job_id=job_id)
            assert body["job_id"] == job_id and "progress_percent" in body, page
        assert (await call("cancel_job", job_id=job_id))["status"] in ("cancelled", "cancelling")

        rendered = await render(
            job_service, s3, s3_settings.s3_outputs_bucket, owner, {1: frame_bytes(1)}
        )

        async def recorded() -> dict[str, Any] | None:
            page = await call("list_job_outputs", job_id=rendered)
            return page["items"][0] if page["items"] else None

        frame = await until(recorded, "the rendered frame recorded as an output")
        url = await call("create_output_download_url", output_id=frame["output_id"])
        assert url["output_id"] == frame["output_id"]

        order = await call(
            "create_payment_order", amount_paise=50_000, **{"Idempotency-Key": "agent-topup-1"}
        )
        await call("list_payment_orders")
        await call("get_payment_order", order_id=order["order_id"])
        async with razorpay.client() as standin:
            r = await standin.post(f"/_test/orders/{order['order_id']}/pay", json={})
            assert r.status_code == 200, r.text
            paid = r.json()
        verified = await call(
            "verify_payment",
            **{
                k: paid[k]
                for k in ("razorpay_order_id", "razorpay_payment_id", "razorpay_signature")
            },
        )
        assert verified["status"] in ("paid", "credited")

        async def notified() -> dict[str, Any] | None:
            page = await call("list_notifications")
            return page if page["items"] else None

        told = await until(notified, "the payment's notification", timeout=60)
        await call("mark_notification_read", notification_id=told["items"][0]["notification_id"])
        await call("mark_all_notifications_read")

        async def delivered() -> dict[str, Any] | None:
            page = await call("list_webhook_deliveries", endpoint_id=hook["endpoint_id"])
            return page if page["items"] else None

        deliveries = await until(delivered, "the payment's webhook delivery", timeout=60)
        delivery_id = deliveries["items"][0]["delivery_id"]
        await call("replay_webhook_delivery", delivery_id=delivery_id)
        await call("rotate_webhook_secret", endpoint_id=hook["endpoint_id"])
    assert writer.called == writer.listed - {"delete_webhook"}

    reader = Agent(gateway, await api_key(identity_service, owner, Scope.jobs_read))
    async with reader.session() as call:
        assert "create_job" not in reader.listed and "get_job" in reader.listed
        await call("get_current_user")
        await call("get_prices")
        await call("get_wallet")
        await call("list_wallet_transactions")
        await call("list_uploads")
        await call("get_upload", upload_id=upload["upload_id"])
        await call("list_upload_parts", upload_id=upload["upload_id"])
        await call("get_manifest", manifest_id=manifest["manifest_id"])
        await call("list_jobs")
        await call("get_job", job_id=job_id)
        for page in ("list_job_events", "list_job_frames", "list_job_outputs", "get_job_cost"):
            await call(page, job_id=job_id)
        await call("estimate_cost", job_id=job_id)
        await call("create_output_download_url", output_id=frame["output_id"])
        await call("list_payment_orders")
        await call("get_payment_order", order_id=order["order_id"])
        await call("list_webhooks")
        await call("get_notification_preferences")
        await call("list_webhook_deliveries", endpoint_id=hook["endpoint_id"])
        await call("list_notifications")
        await call("mark_notification_read", notification_id=told["items"][0]["notification_id"])
        await call("mark_all_notifications_read")
    assert reader.called == reader.listed
    async with writer.session() as call:  # the writer's endpoint, gone at the end
        await call("delete_webhook", endpoint_id=hook["endpoint_id"])
    assert writer.called == writer.listed
