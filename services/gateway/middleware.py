"""The one middleware every request passes: trace, authenticate, rate-limit, action-log.

Pure ASGI (no BaseHTTPMiddleware) to keep the per-request cost low.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.errors import DomainError, ErrorBody, RateLimited
from contracts.gateway import ApiCall, Outcome
from contracts.text import printable
from libs.logging import correlation_id_var
from libs.tracing import current_trace_id, extract_context, tracer
from services.gateway.access import Access
from services.gateway.auth import Principal
from services.gateway.ratelimit import Bucket

if TYPE_CHECKING:
    from services.gateway.service import Gateway

DOC_PATHS = frozenset({"/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"})
TARGET_PARAMS = ("job_id", "user_id", "key_id")
_tracer = tracer(__name__)


def error_response_bytes(err: DomainError[Any]) -> bytes:
    return ErrorBody.of(err, current_trace_id()).model_dump_json(exclude_none=False).encode()


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, gateway: Gateway, open_paths: dict[str, Access]) -> None:
        """``open_paths``: the paths that need no credentials, with their access (from the
        routes' declarations, :func:`services.gateway.access.open_paths`)."""
        self.app = app
        self.gw = gateway
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in DOC_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # Our own id, always: it keys action-log rows and names command ids, so a client's
        # X-Request-Id must never be able to collide with another request's.
        request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = otel_context.attach(extract_context(headers))
        cid = correlation_id_var.set(request_id)
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                trace_id = current_trace_id()
                if trace_id:
                    extra.append((b"x-trace-id", trace_id.encode()))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        span_name = f"{scope['method']} {scope['path']}"
        try:
            with _tracer.start_as_current_span(span_name, kind=trace.SpanKind.SERVER):
                try:
                    principal = await self._admit(scope, headers)
                    state["principal"] = principal
                except DomainError as e:
                    state["error_code"] = e.code
                    await self._send_error(send_wrapper, e)
                else:
                    await self.app(scope, receive, send_wrapper)
                self._record(scope, state, headers, status_holder["status"], started)
        finally:
            correlation_id_var.reset(cid)
            otel_context.detach(token)

    async def _admit(self, scope: Scope, headers: dict[str, str]) -> Principal | None:
        gw = self.gw
        s = gw.settings
        access = self.open_paths.get(scope["path"])
        # Signed by the caller, not authenticated: Razorpay's webhooks (no rate limit either:
        # a burst of Razorpay's retries must not be refused; the route bounds the body).
        if access is Access.signed:
            return None
        credentials = "authorization" in headers or "x-api-key" in headers
        if access is Access.public or (access is Access.anyone and not credentials):
            if scope["method"] == "POST" or access is Access.anyone:
                ip = _client_ip(scope)
                await self._limit(
                    [Bucket(f"ip:{ip}", s.rate_limit_ip_per_second, s.rate_limit_ip_burst)]
                )
            return None
        await gw.check_reconnects()
        principal = await gw.auth.authenticate(
            headers.get("authorization"), headers.get("x-api-key")
        )
        buckets = [
            Bucket(
                f"user:{principal.user_id}", s.rate_limit_user_per_second, s.rate_limit_user_burst
            )
        ]
        if principal.api_key_id:
            buckets.append(
                Bucket(
                    f"key:{principal.api_key_id}",
                    s.rate_limit_key_per_second,
                    s.rate_limit_key_burst,
                )
            )
            gw.note_api_key_use(principal.api_key_id)
        await self._limit(buckets)
        return principal

    async def _limit(self, buckets: list[Bucket]) -> None:
        wait_ms = await self.gw.limiter.retry_after_ms(buckets)
        if wait_ms:
            retry_after = max(1, -(-wait_ms // 1000))
            raise RateLimited(
                f"too many requests; retry after {retry_after} s",
                retry_after_seconds=retry_after,
            )

    async def _send_error(self, send: Send, err: DomainError[Any]) -> None:
        body = error_response_bytes(err)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if isinstance(err, RateLimited):
            headers.append((b"retry-after", str(err.details.retry_after_seconds).encode()))
        if err.http_status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="renderfarm"'))
        await send({"type": "http.response.start", "status": err.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        headers: dict[str, str],
        status: int,
        started: float,
    ) -> None:
        if scope["path"] in ("/healthz", "/readyz"):
            return
        principal: Principal | None = state.get("principal")
        route = scope.get("route")
        # Path parameters are whatever the client sent (the route may have refused them):
        # escaped, since the action log's store cannot hold NUL or lone surrogates.
        targets = {
            k: printable(str(v), 200)
            for k, v in scope.get("path_params", {}).items()
            if k in TARGET_PARAMS
        }
        targets.update(state.get("targets", {}))
        outcome = (
            Outcome.succeeded
            if status < 400
            else Outcome.refused
            if status < 500
            else Outcome.failed
        )
        self.gw.action_log.record(
            ApiCall.model_construct(  # no validation on the request path: every field is ours
                request_id=state["request_id"],
                operation_id=getattr(route, "operation_id", None),
                method=scope["method"],
                path=printable(scope["path"]),
                user_id=principal.user_id if principal else state.get("user_id"),
                api_key_id=principal.api_key_id if principal else None,
                target_ids=targets,
                status_code=status,
                outcome=outcome,
                error_code=state.get("error_code"),
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                trace_id=current_trace_id(),
                client_ip=_client_ip(scope),
                at=datetime.now(UTC),
            )
        )


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
