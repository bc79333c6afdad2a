"""18. The notifier: event -> webhook latency at a paced rate, SSE fan-out, CPU per notification.

The notifier runs as its own process (``python -m services.notifier``, as ``make up`` runs
it) on a fresh database, with ``RF_NOTIFIER_WEBHOOK_ALLOW_HTTP`` and
``RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` on so its endpoints can be
``http://127.0.0.1``, and a fresh ``RF_NOTIFIER_WEBHOOK_SECRETS_KEY``. The bench publishes
``upload.UploadExpired`` events onto JetStream as a relay does (each makes one
``upload.expired`` notification for the upload's owner), with e-mail turned off in every
bench user's preferences (there is no SMTP server here); in-app and webhook stay on, so each
event also makes a live-feed item.

a. **Webhooks**: ``endpoints`` users, each with one endpoint on a minimal HTTP/1.1 receiver
   in this process (keep-alive, 204). Events go round-robin over the users at ``rate`` a
   second for ``seconds``, each publish on its own task at its due time. Latency = the
   publish's start here -> the POST's arrival at the receiver, matched by the body's
   ``upload_id``; every event must arrive once (``webhook-id`` unique, nothing lost), and a
   sample of messages is verified with the ``standardwebhooks`` package as they arrive.
   Each latency is split where the consumer committed the ``NotificationCreated`` (its
   ``recorded_at``, the database's clock). A notifier that falls behind is waited for as
   long as webhooks keep arriving (30 s without one ends it), so a backlog shows in full.
b. **CPU per 1,000 notifications**: the notifier process's user + system CPU seconds
   (``/proc``) from the first publish of (a) until its ``deliveries`` read model shows every
   delivery succeeded, per 1,000 notifications.
c. **SSE fan-out**: identity and the gateway (``workers`` processes, one port) join the same
   stack; ``sse_clients`` connections to ``GET /v1/events/stream`` (raw asyncio streams),
   ``RF_GATEWAY_SSE_CONNECTIONS_PER_USER`` (5, the default) per user, so spread over
   ``sse_clients / 5`` users. Then events go round-robin over those users at ``sse_rate`` a
   second; latency = publish -> the ``notification.created`` item's arrival at each of its
   user's connections (split at the ``NotificationCreated`` too); every connection must
   get each of its user's items once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson
from nats.aio.client import Client
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.api_bench import wait_http_ok
from bench.cpu import CpuMeter, cpu_text
from bench.infra import Child, Infra, Servers
from bench.report import Figure, percentile
from contracts.notifications import (
    KindChannelsChange,
    NotificationKind,
    NotificationPreferences,
    RegisterWebhookEndpoint,
    SetNotificationPreferences,
    WebhookEndpointSecret,
)
from contracts.uploads import UploadExpired
from libs.auth import issue_access_token
from libs.bus.commands import Actor, CommandClient
from libs.bus.nats import connect
from libs.config import BaseServiceSettings
from services.gateway.settings import GatewaySettings

SECTION = "18"
#: The aims: a webhook and a live-feed item within a second of the event, at p99.
TARGET_WEBHOOK_P99 = 1.0
TARGET_SSE_P99 = 1.0
#: The gateway's default connections per user (``RF_GATEWAY_SSE_CONNECTIONS_PER_USER``).
SSE_PER_USER = 5
ACTOR = Actor(kind="cli", id="bench")
KIND = NotificationKind.upload_expired


@dataclass(frozen=True)
class NotifierBenchOptions:
    rate: float = 500.0
    seconds: float = 20.0
    #: Users with one webhook endpoint each (each endpoint has one POST in flight at once).
    endpoints: int = 100
    sse_clients: int = 1000
    #: Below the consumer's measured rate on a 2-core machine (docs/notifications.md), so
    #: the figure is the fan-out's and not a backlog's.
    sse_rate: float = 20.0
    sse_seconds: float = 15.0
    #: Gateway worker processes.
    workers: int = 2
    #: Signed messages verified with ``standardwebhooks``.
    verify_sample: int = 200


@dataclass
class Receiver:
    """A minimal webhook receiver: HTTP/1.1 keep-alive, every POST answered 204. Keeps the
    first arrival of each event (by the body's ``upload_id``); verifies every
    ``sample_every``-th message's signature with ``standardwebhooks`` as it arrives (the
    library refuses timestamps more than 5 minutes off)."""

    sample_every: int = 1
    #: Each user's endpoint secret.
    secrets: dict[str, str] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)
    ids: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    refused: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, user: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{user}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                lines = head.decode("latin-1").split("\r\n")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if value:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self._received(lines[0].split(" ")[1], headers, body, now)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _received(self, path: str, headers: dict[str, str], body: bytes, now: float) -> None:
        self.ids[headers.get("webhook-id", "")] += 1
        upload_id = orjson.loads(body)["data"]["upload_id"]
        self.arrived.setdefault(upload_id, now)
        if len(self.arrived) % self.sample_every == 0:
            try:
                Webhook(self.secrets[path.rsplit("/", 1)[-1]]).verify(body, headers)
                self.verified += 1
            except WebhookVerificationError:
                self.refused += 1

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class Publisher:
    """Publishes events onto JetStream as a relay does (one message per event)."""

    def __init__(self, nc: Client, settings: BaseServiceSettings) -> None:
        self.js = nc.jetstream()
        self.settings = settings

    async def publish(self, upload_id: str, user: str) -> None:
        event = UploadExpired(upload_id=upload_id, owner_id=user, at=datetime.now(UTC))
        event_id = uuid.uuid4()
        body = orjson.dumps(
            {
                "event_id": str(event_id),
                "stream_id": f"upload-{upload_id}",
                "version": 1,
                "type": event.event_type,
                "schema_version": event.schema_version,
                "position": 1,
                "recorded_at": datetime.now(UTC).isoformat(),
                "data": event.model_dump(mode="json"),
                "metadata": {"correlation_id": f"bench:{upload_id}"},
            }
        )
        subject = self.settings.subject(f"events.{event.event_type}")
        await self.js.publish(subject, body, headers={"Nats-Msg-Id": str(event_id)})

    async def paced(
        self, prefix: str, users: list[str], rate: float, seconds: float
    ) -> dict[str, float]:
        """Publish ``rate * seconds`` events round-robin over ``users``, each on its own task
        at its due time; the time each publish started, by upload id."""
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        sent: dict[str, float] = {}
        tasks: set[asyncio.Task[None]] = set()
        start = loop.time()
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            upload_id = f"upl_{prefix}{i}"
            sent[upload_id] = time.time()
            task = asyncio.create_task(self.publish(upload_id, users[i % len(users)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        return sent


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    """p50, p99, max and the mean of ``values`` (nan when empty)."""
    ordered = sorted(values)
    if not ordered:
        return (math.nan,) * 4
    return (
        percentile(ordered, 50),
        percentile(ordered, 99),
        ordered[-1],
        sum(ordered) / len(ordered),
    )


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> bool:
    """Whether ``check`` came true within ``timeout`` (checked every 50 ms); says so if not."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            print(f"  (gave up waiting for {what} after {timeout:.0f} s)", flush=True)
            return False
        await asyncio.sleep(0.05)
    return True


