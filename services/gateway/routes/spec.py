"""The agent's view: the OpenAPI document cut down to what the caller may call.

``GET /v1/openapi.json`` answers, for an API key, only the operations its scopes allow (none
of the session-only or admin ones, nor login and registration); for a user's session, every
operation but the admin ones; for an administrator, everything; without credentials, the
public ones. An MCP server generated from it has exactly the tools its key can use. The full
document stays at ``/openapi.json`` (and ``/docs``) for people.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from contracts.identity import Scope
from services.gateway.access import Access, Requirement, declared, requires
from services.gateway.api import json_response
from services.gateway.auth import Principal

router = APIRouter()

SCHEMA_PREFIX = "#/components/schemas/"

#: What a view depends on: no credentials, or (API key?, admin?, scopes).
ViewKey = tuple[bool, bool, frozenset[Scope]] | None


def requirements(app: FastAPI) -> dict[str, Requirement]:
    """Each documented operation's requirement, by operationId."""
    return {
        route.operation_id: requirement
        for _, route, requirement in declared(app.routes)
        if route.include_in_schema and route.operation_id is not None
    }


def view_for(spec: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """``spec`` with only the operations in ``allowed`` and the schemas they use."""
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        kept = {
            method: op
            for method, op in item.items()
            if not isinstance(op, dict) or op.get("operationId") in allowed
        }
        if any(isinstance(op, dict) and "operationId" in op for op in kept.values()):
            paths[path] = kept
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    used = _referenced(paths, schemas)
    components = {
        **spec.get("components", {}),
        "schemas": {name: s for name, s in schemas.items() if name in used},
    }
    return {**spec, "paths": paths, "components": components}


def _referenced(root: Any, schemas: dict[str, Any]) -> set[str]:
    """Names of the component schemas ``root`` refers to, directly or through others."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(SCHEMA_PREFIX):
                name = ref.removeprefix(SCHEMA_PREFIX)
                if name not in seen and name in schemas:
                    seen.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return seen


def _key(p: Principal | None) -> ViewKey:
    return None if p is None else (p.api_key_id is not None, p.is_admin, p.scopes)


def _streams(spec: dict[str, Any]) -> set[str]:
    """Operations tagged ``x-rf-stream`` (Server-Sent Events): not request/response calls, so
    no tool a generator could make of them would return; only the full spec lists them."""
    return {
        op["operationId"]
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and op.get("x-rf-stream")
    }


def caller_spec(app: FastAPI, p: Principal | None) -> bytes:
    """The OpenAPI document for ``p`` (None: no credentials), as JSON; one per kind of caller."""
    cache: dict[ViewKey, bytes] = app.state.caller_specs
    key = _key(p)
    found = cache.get(key)
    if found is None:
        streams = _streams(app.openapi())
        allowed = {
            op for op, req in requirements(app).items() if req.allows(p) and op not in streams
        }
        found = cache[key] = orjson.dumps(view_for(app.openapi(), allowed))
    return found


@router.get(
    "/v1/openapi.json",
    operation_id="get_openapi",
    dependencies=[requires(Access.anyone)],
    include_in_schema=False,
)
async def get_openapi(request: Request) -> Response:
    return json_response(caller_spec(request.app, request.state.principal))
