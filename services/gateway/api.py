"""Helpers shared by the routes: principal, declared errors, idempotent POSTs, responses."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Header, Request
from fastapi.responses import Response

from contracts.errors import HTTP_STATUS, DomainError, ErrorBody, ErrorCode
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

AUTH_ERRORS = (
    ErrorCode.unauthenticated,
    ErrorCode.invalid_token,
    ErrorCode.token_expired,
    ErrorCode.invalid_api_key,
    ErrorCode.api_key_revoked,
)


def errors(*codes: ErrorCode, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route can answer with."""
    by_status: dict[int, list[str]] = {}
    common = (ErrorCode.rate_limited, ErrorCode.service_unavailable)
    for code in (*codes, *common, *(AUTH_ERRORS if auth else ())):
        by_status.setdefault(HTTP_STATUS[code], []).append(code.value)
    by_status.setdefault(422, []).append(ErrorCode.validation_failed.value)
    return {
        status: {"model": ErrorBody, "description": "Error codes: " + ", ".join(sorted(set(c)))}
        for status, c in sorted(by_status.items())
    }


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def principal(request: Request) -> Principal:
    p: Principal | None = request.state.principal
    if p is None:  # only public routes run without one, and they do not call this
        raise DomainError(ErrorCode.unauthenticated, "authentication required")
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
