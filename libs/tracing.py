"""OpenTelemetry set-up; W3C trace context through NATS headers and event metadata.

Sampling is parent-based: a span with a parent (an incoming ``traceparent``, a command's or a
message's headers) keeps its parent's decision; a root span is recorded with probability
``sample_ratio`` (``RF_OTEL_SAMPLE_RATIO``, default 0.01). An unsampled span records nothing
(no attributes, no export) but still has a valid trace and span id, so ids reach logs,
replies, events and downstream ``traceparent`` headers (flag ``00``) either way.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def configure_tracing(service: str, exporter: str = "none", sample_ratio: float = 0.01) -> None:
    """Install a tracer provider (the first call in a process wins, as OpenTelemetry allows)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(min(1.0, max(0.0, sample_ratio)))),
    )
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer:
    """A module's tracer: call once at import (``_tracer = tracer(__name__)``), not per span.
    Before :func:`configure_tracing` it is a proxy that binds to the provider once set."""
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``headers`` with ``traceparent``/``tracestate`` of the current span added."""
    carrier: dict[str, str] = dict(headers or {})
    _propagator.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    return _propagator.extract(headers if headers is not None else {})


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
