"""12. Estimate latency: ``POST /v1/cost/estimate`` through a running gateway and billing.

The billing service and the gateway run as their own processes on a fresh database (billing
publishes its default prices at start); the clients run here, each sending a 240-frame
estimate from parameters back to back on its own keep-alive connection. Every estimate is a
``billing.EstimateCost`` command over NATS (the price catalogue read from billing's event
store, the estimator, the reply) behind the gateway's authentication and rate limiting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson

from bench.api_bench import ApiOptions, Stack, _measure, _print_load
from bench.http import Connection, build_request
from bench.infra import Infra, Servers
from bench.report import Figure
from libs.ids import new_id

SECTION = "12"
ESTIMATE = {
    "frame_range": {"start": 1, "end": 240},
    "resolution": {"width": 1920, "height": 1080},
    "render_settings": {"samples": 256},
    "priority": "high",
    "chunk_size": 4,
    "scene_size_bytes": 250_000_000,
}


@dataclass
class CostBenchOptions:
    clients: int = 20
    warmup: float = 2.0
    duration: float = 10.0
    #: Gateway worker processes.
    workers: int = os.cpu_count() or 1


async def run_estimates(infra: Infra, servers: Servers, opts: CostBenchOptions) -> list[Figure]:
    stack = Stack(infra, servers, workers=opts.workers, services=("billing",))
    await stack.start()
    try:
        port = stack.gateway_port
        raw = build_request(
            "POST",
            "/v1/cost/estimate",
            port=port,
            headers={
                "Authorization": f"Bearer {stack.token(new_id('usr'))}",
                "Content-Type": "application/json",
            },
            body=orjson.dumps(ESTIMATE),
        )
        conn = Connection("127.0.0.1", port)
        try:
            status, body = await conn.request(raw)
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"POST /v1/cost/estimate answered {status}: {body[:500]!r}")
        answer = orjson.loads(body)
        print(
            f"  estimate {answer['low_credits']} / {answer['expected_credits']} /"
            f" {answer['high_credits']} credits; gateway workers: {stack.workers}"
        )
        children = [c for c in (stack.gateway, *stack.services.values()) if c is not None]
        load = ApiOptions(
            get_connections=opts.clients, get_warmup=opts.warmup, get_duration=opts.duration
        )
        result, cpu = await _measure(port, raw, load, children)
    finally:
        stack.stop()
    _print_load(f"POST /v1/cost/estimate, {opts.clients} clients", result, cpu)
    others = {s: n for s, n in result.statuses.items() if s != 200}
    note = (
        f"{opts.clients} concurrent clients, {result.rate:,.0f} req/s over {result.seconds:.0f} s,"
        f" {stack.workers} gateway workers, one billing process; a billing.EstimateCost over"
        " NATS per request"
    )
    if others or result.errors:
        note += f"; NOT all 200: {others}, {result.errors} connection errors"
    return [
        Figure(f"{SECTION} estimate", "p50 latency", result.p(50), "ms", note=note),
        Figure(
            f"{SECTION} estimate",
            "p99 latency",
            result.p(99),
            "ms",
            target=50.0,
            direction="max",
            note=note,
        ),
    ]
