"""1. GET /v1/jobs/{id} through the gateway vs a bare FastAPI endpoint.
2. POST /v1/jobs end to end, with a read-your-writes check after every 201.

The gateway, the job, identity and upload services and the bare server each run in their
own process; the load comes from this process over raw HTTP/1.1 keep-alive connections.
Every user's jobs are on a scene the user uploaded first (through the upload API).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.cpu import CpuMeter, cpu_text
from bench.http import Connection, HttpError, LoadResult, build_request, fixed_duration_load
from bench.http import wait_http_ok as _wait_http_ok
from bench.infra import Child, Infra, Servers
from bench.report import Figure, percentile
from bench.scenes import upload_scene
from libs.auth import issue_access_token
from libs.ids import new_id
from services.gateway.settings import GatewaySettings

JOB_SPEC: dict[str, object] = {
    "name": "shot_010 lighting",
    "renderer": "blender_cycles",
    "frame_range": {"start": 1, "end": 240},
    "chunk_size": 4,
    "resolution": {"width": 1920, "height": 1080},
    "priority": "normal",
    "cost_cap_credits": "150.50",
}


@dataclass
class ApiOptions:
    get_connections: int = 50
    get_warmup: float = 2.0
    get_duration: float = 8.0
    post_clients: int = 32
    post_warmup: float = 2.0
    post_duration: float = 10.0
    post_max_jobs: int = 20_000
    post_users: int = 2_000
    #: Gateway worker processes, and as many bare FastAPI processes for the baseline.
    workers: int = os.cpu_count() or 1
    #: Section 8: minutes of GET load, gateway RSS after the first and after the last.
    memory_minutes: float = 10.0


async def _measure(
    port: int,
    raw: bytes,
    opts: ApiOptions,
    children: Sequence[Child],
) -> tuple[LoadResult, dict[str, float]]:
    meter = CpuMeter(children)

    async def start_meter() -> None:
        await asyncio.sleep(opts.get_warmup)
        meter.start()

    starter = asyncio.ensure_future(start_meter())
    result = await fixed_duration_load(
        port,
        raw,
        connections=opts.get_connections,
        warmup=opts.get_warmup,
        duration=opts.get_duration,
    )
    await starter
    return result, meter.stop()


def _print_load(label: str, r: LoadResult, cpu: dict[str, float]) -> None:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
    print(
        f"  {label}: {r.rate:,.0f} req/s over {r.seconds:.1f} s ({r.requests} requests;"
        f" status {statuses}; {r.errors} connection errors)"
        f"  p50 {r.p(50):.2f} ms  p90 {r.p(90):.2f} ms  p99 {r.p(99):.2f} ms"
        f"  max {r.p(100):.1f} ms"
    )
    print(f"    {cpu_text(cpu)}")


#: Environment each service gets besides the servers' (fast password hashing for the bench's
#: users, no active-job limit for the POST load).
SERVICE_ENV = {
    "job": {"RF_ACTIVE_JOB_LIMIT": "1000000"},
    "identity": {"RF_PASSWORD_SCRYPT_N": "1024"},
}


class Stack:
    """Services (the job, identity and upload services by default) and the gateway, as
    separate processes on one fresh database; the upload service on this run's S3."""

    def __init__(
        self,
        infra: Infra,
        servers: Servers,
        workers: int = 1,
        services: Sequence[str] = ("job", "identity", "upload"),
        env: dict[str, str] | None = None,
    ) -> None:
        self.infra = infra
        self.servers = servers
        self.workers = workers
        self.names = tuple(services)
        self.extra_env = env or {}
        self.services: dict[str, Child] = {}
        self.prefix = f"b{infra.tag}a"
        self.keys = {"k1": secrets.token_hex(32)}
        self.pepper = secrets.token_hex(32)
        self.gateway_port = 0
        self.gateway: Child | None = None
        self.settings: GatewaySettings | None = None
        #: Each user's scene upload (by access token).
        self._scenes: dict[str, str] = {}

    @property
    def job(self) -> Child | None:
        return self.services.get("job")

    @property
    def identity(self) -> Child | None:
        return self.services.get("identity")

    @property
    def upload(self) -> Child | None:
        return self.services.get("upload")

    async def start(self) -> None:
        from deploy.local.servers import free_port

        dsn = await self.infra.create_database("api")
        env = {
            "RF_DATABASE_URL": dsn,
            "RF_NATS_URL": self.servers.nats_url,
            "RF_NATS_PREFIX": self.prefix,
            "RF_REDIS_URL": self.servers.redis_url,
            "RF_REDIS_PREFIX": self.prefix,
            "RF_JWT_KEYS": json.dumps(self.keys),
            "RF_JWT_ACTIVE_KID": "k1",
            "RF_TOKEN_PEPPER": self.pepper,
            **self.extra_env,
        }
        for name in self.names:
            health = free_port()
            own = self.infra.s3_env(self.prefix) if name == "upload" else SERVICE_ENV.get(name, {})
            child = self.infra.spawn(
                name if name != "job" else "job-service",
                ["-m", f"services.{name}"],
                {**env, **own, "RF_HEALTH_PORT": str(health)},
            )
            self.services[name] = child
            await wait_http_ok(health, "/readyz", 60, child)
        self.gateway_port = free_port()
        gateway_health = free_port()  # the worker parent's: ready when every worker is
        self.gateway = self.infra.spawn(
            "gateway",
            ["-m", "services.gateway"],
            {
                **env,
                "RF_GATEWAY_PORT": str(self.gateway_port),
                "RF_RATE_LIMIT_USER_PER_SECOND": "1000000",
                "RF_RATE_LIMIT_USER_BURST": "1000000",
                "RF_RATE_LIMIT_KEY_PER_SECOND": "1000000",
                "RF_RATE_LIMIT_KEY_BURST": "1000000",
                "RF_GATEWAY_WORKERS": str(self.workers),
                "RF_HEALTH_PORT": str(gateway_health),
            },
        )
        await wait_http_ok(gateway_health, "/readyz", 60, self.gateway)
        await wait_http_ok(self.gateway_port, "/readyz", 60, self.gateway)
        self.settings = GatewaySettings(
            jwt_keys=self.keys, jwt_active_kid="k1", token_pepper=self.pepper
        )

    def token(self, user_id: str) -> str:
        assert self.settings is not None
        return issue_access_token(self.settings, user_id, "user")

    async def scenes_of(self, tokens: Sequence[str]) -> list[str]:
        """Each token's user's scene upload (uploaded the first time, 32 at once)."""
        slots = asyncio.Semaphore(32)
        base_url = f"http://127.0.0.1:{self.gateway_port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as api:

            async def upload(token: str) -> None:
                async with slots:
                    headers = {"Authorization": f"Bearer {token}"}
                    self._scenes[token] = await upload_scene(api, headers, b"BLENDER" * 100)

            await asyncio.gather(*(upload(t) for t in set(tokens) - set(self._scenes)))
        return [self._scenes[t] for t in tokens]

    async def api_key(self) -> tuple[str, str]:
        """A user approved through identity's command, logged in, with an API key:
        (the user's access token, the key)."""
        from contracts.identity import RegisterUser, UserProfile
        from libs.bus.commands import Actor, CommandClient
        from libs.bus.nats import connect
        from libs.config import BaseServiceSettings

        settings = BaseServiceSettings(
            nats_url=self.servers.nats_url, nats_prefix=self.prefix, service_name="bench"
        )
        nc = await connect(settings, "bench")
        try:
            email, password = f"bench-{secrets.token_hex(4)}@studio.test", "bench-password-1"
            await CommandClient(nc, settings).send(
                RegisterUser(email=email, password=password, display_name="Bench", approved=True),
                UserProfile,
                command_id=f"bench-user:{email}",
                actor=Actor(kind="cli", id="bench"),
            )
        finally:
            await nc.close()
        port = self.gateway_port
        conn = Connection("127.0.0.1", port)
        try:
            login = orjson.dumps({"email": email, "password": password})
            status, body = await conn.request(
                build_request(
                    "POST",
                    "/v1/auth/login",
                    port=port,
                    headers={"Content-Type": "application/json"},
                    body=login,
                )
            )
            if status != 200:
                raise RuntimeError(f"login answered {status}: {body[:300]!r}")
            token = orjson.loads(body)["access_token"]
            spec = orjson.dumps({"name": "bench", "scopes": ["jobs:read", "jobs:write"]})
            status, body = await conn.request(
                build_request(
                    "POST",
                    "/v1/api-keys",
                    port=port,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    },
                    body=spec,
                )
            )
            if status != 201:
                raise RuntimeError(f"create_api_key answered {status}: {body[:300]!r}")
            return token, orjson.loads(body)["secret"]
        finally:
            conn.close()

    def stop(self) -> None:
        for child in (self.gateway, *reversed(self.services.values())):
            if child is not None:
                self.infra.stop_child(child)
        self.gateway = None
        self.services.clear()


