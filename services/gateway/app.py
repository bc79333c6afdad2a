"""The FastAPI application: routes under /v1, one error shape, OpenAPI for agents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import (
    BadRequest,
    DomainError,
    Forbidden,
    InternalError,
    InvalidFrameRange,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
    ValidationFailed,
    field_problems,
)
from libs.logging import get_logger
from services.gateway.access import Access, open_paths, requires
from services.gateway.api import details_schemas
from services.gateway.middleware import GatewayMiddleware, error_response_bytes
from services.gateway.routes import (
    admin,
    api_keys,
    auth,
    costs,
    jobs,
    notifications,
    outputs,
    payments,
    spec,
    uploads,
    wallet,
)

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = get_logger(__name__)

DESCRIPTION = """Cloud render farm API. Every answer is JSON with a stable schema.

* Authenticate with `Authorization: Bearer <access token>` (from `login`) or with an API key
  (`Authorization: Bearer rfk_live_...` or `X-API-Key`).
* Errors always have the shape `{code, message, retryable, details, trace_id}`.
  Each error response lists its codes and the schema of `details` for each code
  (also as `x-error-details`: code -> schema).
* Send an `Idempotency-Key` header on POST to make retries safe.
* Every answer about a job is the same job envelope; every page about a job carries the
  job's id, status, progress and current step.
* Each operation says who may call it: `x-rf-access` (`public`, `signed`, `authenticated`,
  `scope`, `session`, `admin`) and `x-rf-scopes` (the scopes an API key needs).
  `GET /v1/openapi.json` answers only the operations the caller's credentials allow.
"""


#: Starlette's own HTTP errors (routing, body limits, parsing) by status; any other status
#: is a bad_request (4xx) or an internal_error (5xx).
HTTP_ERRORS: dict[int, type[DomainError[None]]] = {
    cls.http_status: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        ServiceUnavailable,
    )
}


def _error(err: DomainError[Any], headers: Mapping[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.details.retry_after_seconds)
    return Response(
        error_response_bytes(err), err.http_status, media_type="application/json", headers=headers
    )


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    details = field_problems(exc.errors())
    frame_range = any(p.type == InvalidFrameRange.code for p in details.errors)
    cls = InvalidFrameRange if frame_range else ValidationFailed
    summary = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in details.errors)
    request.state.error_code = cls.code
    return _error(cls(f"invalid request: {summary}"[:1000], details))


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="Render Farm API",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        # The gateway's middleware makes the one server span (sampled, libs/tracing.py).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = gateway

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError[Any]) -> Response:
        request.state.error_code = exc.code
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        fallback = BadRequest if exc.status_code < 500 else InternalError
        cls = HTTP_ERRORS.get(exc.status_code, fallback)
        request.state.error_code = cls.code
        return _error(cls(str(exc.detail)), exc.headers)  # keeps e.g. 405's Allow

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("request_failed", path=request.url.path)
        request.state.error_code = InternalError.code
        return _error(InternalError("internal error; retry later"))

    @app.get("/healthz", dependencies=[requires(Access.public)], include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", dependencies=[requires(Access.public)], include_in_schema=False)
    async def readyz() -> Response:
        ok, text = await gateway.ready()
        return Response(text, 200 if ok else 503, media_type="text/plain")

    for module in (
        auth,
        api_keys,
        jobs,
        uploads,
        outputs,
        wallet,
        payments,
        notifications,
        costs,
        admin,
        spec,
    ):
        app.include_router(module.router)
    app.state.caller_specs = {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        operations = {
            op["operationId"]: op
            for item in schema["paths"].values()
            for op in item.values()
            if isinstance(op, dict) and "operationId" in op
        }
        for op_id, requirement in spec.requirements(app).items():
            operations[op_id].update(requirement.openapi())
        components = schema.setdefault("components", {})
        for name, details in details_schemas().items():
            if components.setdefault("schemas", {}).setdefault(name, details) != details:
                raise RuntimeError(f"two OpenAPI schemas are named {name}")
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "JWT or API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(GatewayMiddleware, gateway=gateway, open_paths=open_paths(app.routes))
    return app
