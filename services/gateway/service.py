"""Wiring and start-up of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request
from nats.aio.msg import Msg

from contracts.errors import DomainError
from contracts.identity import (
    ApiKeyInfo,
    ApiKeyRevoked,
    RecordApiKeyUse,
    UserReactivated,
    UserSuspended,
)
from libs.bus.commands import Actor, CommandClient
from libs.logging import get_logger
from libs.operations import Operations
from libs.readmodels import billing as billing_queries
from libs.readmodels import fleet as fleet_queries
from libs.readmodels import identity as identity_queries
from libs.readmodels import jobs as job_queries
from libs.readmodels import notifications as notification_queries
from libs.readmodels import outputs as output_queries
from libs.readmodels import payments as payment_queries
from libs.readmodels import read_only_pool
from libs.readmodels import scenes as scene_queries
from libs.readmodels import uploads as upload_queries
from libs.readmodels import wallet as wallet_queries
from libs.readmodels.billing import BillingQuery
from libs.readmodels.fleet import FleetQuery
from libs.readmodels.identity import IdentityQuery
from libs.readmodels.jobs import JobsQuery
from libs.readmodels.notifications import NotificationsQuery
from libs.readmodels.outputs import OutputsQuery
from libs.readmodels.payments import PaymentsQuery
from libs.readmodels.quarantine import QuarantineQuery
from libs.readmodels.scenes import ScenesQuery
from libs.readmodels.uploads import UploadsQuery
from libs.readmodels.wallet import WalletQuery
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.gateway.actionlog import ActionLog
from services.gateway.app import create_app
from services.gateway.auth import Authenticator
from services.gateway.feed import ConnectionLimiter, FeedHub
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
        jobs = JobsQuery(read_pool, job_queries.SCHEMA, rt.registry)
        scenes = ScenesQuery(read_pool, scene_queries.SCHEMA)
        outputs = OutputsQuery(read_pool, output_queries.SCHEMA)
        self.read = ReadModels(jobs, identity, scenes, outputs)
        #: Upload sessions and manifests (the upload service's read models).
        self.uploads = UploadsQuery(read_pool, upload_queries.SCHEMA)
        #: Balances and transfers (the wallet service's read models).
        self.wallet = WalletQuery(read_pool, wallet_queries.SCHEMA)
        #: Top-up orders (the payments service's read model).
        self.payments = PaymentsQuery(read_pool, payment_queries.SCHEMA)
        #: Notifications, webhook endpoints and deliveries (the notifier's read models).
        self.notifications = NotificationsQuery(read_pool, notification_queries.SCHEMA)
        #: Prices, jobs' costs and lines, API keys' spend (the billing service's read models).
        self.billing = BillingQuery(read_pool, billing_queries.SCHEMA)
        #: The render fleet and its VM time (the scaler's read models).
        self.fleet = FleetQuery(read_pool, fleet_queries.SCHEMA)
        #: Every service's quarantined streams (the event store's tables).
        self.quarantine = QuarantineQuery(read_pool)
        #: The scene work queue and the bus's consumers, for operators.
        self.ops = Operations(
            redis, settings.redis_prefix, rt.js, settings.events_stream, settings.dlq_stream
        )
        #: The live feed: this process's follower of notifier.feed, and the per-user limit.
        self.feed = FeedHub(self.notifications, settings.sse_poll_seconds)
        self.streams = ConnectionLimiter(
            redis,
            settings.redis_prefix,
            settings.sse_connections_per_user,
            3 * settings.sse_heartbeat_seconds,
        )
        self.auth = Authenticator(settings, identity)
        self.limiter = RateLimiter(
            redis,
            settings.redis_prefix,
            lease_tokens=settings.rate_limit_lease_tokens,
            lease_seconds=settings.rate_limit_lease_seconds,
        )
        self.idempotency = IdempotencyStore(
            redis, settings.redis_prefix, settings.idempotency_ttl_seconds
        )
        self.action_log = ActionLog(
            rt.pool,
            rt.schema,
            flush_interval=settings.action_log_flush_seconds,
            retention_days=settings.action_log_retention_days,
        )
        #: Keys used since the last note, and when this process last noted each.
        self._keys_used: set[str] = set()
        self._key_noted: dict[str, float] = {}
        self._reconnects = 0
        self.app: FastAPI = create_app(self)

    def anonymous_actor(self, request: Request) -> Actor:
        client = request.client
        return Actor(kind="anonymous", id=client.host if client else "unknown")

    def note_api_key_use(self, key_id: str) -> None:
        """Remember that the key was used; :meth:`record_key_uses` notes it, off the request
        path, at most once a minute per key (per process here, across processes in Redis)."""
        noted = self._key_noted.get(key_id)
        if noted is None or time.monotonic() - noted >= 60:
            self._keys_used.add(key_id)

    async def record_key_uses(self) -> None:
        if not self._keys_used:
            return
        used, self._keys_used = self._keys_used, set()
        now = time.monotonic()
        if len(self._key_noted) > 10_000:
            self._key_noted = {k: t for k, t in self._key_noted.items() if now - t < 60}
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        prefix = self.settings.redis_prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in used:
                pipe.set(f"{prefix}:keyuse:{key_id}", "1", nx=True, ex=60)
            won = await pipe.execute()
        for key_id in used:
            self._key_noted[key_id] = now
        sends = [
            self._send_key_use(key_id, minute)
            for key_id, first in zip(used, won, strict=True)
            if first
        ]
        await asyncio.gather(*sends)

    async def _send_key_use(self, key_id: str, minute: datetime) -> None:
        try:
            await self.commands.send(
                RecordApiKeyUse(key_id=key_id, used_at=minute),
                ApiKeyInfo,
                command_id=f"keyuse:{key_id}:{minute.isoformat()}",
                actor=Actor(kind="service", id="gateway"),
            )
        except DomainError as e:
            log.warning("api_key_use_not_recorded", key_id=key_id, code=e.code)

    async def run_key_uses(self, stopping: asyncio.Event) -> None:
        """Background task: note the keys used, every ``api_key_use_flush_seconds``."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.api_key_use_flush_seconds)
            await self.record_key_uses()

    async def on_identity_event(self, msg: Msg) -> None:
        """identity's ``ApiKeyRevoked``, ``UserSuspended`` and ``UserReactivated``, straight
        off the bus: refuse the key or the user at once (or accept the user again)."""
        try:
            body = orjson.loads(msg.data)
            event_type, data = str(body["type"]), body["data"]
            if event_type == ApiKeyRevoked.event_type:
                self.auth.revoked(str(data["key_id"]))
            elif event_type == UserSuspended.event_type:
                self.auth.suspended(str(data["user_id"]))
            elif event_type == UserReactivated.event_type:
                self.auth.reactivated(str(data["user_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("bad_identity_message", subject=msg.subject)

    async def check_reconnects(self) -> None:
        """Events may have been missed while NATS was away: drop every cached key and read
        the suspended users again."""
        reconnects = int(self.rt.nc.stats.get("reconnects", 0))
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.auth.forget()
            await self.auth.load_suspended()

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
    rt.background("api-key-use", gw.run_key_uses)
    rt.background("feed", gw.feed.run)
    # Revocations and suspensions pushed by identity's relay (core subscriptions on the
    # events subjects: every gateway process gets each one), then the suspended users as
    # the read model has them. After a reconnect the key cache is dropped and they are
    # read again.
    for event in (ApiKeyRevoked, UserSuspended, UserReactivated):
        sub = await rt.nc.subscribe(
            settings.subject(f"events.{event.event_type}"), cb=gw.on_identity_event
        )
        rt.on_close(sub.unsubscribe)
    await gw.auth.load_suspended()
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
            sock = bind_socket(
                settings.gateway_host, settings.gateway_port, settings.gateway_reuse_port
            )
            await server.serve(sockets=[sock])
        finally:
            served.set()

    async def stop_http() -> None:
        gw.feed.close()  # live feed streams end, so they do not hold the stop
        server.should_exit = True
        if serving:  # serve() returns once in-flight requests are answered
            await served.wait()

    rt.front_door(serve_http, stop_http)
    return gw


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The HTTP port; with ``reuse_port`` several worker processes bind it (SO_REUSEPORT) and
    the kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


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
    migrations=Path(__file__).parent / "migrations",
    secrets=frozenset({"jwt_keys", "token_pepper"}),
    records_events=False,  # its action log is a table
)