async def wait_http_ok(port: int, path: str, timeout: float, child: Child) -> None:
    try:
        await _wait_http_ok(port, path, timeout, child.alive, child.name)
    except (RuntimeError, TimeoutError) as e:
        raise RuntimeError(f"{e}; log {child.log_file}:\n{child.log_tail()}") from None


def _post_request(port: int, token: str, scene_id: str) -> bytes:
    body = orjson.dumps({**JOB_SPEC, "scene_id": scene_id})
    return build_request(
        "POST",
        "/v1/jobs",
        port=port,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=body,
    )


def _get_request(port: int, job_id: str, token: str) -> bytes:
    return build_request(
        "GET", f"/v1/jobs/{job_id}", port=port, headers={"Authorization": f"Bearer {token}"}
    )


@dataclass
class GatewayGet:
    result: LoadResult
    cpu: dict[str, float]
    envelope: bytes
    job_id: str
    token: str
    #: The same GET with an API key (None if it could not be measured).
    key_result: LoadResult | None = None
    key_cpu: dict[str, float] | None = None


async def _first_job(stack: Stack, token: str) -> tuple[str, bytes, bytes]:
    """POST a job as ``token``'s user; (job id, its GET request, the envelope)."""
    port = stack.gateway_port
    [scene_id] = await stack.scenes_of([token])
    conn = Connection("127.0.0.1", port)
    try:
        status, body = await conn.request(_post_request(port, token, scene_id))
        if status != 201:
            raise RuntimeError(f"POST /v1/jobs answered {status}: {body[:500]!r}")
        job_id = orjson.loads(body)["job_id"]
        get_raw = _get_request(port, job_id, token)
        status, envelope = await conn.request(get_raw)
        if status != 200:
            raise RuntimeError(f"GET /v1/jobs/{job_id} answered {status}: {envelope[:500]!r}")
    finally:
        conn.close()
    return job_id, get_raw, envelope


