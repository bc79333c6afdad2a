"""Wiring and start-up of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request

from contracts.errors import DomainError
from contracts.identity import ApiKeyInfo, RecordApiKeyUse
from libs.bus.commands import Actor, CommandClient
from libs.logging import get_logger
from libs.readmodels import identity as identity_queries
from libs.readmodels import jobs as job_queries
from libs.readmodels import read_only_pool
from libs.readmodels.identity import IdentityQuery
from libs.readmodels.jobs import JobsQuery
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.gateway.actionlog import ActionLog
from services.gateway.app import create_app
from services.gateway.auth import Authenticator
from services.gateway.idempotency import IdempotencyStore
from services.gateway.ratelimit import RateLimiter
from services.gateway.readmodels import ReadModels
from services.gateway.settings import GatewaySettings

log = get_logger(__name__)


class Gateway:
    """Everything the routes need, built once at start-up."""

    def __init__(
        self,
        settings: GatewaySettings,
        rt: ServiceRuntime[Gateway],
        redis: aioredis.Redis,
        read_pool: asyncpg.Pool,
    ) -> None:
        self.settings = settings
        self.rt = rt
        self.redis = redis
        self.commands = CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds)
        #: Read-only connections for the owners' read models (their query modules, ADR 0007).
        self.read_pool = read_pool
        identity = IdentityQuery(read_pool, identity_queries.SCHEMA)
        self.read = ReadModels(JobsQuery(read_pool, job_queries.SCHEMA), identity)
        self.auth = Authenticator(settings, identity)
        self.limiter = RateLimiter(redis, settings.redis_prefix)
        self.idempotency = IdempotencyStore(
            redis, settings.redis_prefix, settings.idempotency_ttl_seconds
        )
        self.action_log = ActionLog(rt.store)
        self._key_use_tasks: set[asyncio.Task[None]] = set()
        self.app: FastAPI = create_app(self)

    def anonymous_actor(self, request: Request) -> Actor:
        client = request.client
        return Actor(kind="anonymous", id=client.host if client else "unknown")

    def note_api_key_use(self, key_id: str) -> None:
        """Record the key's last use, at most once a minute per key (throttled in Redis)."""
        task = asyncio.create_task(self._record_key_use(key_id))
        self._key_use_tasks.add(task)
        task.add_done_callback(self._key_use_tasks.discard)

    async def _record_key_use(self, key_id: str) -> None:
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        if not await self.redis.set(
            f"{self.settings.redis_prefix}:keyuse:{key_id}", "1", nx=True, ex=60
        ):
            return
        try:
            await self.commands.send(
                RecordApiKeyUse(key_id=key_id, used_at=minute),
                ApiKeyInfo,
                command_id=f"keyuse:{key_id}:{minute.isoformat()}",
                actor=Actor(kind="service", id="gateway"),
            )
        except DomainError as e:
            log.warning("api_key_use_not_recorded", key_id=key_id, code=e.code)

    async def ready(self) -> tuple[bool, str]:
        return await self.rt.ready()


async def wire(rt: ServiceRuntime[Gateway]) -> Gateway:
    settings = rt.settings
    assert isinstance(settings, GatewaySettings)
    redis = aioredis.from_url(settings.redis_url)
    rt.on_close(redis.aclose)
    read_pool = await read_only_pool(settings.database_url, max_size=settings.db_pool_size)
    rt.on_close(read_pool.close)
    gw = Gateway(settings, rt, redis, read_pool)
    rt.background("action-log", gw.action_log.run)
    rt.readiness_checks.append(_redis_check(redis))
    rt.readiness_checks.append(_pool_check(read_pool))
    server = _Server(
        uvicorn.Config(
            gw.app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            loop="none",
            http="httptools",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
    )

    served = asyncio.Event()
    serving = False

    async def serve_http(stopping: asyncio.Event) -> None:
        nonlocal serving
        serving = True
        try:
            await server.serve()
        finally:
            served.set()

    async def stop_http() -> None:
        server.should_exit = True
        if serving:  # serve() returns once in-flight requests are answered
            await served.wait()

    rt.front_door(serve_http, stop_http)
    return gw


def _pool_check(pool: asyncpg.Pool) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        try:
            async with pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as e:
            return f"read-only database pool: {e!r}"
        return None

    return check


def _redis_check(redis: aioredis.Redis) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        try:
            await redis.ping()
        except Exception as e:
            return f"redis: {e!r}"
        return None

    return check


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime stops it first, then flushes and
    closes the rest (uvicorn would re-raise SIGTERM after serving and kill the process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


SERVICE = Service(
    name="gateway",
    schema="gateway",
    settings=GatewaySettings,
    wire=wire,
    secrets=frozenset({"jwt_keys", "token_pepper"}),
)
