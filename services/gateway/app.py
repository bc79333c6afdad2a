"""The FastAPI application: routes under /v1, one error shape, OpenAPI for agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import DomainError, ErrorCode
from libs.logging import get_logger
from services.gateway.middleware import GatewayMiddleware, error_response_bytes
from services.gateway.routes import admin, api_keys, auth, jobs

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = get_logger(__name__)

DESCRIPTION = """Cloud render farm API. Every answer is JSON with a stable schema.

* Authenticate with `Authorization: Bearer <access token>` (from `login`) or with an API key
  (`Authorization: Bearer rfk_live_...` or `X-API-Key`).
* Errors always have the shape `{code, message, retryable, details, trace_id}`.
* Send an `Idempotency-Key` header on POST to make retries safe.
* Every answer about a job is the same job envelope.
"""


def _error(err: DomainError) -> Response:
    headers = {}
    if err.code is ErrorCode.rate_limited and err.details:
        headers["Retry-After"] = str(err.details["retry_after_seconds"])
    return Response(
        error_response_bytes(err), err.http_status, media_type="application/json", headers=headers
    )


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = [
        {"loc": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    frame_range = any(p["type"] == ErrorCode.invalid_frame_range.value for p in problems)
    code = ErrorCode.invalid_frame_range if frame_range else ErrorCode.validation_failed
    summary = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['message']}" for p in problems)
    err = DomainError(code, f"invalid request: {summary}"[:1000], {"errors": problems})
    request.state.error_code = code.value
    return _error(err)


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="Render Farm API",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.gateway = gateway

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        request.state.error_code = exc.code.value
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: ErrorCode.not_found, 405: ErrorCode.method_not_allowed}.get(
            exc.status_code, ErrorCode.validation_failed
        )
        request.state.error_code = code.value
        return _error(DomainError(code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("request_failed", path=request.url.path)
        request.state.error_code = ErrorCode.internal_error.value
        return _error(DomainError(ErrorCode.internal_error, "internal error; retry later"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ok, text = await gateway.ready()
        return Response(text, 200 if ok else 503, media_type="text/plain")

    for module in (auth, api_keys, jobs, admin):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "JWT or API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(GatewayMiddleware, gateway=gateway)
    return app