def _children(stack: Stack) -> list[Child]:
    return [c for c in (stack.gateway, stack.job, stack.identity) if c is not None]


async def measure_gateway_get(stack: Stack, opts: ApiOptions) -> GatewayGet:
    assert stack.gateway is not None and stack.job is not None
    port = stack.gateway_port
    token = stack.token(new_id("usr"))
    job_id, get_raw, envelope = await _first_job(stack, token)
    print(f"  job {job_id}: envelope {len(envelope)} bytes; gateway workers: {stack.workers}")
    result, cpu = await _measure(port, get_raw, opts, _children(stack))
    _print_load("gateway GET /v1/jobs/{id}, JWT", result, cpu)
    if result.errors or set(result.statuses) - {200}:
        print(f"  WARNING: gateway answered {dict(result.statuses)}, {result.errors} errors")
    gw = GatewayGet(result, cpu, envelope, job_id, token)
    try:
        user_token, key = await stack.api_key()
        key_job, _, _ = await _first_job(stack, user_token)
        key_raw = build_request("GET", f"/v1/jobs/{key_job}", port=port, headers={"X-API-Key": key})
        gw.key_result, gw.key_cpu = await _measure(port, key_raw, opts, _children(stack))
        _print_load("gateway GET /v1/jobs/{id}, API key", gw.key_result, gw.key_cpu)
        if gw.key_result.errors or set(gw.key_result.statuses) - {200}:
            print(f"  WARNING: API-key GET answered {dict(gw.key_result.statuses)}")
    except Exception as e:  # the JWT figure stands on its own
        print(f"  API-key GET not measured: {type(e).__name__}: {e}")
    return gw


async def run_memory(stack: Stack, gw: GatewayGet, opts: ApiOptions) -> list[Figure]:
    """Gateway RSS (all its processes) after 1 minute of GET load and after ``memory_minutes``."""
    assert stack.gateway is not None
    port = stack.gateway_port
    raw = _get_request(port, gw.job_id, gw.token)
    total = max(2.0, opts.memory_minutes) * 60
    chunk = 30.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    samples: list[tuple[float, int]] = [(0.0, stack.gateway.rss_bytes())]
    requests = 0
    while loop.time() - start < total:
        left = total - (loop.time() - start)
        r = await fixed_duration_load(
            port, raw, connections=opts.get_connections, warmup=0.0, duration=min(chunk, left)
        )
        requests += r.requests
        samples.append((loop.time() - start, stack.gateway.rss_bytes()))
    at_1 = min(samples, key=lambda s: abs(s[0] - 60))
    end = samples[-1]
    mib = 1024 * 1024
    rate = requests / max(end[0], 1e-9)
    print(
        f"  gateway RSS ({stack.workers} workers): start {samples[0][1] / mib:.0f} MiB,"
        f" after {at_1[0] / 60:.1f} min {at_1[1] / mib:.0f} MiB,"
        f" after {end[0] / 60:.1f} min {end[1] / mib:.0f} MiB"
        f" ({requests} requests, {rate:,.0f} req/s)"
    )
    print("    " + ", ".join(f"{t / 60:.1f} min {b / mib:.0f}" for t, b in samples))
    return [
        Figure(
            "9 gateway memory",
            f"RSS after {end[0] / 60:.0f} min",
            end[1] / mib,
            "MiB",
            baseline=at_1[1] / mib,
            baseline_name=f"RSS after {at_1[0] / 60:.1f} min of the same load",
            target=1.10,
            target_on_ratio=True,
            direction="max",
            note=(
                f"GET /v1/jobs/{{id}} with a JWT, {opts.get_connections} connections,"
                f" {rate:,.0f} req/s, {stack.workers} worker processes summed"
            ),
            extra={"samples": [[round(t, 1), b] for t, b in samples], "requests": requests},
        )
    ]


