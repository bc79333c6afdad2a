"""Helpers shared by the routes: principal, declared errors, idempotent POSTs, responses."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts.base import Command
from contracts.errors import (
    ERRORS,
    AccountSuspended,
    ApiKeyExpired,
    ApiKeyRevoked,
    DomainError,
    ErrorBody,
    InvalidApiKey,
    InvalidToken,
    RateLimited,
    ServiceUnavailable,
    TokenExpired,
    Unauthenticated,
    ValidationFailed,
)
from services.gateway.auth import Principal
from services.gateway.idempotency import StoredResponse, request_hash
from services.gateway.middleware import error_response_bytes

if TYPE_CHECKING:
    from services.gateway.service import Gateway

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description=(
            "Client-chosen unique key (e.g. a UUID). Repeating a request with the same key"
            " returns the first answer instead of acting twice. Kept for 24 hours."
        ),
    ),
]

ErrorClass = type[DomainError[Any]]

AUTH_ERRORS: tuple[ErrorClass, ...] = (
    Unauthenticated,
    InvalidToken,
    TokenExpired,
    InvalidApiKey,
    ApiKeyRevoked,
    ApiKeyExpired,
    AccountSuspended,
)
COMMON_ERRORS: tuple[ErrorClass, ...] = (RateLimited, ServiceUnavailable, ValidationFailed)
SCHEMA_REF = "#/components/schemas/{model}"


def errors(*classes: ErrorClass, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer with, grouped by status.

    Each response lists its codes with their details schema, in the description for people
    and in ``x-error-details`` (code -> schema of ``details``) for programs.
    """
    by_status: dict[int, dict[str, ErrorClass]] = {}
    for cls in (*classes, *COMMON_ERRORS, *(AUTH_ERRORS if auth else ())):
        by_status.setdefault(cls.http_status, {})[cls.code] = cls
    return {status: _response(by_code) for status, by_code in sorted(by_status.items())}


def _response(by_code: dict[str, ErrorClass]) -> dict[str, Any]:
    lines, details = [], {}
    for code, cls in sorted(by_code.items()):
        if cls.Details is None:
            lines.append(f"* `{code}`: details null")
            details[code] = {"type": "null"}
        else:
            name = cls.Details.__name__
            lines.append(f"* `{code}`: details `{name}`")
            details[code] = {"$ref": SCHEMA_REF.format(model=name)}
    return {
        "model": ErrorBody,
        "description": "Error codes:\n\n" + "\n".join(lines),
        "x-error-details": details,
    }


def details_schemas() -> dict[str, Any]:
    """Components schemas of every error's details model (and the models they use)."""
    models = {cls.Details for cls in ERRORS if cls.Details is not None}
    _, top = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=SCHEMA_REF,
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def principal(request: Request) -> Principal:
    p: Principal | None = request.state.principal
    if p is None:  # only public routes run without one, and they do not call this
        raise Unauthenticated("authentication required")
    return p


def set_targets(request: Request, **ids: str) -> None:
    request.state.targets = {**getattr(request.state, "targets", {}), **ids}


def json_response(body: bytes | str, status: int = 200, **headers: str) -> Response:
    return Response(
        content=body, status_code=status, media_type="application/json", headers=headers or None
    )


Run = Callable[[str], Awaitable[tuple[int, bytes]]]


async def idempotent(
    request: Request, scope: str, key: str | None, operation: str, run: Run
) -> Response:
    """Run a POST at most once per ``Idempotency-Key``; ``run`` gets the command id to use."""
    if key is None:
        status, body = await run(f"{operation}:{uuid.uuid4()}")
        return json_response(body, status)
    gw = gateway(request)
    req_hash = request_hash(operation, request.url.path, await request.body())
    stored = await gw.idempotency.begin(scope, key, req_hash)
    if stored is not None:
        return json_response(stored.body, stored.status, **{"Idempotent-Replayed": "true"})
    try:
        status, body = await run(f"{operation}:{scope}:{key}")
    except DomainError as e:
        if e.retryable:
            await gw.idempotency.abandon(scope, key)
        else:
            await gw.idempotency.finish(
                scope, key, req_hash, StoredResponse(e.http_status, error_response_bytes(e))
            )
        raise
    except BaseException:
        await gw.idempotency.abandon(scope, key)
        raise
    await gw.idempotency.finish(scope, key, req_hash, StoredResponse(status, body))
    return json_response(body, status)


Reply = TypeVar("Reply", bound=BaseModel)


async def send_idempotent(
    request: Request,
    key: str | None,
    operation: str,
    cmd: Command,
    reply: type[Reply],
    *,
    status: int = 200,
    targets: Callable[[Reply], dict[str, str]] | None = None,
) -> Response:
    """Send ``cmd`` as the caller at most once per ``Idempotency-Key``; answer its reply.

    The common POST body: the reply goes back as JSON with ``status``; ``targets`` names the
    ids the reply made (for the action log).
    """
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        answer = await gw.commands.send(cmd, reply, command_id=command_id, actor=p.actor())
        if targets is not None:
            set_targets(request, **targets(answer))
        return status, answer.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, key, operation, run)
