"""An MCP client generated from our OpenAPI (fastmcp) can drive the API.

Every tool is named after its operationId, every input is described, and every structured
answer validates against the tool's declared output schema (fastmcp's client checks it).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import httpx2
import jsonschema  # type: ignore[import-untyped]
from fastmcp import Client, FastMCP

from libs.runtime import ServiceRuntime
from services.gateway.service import Gateway
from tests.fixtures import Scenes, Users


def mcp_server(gateway: Gateway, headers: dict[str, str]) -> FastMCP:
    client = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gateway", headers=headers
    )
    return FastMCP.from_openapi(
        openapi_spec=gateway.app.openapi(), client=client, name="render-farm"
    )


def operation_ids(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: op
        for path in spec["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    }


async def test_every_operation_follows_the_agent_rules(gateway: Gateway) -> None:
    spec = gateway.app.openapi()
    ops = operation_ids(spec)
    assert len(ops) >= 14
    for op_id, op in ops.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", op_id) and len(op_id) <= 56, op_id  # verb_noun
        assert op.get("description"), op_id
        for param in op.get("parameters", []):
            assert param.get("description"), (op_id, param["name"])
        error_statuses = {s for s in op["responses"] if s.startswith(("4", "5"))}
        assert error_statuses, op_id


async def test_an_mcp_client_sees_one_described_tool_per_operation(
    gateway: Gateway, users: Users
) -> None:
    spec = gateway.app.openapi()
    async with Client(mcp_server(gateway, users.new())) as mcp:
        tools = {t.name: t for t in await mcp.list_tools()}
    assert set(tools) == set(operation_ids(spec))
    for name, tool in tools.items():
        assert tool.description, name
        for prop, schema in tool.input_schema.get("properties", {}).items():
            described = schema.get("description") or any(
                s.get("description") for s in schema.get("anyOf", []) + schema.get("allOf", [])
            )
            assert described or "$ref" in schema, (name, prop)


async def test_an_agent_creates_lists_reads_and_cancels_a_job_through_mcp_tools(
    gateway: Gateway, job_service: ServiceRuntime[Any], users: Users, scenes: Scenes
) -> None:
    me = users.new()
    spec = await scenes.spec(me)
    async with Client(mcp_server(gateway, me)) as mcp:
        tools = {t.name: t for t in await mcp.list_tools()}
        created = await mcp.call_tool("create_job", {**spec, "Idempotency-Key": "agent-1"})
        job = created.structured_content
        assert job is not None and job["status"] == "submitted"
        jsonschema.validate(job, tools["create_job"].output_schema)
        again = await mcp.call_tool("create_job", {**spec, "Idempotency-Key": "agent-1"})
        assert again.structured_content == job

        got = await mcp.call_tool("get_job", {"job_id": job["job_id"]})
        assert got.structured_content == job
        listed = await mcp.call_tool("list_jobs", {"limit": 10})
        assert [j["job_id"] for j in listed.structured_content["items"]] == [job["job_id"]]
        history = await mcp.call_tool("list_job_events", {"job_id": job["job_id"]})
        assert history.structured_content["items"][0]["type"] == "job.JobSubmitted"
        cancelled = await mcp.call_tool("cancel_job", {"job_id": job["job_id"]})
        assert cancelled.structured_content["status"] == "cancelled"

        missing = await mcp.call_tool("get_job", {"job_id": "job_nope"}, raise_on_error=False)
        assert missing.is_error
        assert "job_not_found" in missing.content[0].text


async def test_answers_validate_against_their_declared_openapi_schema(
    gateway: Gateway, job_service: ServiceRuntime[Any], users: Users, scenes: Scenes
) -> None:
    """Raw bytes served from the read model still match the declared response model."""
    spec = gateway.app.openapi()
    me = users.new()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        job = (await client.post("/v1/jobs", json=await scenes.spec(me), headers=me)).json()
        page = (await client.get("/v1/jobs", headers=me)).json()
    schemas = spec["components"]["schemas"]
    resolver_doc = {"components": {"schemas": schemas}}
    for body, name in ((job, "JobEnvelope"), (page, "JobPage")):
        schema = {**schemas[name], "components": resolver_doc["components"]}
        jsonschema.validate(body, schema)