async def measure_bare_get(
    infra: Infra, gw: GatewayGet, opts: ApiOptions, workdir: Path
) -> list[Figure]:
    """The baseline, run alone (the gateway and job service are stopped by then)."""
    from deploy.local.servers import free_port

    body_file = workdir / "bare-body.json"
    body_file.write_bytes(gw.envelope)
    bare_port = free_port()
    bare = infra.spawn(
        "bare", ["-m", "bench.bare", str(bare_port), str(body_file), str(opts.workers)], {}
    )
    try:
        await wait_http_ok(bare_port, "/healthz", 30, bare)
        bare_raw = _get_request(bare_port, gw.job_id, gw.token)
        base, base_cpu = await _measure(bare_port, bare_raw, opts, [bare])
        _print_load(f"bare FastAPI GET, {opts.workers} processes", base, base_cpu)
    finally:
        infra.stop_child(bare)
    r = gw.result
    print(
        f"  gateway / bare ({opts.workers} worker processes each):"
        f" JWT throughput {r.rate / base.rate:.2f}, p99 {r.p(99) / base.p(99):.1f}x"
        + (
            f"; API key throughput {gw.key_result.rate / base.rate:.2f},"
            f" p99 {gw.key_result.p(99) / base.p(99):.1f}x"
            if gw.key_result is not None
            else ""
        )
    )
    section = "1 GET job"
    key_figures: list[Figure] = []
    if gw.key_result is not None:
        k = gw.key_result
        key_figures = [
            Figure(
                section,
                "API key throughput",
                k.rate,
                "req/s",
                baseline=base.rate,
                target=0.40,
                target_on_ratio=True,
                extra={"statuses": dict(k.statuses), "errors": k.errors, **(gw.key_cpu or {})},
            ),
            Figure(
                section,
                "API key p99",
                k.p(99),
                "ms",
                baseline=base.p(99),
                target=25.0,
                direction="max",
            ),
        ]
    return [
        Figure(
            section,
            "throughput",
            r.rate,
            "req/s",
            baseline=base.rate,
            baseline_name=(
                f"bare FastAPI endpoint, same uvicorn settings, {len(gw.envelope)} B JSON,"
                f" {opts.get_connections} connections, {opts.workers} worker processes"
                " (as the gateway)"
            ),
            target=0.40,
            target_on_ratio=True,
            note=(
                f"{opts.get_connections} keep-alive connections, {opts.get_duration:.0f} s after"
                f" {opts.get_warmup:.0f} s warm-up; load client used"
                f" {gw.cpu.get('cpu_bench_client', 0) * 100:.0f}% (gateway run) and"
                f" {base_cpu.get('cpu_bench_client', 0) * 100:.0f}% (bare run) of a core;"
                f" gateway process {gw.cpu.get('cpu_gateway', 0) * 100:.0f}%,"
                f" bare process {base_cpu.get('cpu_bare', 0) * 100:.0f}%"
            ),
            extra={
                "workers": opts.workers,
                "connections": opts.get_connections,
                "seconds": r.seconds,
                "statuses": dict(r.statuses),
                "errors": r.errors,
                **gw.cpu,
            },
        ),
        Figure(section, "p50", r.p(50), "ms", baseline=base.p(50), direction="max"),
        Figure(
            section,
            "p99",
            r.p(99),
            "ms",
            baseline=base.p(99),
            target=25.0,
            direction="max",
            extra={"bare_cpu": base_cpu, "bare_statuses": dict(base.statuses)},
        ),
        *key_figures,
    ]