async def _until_stalled(count: Callable[[], int], total: int, stall: float, what: str) -> bool:
    """Whether ``count()`` reached ``total``; gives up once it has not moved for ``stall`` s."""
    last, since = count(), time.monotonic()
    while (n := count()) < total:
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > stall:
            print(f"  (gave up waiting for {what}: {n:,} of {total:,}, none for {stall:g} s)")
            return False
        await asyncio.sleep(0.05)
    return True


async def _transactions(pool: asyncpg.Pool) -> int:
    """Transactions committed in this database so far (PostgreSQL's statistics)."""
    count: int = await pool.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return count


async def run_notifier(infra: Infra, servers: Servers, opts: NotifierBenchOptions) -> list[Figure]:
    from deploy.local.servers import free_port

    dsn = await infra.create_database("notifier")
    prefix = f"b{infra.tag}n"
    keys = {"k1": secrets.token_hex(32)}
    env = {
        "RF_DATABASE_URL": dsn,
        "RF_NATS_URL": servers.nats_url,
        "RF_NATS_PREFIX": prefix,
        "RF_REDIS_URL": servers.redis_url,
        "RF_REDIS_PREFIX": prefix,
        "RF_LOG_LEVEL": "WARNING",
        "RF_JWT_KEYS": json.dumps(keys),
        "RF_JWT_ACTIVE_KID": "k1",
        "RF_TOKEN_PEPPER": secrets.token_hex(32),
    }
    health = free_port()
    notifier = infra.spawn(
        "notifier",
        ["-m", "services.notifier"],
        {
            **env,
            "RF_HEALTH_PORT": str(health),
            "RF_NOTIFIER_WEBHOOK_ALLOW_HTTP": "true",
            "RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            "RF_NOTIFIER_WEBHOOK_SECRETS_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
    )
    children = [notifier]
    await wait_http_ok(health, "/readyz", 60, notifier)
    settings = BaseServiceSettings(
        nats_url=servers.nats_url, nats_prefix=prefix, service_name="bench"
    )
    nc = await connect(settings, "bench")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        commands = CommandClient(nc, settings, timeout=30)
        publisher = Publisher(nc, settings)
        figures = await _webhooks(opts, notifier, commands, publisher, pool)
        sse_users = [f"usr_sse{i}" for i in range(math.ceil(opts.sse_clients / SSE_PER_USER))]
        await _gather_limited([_email_off(commands, u) for u in sse_users], 32)
        gateway_port, gateway = await _start_gateway(infra, env, opts.workers, children)
        token_settings = GatewaySettings(jwt_keys=keys, jwt_active_kid="k1", token_pepper="x" * 32)
        tokens = {u: issue_access_token(token_settings, u, "user") for u in sse_users}
        figures += await _fan_out(opts, gateway_port, gateway, notifier, tokens, publisher, pool)
    finally:
        await pool.close()
        await nc.close()
        for child in reversed(children):
            infra.stop_child(child)
    return figures


async def _gather_limited(calls: list[Awaitable[object]], limit: int) -> None:
    slots = asyncio.Semaphore(limit)

    async def one(call: Awaitable[object]) -> None:
        async with slots:
            await call

    await asyncio.gather(*(one(c) for c in calls))


async def _email_off(commands: CommandClient, user: str) -> None:
    cmd = SetNotificationPreferences(user_id=user, changes={KIND: KindChannelsChange(email=False)})
    await commands.send(cmd, NotificationPreferences, command_id=f"bench-prefs:{user}", actor=ACTOR)


async def _register(commands: CommandClient, user: str, url: str) -> str:
    """The endpoint's secret, after turning the user's e-mail off."""
    await _email_off(commands, user)
    cmd = RegisterWebhookEndpoint(
        user_id=user, endpoint_id=f"whk_bench{user}", url=url, kinds=[KIND]
    )
    endpoint = await commands.send(
        cmd, WebhookEndpointSecret, command_id=f"bench-register:{user}", actor=ACTOR
    )
    return endpoint.secret


async def _created(pool: asyncpg.Pool) -> dict[str, float]:
    """When the consumer committed each upload's notification (the database's clock)."""
    rows = await pool.fetch(
        "SELECT data->'payload'->>'upload_id' AS upload_id, recorded_at FROM notifier.events"
        " WHERE type = 'notifier.NotificationCreated'"
    )
    return {r["upload_id"]: r["recorded_at"].timestamp() for r in rows}


Stats = tuple[float, float, float, float]


def _hops(
    sent: dict[str, float], created: dict[str, float], arrivals: list[tuple[str, float]]
) -> tuple[Stats, Stats]:
    """The two hops' stats: publish -> notification committed (the consumer), and
    committed -> each arrival (the sender, or the feed's projection and the gateway)."""
    made = [created[u] - t for u, t in sent.items() if u in created]
    out = [t - created[u] for u, t in arrivals if u in created]
    return _stats(made), _stats(out)


def _hops_text(hops: tuple[Stats, Stats], out: str) -> str:
    a, b = hops
    return (
        f"publish -> NotificationCreated p50 {a[0] * 1000:.0f} / p99 {a[1] * 1000:.0f} ms,"
        f" -> {out} p50 {b[0] * 1000:.0f} / p99 {b[1] * 1000:.0f} ms"
    )


async def _succeeded(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM notifier.deliveries WHERE status = 'succeeded'"
    )
    return count


async def _webhooks(
    opts: NotifierBenchOptions,
    notifier: Child,
    commands: CommandClient,
    publisher: Publisher,
    pool: asyncpg.Pool,
) -> list[Figure]:
    total = int(opts.rate * opts.seconds)
    receiver = Receiver(sample_every=max(1, total // opts.verify_sample))
    await receiver.start()
    try:
        users = [f"usr_hook{i}" for i in range(opts.endpoints)]
        receiver.secrets = dict(
            zip(
                users,
                await asyncio.gather(*(_register(commands, u, receiver.url(u)) for u in users)),
                strict=True,
            )
        )
        # Warm-up: one event per user, so every endpoint's connection is open.
        await asyncio.gather(*(publisher.publish(f"upl_warm{i}", u) for i, u in enumerate(users)))

        async def warm() -> bool:
            return len(receiver.arrived) >= len(users) and await _succeeded(pool) >= len(users)

        if not await _until(warm, 60, "the warm-up deliveries"):
            raise RuntimeError("the warm-up webhooks did not all arrive")
        receiver.arrived.clear()
        receiver.ids.clear()
        receiver.verified = receiver.refused = 0
        print(
            f"  {len(users)} endpoints warm; publishing {total:,} events at {opts.rate:g}/s"
            f" for {opts.seconds:g} s ...",
            flush=True,
        )
        meter = CpuMeter([notifier])
        cpu0 = notifier.cpu_seconds()
        tx0 = await _transactions(pool)
        meter.start()
        started = time.time()
        sent = await publisher.paced("bench", users, opts.rate, opts.seconds)
        published_in = time.time() - started
        await _until_stalled(lambda: len(receiver.arrived), total, 30, "every webhook")
        arrived_in = max(receiver.arrived.values(), default=started) - started

        async def all_recorded() -> bool:
            return await _succeeded(pool) >= len(users) + len(receiver.arrived)

        await _until(all_recorded, 60, "every delivery recorded as succeeded")
        cpu = meter.stop()
        cpu_seconds = notifier.cpu_seconds() - cpu0
        succeeded = await _succeeded(pool) - len(users)
        transactions = await _transactions(pool) - tx0
        created = await _created(pool)
    finally:
        await receiver.stop()

    consumed_in = max((created.get(u, 0.0) for u in sent), default=started) - started
    latencies = [receiver.arrived[u] - t for u, t in sent.items() if u in receiver.arrived]
    lost = total - len(latencies)
    duplicates = sum(n - 1 for n in receiver.ids.values())
    verified, refused = receiver.verified, receiver.refused
    p50, p99, worst, mean = _stats(latencies)
    delivered_rate = len(latencies) / arrived_in if arrived_in > 0 else math.nan
    print(
        f"  published {total:,} in {published_in:.1f} s ({total / published_in:,.0f}/s);"
        f" {len(latencies):,} arrived in {arrived_in:.1f} s ({delivered_rate:,.0f}/s),"
        f" {lost} lost, {duplicates} duplicates"
    )
    print(
        f"  event -> webhook: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
        f" max {worst * 1000:.0f} ms, mean {mean * 1000:.0f} ms"
    )
    hops = _hops(sent, created, list(receiver.arrived.items()))
    print(f"  split: {_hops_text(hops, 'webhook')};")
    print(f"    the consumer made the notifications at {total / consumed_in:,.0f}/s")
    print(f"  signatures: {verified} verified with standardwebhooks, {refused} refused")
    print(f"  {cpu_text(cpu)}")
    per_1000 = cpu_seconds / succeeded * 1000 if succeeded else math.nan
    per_notification = transactions / succeeded if succeeded else math.nan
    print(
        f"  notifier CPU: {cpu_seconds:.1f} s for {succeeded:,} notifications"
        f" ({per_1000:.2f} s per 1,000); {per_notification:.0f} PostgreSQL transactions"
        " per notification"
    )
    setup = (
        f"{total:,} upload.UploadExpired at {opts.rate:g}/s over {opts.endpoints} users, one"
        " endpoint each (one POST in flight per endpoint, the default), e-mail off"
    )
    name = "event -> webhook"
    return [
        Figure(SECTION, f"{name}, p50", p50, "s", note=setup),
        Figure(SECTION, f"{name}, p99", p99, "s", target=TARGET_WEBHOOK_P99, direction="max"),
        Figure(SECTION, f"{name}, max", worst, "s"),
        Figure(
            SECTION,
            "events published/s (paced)",
            total / published_in,
            "/s",
            target=opts.rate * 0.98,
        ),
        Figure(
            SECTION,
            "webhooks delivered/s (sustained)",
            delivered_rate,
            "/s",
            target=opts.rate * 0.98,
            note=f"first publish -> last arrival; the consumer made notifications at"
            f" {total / consumed_in:,.0f}/s",
        ),
        Figure(
            SECTION,
            "event -> NotificationCreated (consumer), p99",
            hops[0][1],
            "s",
            note=f"p50 {hops[0][0] * 1000:.0f} ms: the notifier's consumer and its commit",
        ),
        Figure(
            SECTION,
            "NotificationCreated -> webhook (sender), p99",
            hops[1][1],
            "s",
            note=f"p50 {hops[1][0] * 1000:.0f} ms: the deliveries projection, the sender's"
            " look, the POST",
        ),
        Figure(
            SECTION,
            "webhooks lost or twice",
            float(lost + duplicates + refused),
            "",
            target=0.0,
            direction="max",
            note=f"{lost} lost, {duplicates} received twice, {refused} of {verified + refused}"
            " sampled signatures refused by standardwebhooks",
        ),
        Figure(
            SECTION,
            "notifier CPU per 1,000 notifications",
            per_1000,
            "s",
            note=f"user+sys of the notifier process, first publish -> every delivery recorded"
            f" ({cpu_seconds:.1f} s for {succeeded:,}); in-app + webhook, e-mail off;"
            f" {per_notification:.0f} database transactions each; no target set",
        ),
    ]


async def _start_gateway(
    infra: Infra, env: dict[str, str], workers: int, children: list[Child]
) -> tuple[int, Child]:
    """Identity (the gateway reads its users table) and the gateway's worker processes,
    added to ``children``."""
    from deploy.local.servers import free_port

    health = free_port()
    identity = infra.spawn(
        "notifier-identity", ["-m", "services.identity"], {**env, "RF_HEALTH_PORT": str(health)}
    )
    children.append(identity)
    await wait_http_ok(health, "/readyz", 60, identity)
    port, health = free_port(), free_port()
    gateway = infra.spawn(
        "notifier-gateway",
        ["-m", "services.gateway"],
        {
            **env,
            "RF_GATEWAY_PORT": str(port),
            "RF_GATEWAY_WORKERS": str(workers),
            "RF_HEALTH_PORT": str(health),
            "RF_RATE_LIMIT_USER_PER_SECOND": "1000000",
            "RF_RATE_LIMIT_USER_BURST": "1000000",
        },
    )
    children.append(gateway)
    await wait_http_ok(health, "/readyz", 60, gateway)
    await wait_http_ok(port, "/readyz", 60, gateway)
    return port, gateway


class SseClient:
    """One ``GET /v1/events/stream`` connection on raw asyncio streams (chunked SSE)."""

    def __init__(self, port: int, user: str, token: str) -> None:
        self.port = port
        self.user = user
        self.token = token
        #: upload id -> arrival time of its ``notification.created`` item.
        self.arrived: dict[str, float] = {}
        self.twice = 0
        self.connected = asyncio.Event()
        self.error: str | None = None

    async def run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(
                (
                    f"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
                ).encode()
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            if not head.startswith("HTTP/1.1 200"):
                raise RuntimeError(head.split("\r\n", 1)[0])
            if "transfer-encoding: chunked" not in head.lower():
                raise RuntimeError("the stream is not chunked")
            self.connected.set()
            buf = b""
            while True:
                size = int((await reader.readline()).strip() or b"0", 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return
                buf += chunk[:-2]
                *events, buf = buf.replace(b"\r\n", b"\n").split(b"\n\n")
                now = time.time()
                for event in events:
                    self._event(event, now)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            self.connected.set()
        finally:
            if writer is not None:
                writer.close()

    def _event(self, event: bytes, now: float) -> None:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                item = orjson.loads(line[5:])
                if item["type"] != "notification.created":
                    return
                upload_id = item["data"]["payload"]["upload_id"]
                if upload_id in self.arrived:
                    self.twice += 1
                else:
                    self.arrived[upload_id] = now


async def _fan_out(
    opts: NotifierBenchOptions,
    port: int,
    gateway: Child,
    notifier: Child,
    tokens: dict[str, str],
    publisher: Publisher,
    pool: asyncpg.Pool,
) -> list[Figure]:
    users = list(tokens)
    clients = [
        SseClient(port, users[i % len(users)], tokens[users[i % len(users)]])
        for i in range(opts.sse_clients)
    ]
    tasks: list[asyncio.Task[None]] = []
    opened = time.perf_counter()
    try:
        for n in range(0, len(clients), 50):  # 50 at a time
            batch = clients[n : n + 50]
            tasks += [asyncio.create_task(c.run()) for c in batch]
            await asyncio.gather(*(c.connected.wait() for c in batch))
        failed = [c.error for c in clients if c.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed to open, e.g. {failed[0]}")
        print(
            f"  {len(clients)} streams open over {len(users)} users"
            f" ({SSE_PER_USER} each) in {time.perf_counter() - opened:.1f} s;"
            f" publishing {int(opts.sse_rate * opts.sse_seconds):,} events at"
            f" {opts.sse_rate:g}/s for {opts.sse_seconds:g} s ...",
            flush=True,
        )
        meter = CpuMeter([gateway, notifier])
        meter.start()
        sent = await publisher.paced("sse", users, opts.sse_rate, opts.sse_seconds)
        owner = {u: users[i % len(users)] for i, u in enumerate(sent)}
        expected = {u: {x for x, o in owner.items() if o == u} for u in users}

        async def all_arrived() -> bool:
            return all(expected[c.user] <= c.arrived.keys() for c in clients)

        await _until(all_arrived, 60, "every item at every stream")
        cpu = meter.stop()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    created = await _created(pool)
    latencies = [
        c.arrived[u] - sent[u] for c in clients for u in expected[c.user] if u in c.arrived
    ]
    wanted = sum(len(expected[c.user]) for c in clients)
    missing = wanted - len(latencies)
    twice = sum(c.twice for c in clients)
    broken = sum(c.error is not None for c in clients)
    p50, p99, worst, mean = _stats(latencies)
    print(
        f"  {len(latencies):,} of {wanted:,} items arrived ({missing} missing, {twice} twice,"
        f" {broken} streams broke): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
        f" max {worst * 1000:.0f} ms, mean {mean * 1000:.0f} ms"
    )
    hops = _hops(sent, created, [(u, t) for c in clients for u, t in c.arrived.items()])
    print(f"  split: {_hops_text(hops, 'SSE client')}")
    print(f"  {cpu_text(cpu)}")
    setup = (
        f"{opts.sse_clients} connections, {len(users)} users x {SSE_PER_USER} (the default"
        f" per-user limit), {opts.workers} gateway workers; {len(sent):,} events at"
        f" {opts.sse_rate:g}/s = {len(sent) * SSE_PER_USER / opts.sse_seconds:,.0f} items/s out;"
        f" RF_GATEWAY_SSE_POLL_SECONDS 0.1"
    )
    name = "event -> SSE client"
    return [
        Figure(SECTION, f"{name}, p50", p50, "s", note=setup),
        Figure(SECTION, f"{name}, p99", p99, "s", target=TARGET_SSE_P99, direction="max"),
        Figure(SECTION, f"{name}, max", worst, "s"),
        Figure(
            SECTION,
            "NotificationCreated -> SSE client (fan-out), p99",
            hops[1][1],
            "s",
            note=f"p50 {hops[1][0] * 1000:.0f} ms: the feed projection, the gateway's poll"
            f" of notifier.feed, the write to each connection; the consumer's hop p50"
            f" {hops[0][0] * 1000:.0f} / p99 {hops[0][1] * 1000:.0f} ms",
        ),
        Figure(
            SECTION,
            "SSE items lost or twice",
            float(missing + twice),
            "",
            target=0.0,
            direction="max",
            note=f"{missing} missing, {twice} twice, {broken} of {len(clients)} streams broke",
        ),
    ]