async def run_post_benchmark(stack: Stack, opts: ApiOptions) -> list[Figure]:
    assert stack.gateway is not None and stack.job is not None
    port = stack.gateway_port
    t0 = time.perf_counter()
    tokens = [stack.token(new_id("usr")) for _ in range(opts.post_users)]
    print(f"  minted {len(tokens)} user tokens in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    scene_ids = await stack.scenes_of(tokens)
    print(f"  uploaded a scene for each user in {time.perf_counter() - t0:.1f} s")
    posts = [_post_request(port, t, s) for t, s in zip(tokens, scene_ids, strict=True)]

    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + opts.post_warmup
    stop_at = measure_from + opts.post_duration
    post_lats: list[float] = []
    get_lats: list[float] = []
    statuses: Counter[int] = Counter()
    error_bodies: Counter[str] = Counter()
    ryw_failures: Counter[int] = Counter()
    created = 0
    errors = 0
    next_user = 0
    meter = CpuMeter([stack.gateway, stack.job])
    measured_started = 0.0

    async def client() -> None:
        nonlocal created, errors, next_user
        conn = Connection("127.0.0.1", port)
        perf = time.perf_counter
        try:
            while True:
                now = loop.time()
                if now >= stop_at or created >= opts.post_max_jobs:
                    return
                u = next_user % len(tokens)
                next_user += 1
                measuring = now >= measure_from
                t0 = perf()
                try:
                    status, body = await conn.request(posts[u])
                    t1 = perf()
                    if status != 201:
                        if measuring:
                            statuses[status] += 1
                            error_bodies[body[:160].decode(errors="replace")] += 1
                        continue
                    job_id = orjson.loads(body)["job_id"]
                    gstatus, _ = await conn.request(_get_request(port, job_id, tokens[u]))
                    t2 = perf()
                except (HttpError, OSError):
                    errors += 1
                    conn.close()
                    await asyncio.sleep(0.01)
                    continue
                if measuring:
                    statuses[status] += 1
                    created += 1
                    post_lats.append(t1 - t0)
                    get_lats.append(t2 - t1)
                    if gstatus != 200:
                        ryw_failures[gstatus] += 1
        finally:
            conn.close()

    async def start_meter() -> None:
        nonlocal measured_started
        await asyncio.sleep(opts.post_warmup)
        meter.start()
        measured_started = time.perf_counter()

    starter = asyncio.ensure_future(start_meter())
    await asyncio.gather(*(client() for _ in range(opts.post_clients)))
    await starter
    seconds = time.perf_counter() - measured_started
    cpu = meter.stop()
    post_lats.sort()
    get_lats.sort()
    rate = created / seconds if seconds > 0 else 0.0
    ryw = sum(ryw_failures.values())
    p50, p99 = percentile(post_lats, 50) * 1000, percentile(post_lats, 99) * 1000
    print(
        f"  POST /v1/jobs: {created} jobs in {seconds:.1f} s = {rate:,.0f} jobs/s with"
        f" {opts.post_clients} clients, {len(tokens)} users; POST p50 {p50:.1f} ms"
        f" p99 {p99:.1f} ms; GET-after-201 p50 {percentile(get_lats, 50) * 1000:.1f} ms"
    )
    print(f"    statuses {dict(statuses)}, connection errors {errors}")
    for text, n in error_bodies.most_common(3):
        print(f"    {n} x {text}")
    print(
        f"    read-your-writes: {ryw} of {created} GETs after a 201 did not answer 200"
        + (f" ({dict(ryw_failures)})" if ryw else "")
    )
    print(f"    {cpu_text(cpu)}")
    section = "2 POST job"
    return [
        Figure(
            section,
            "throughput",
            rate,
            "jobs/s",
            target=300.0,
            note=(
                f"{opts.post_clients} clients, {len(tokens)} users, {seconds:.0f} s after"
                f" {opts.post_warmup:.0f} s warm-up; each loop is POST then GET;"
                f" no Idempotency-Key; non-201: {sum(v for k, v in statuses.items() if k != 201)}"
            ),
            extra={
                "clients": opts.post_clients,
                "users": len(tokens),
                "jobs": created,
                "seconds": seconds,
                "statuses": dict(statuses),
                "connection_errors": errors,
                **cpu,
            },
        ),
        Figure(section, "POST p50", p50, "ms", direction="max"),
        Figure(section, "POST p99", p99, "ms", direction="max"),
        Figure(
            section,
            "read-your-writes failures",
            float(ryw),
            "GETs",
            target=0.0,
            direction="max",
            note=f"a GET right after each 201, on the same connection; {created} checked",
            extra={"by_status": dict(ryw_failures), "checked": created},
        ),
    ]
