"""Service runtime: connections, background work, health and readiness, graceful stop.

Stop order (on SIGTERM/SIGINT): stop taking commands and let those in flight finish; stop
consumers after their current message; give tailers (projections, relay) a last catch-up so
everything committed is projected and published; then close NATS and the database pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus.commands import CommandServer
from libs.bus.consumer import DurableConsumer, Handler
from libs.bus.nats import connect, ensure_streams
from libs.bus.relay import Relay
from libs.config import BaseServiceSettings
from libs.eventstore.processor import Projection, Projector, Tailer
from libs.eventstore.projection import quarantined_streams
from libs.eventstore.store import EventStore, create_pool
from libs.logging import configure_logging, get_logger
from libs.migrations import Migration, declared_plan, migrate
from libs.tracing import configure_tracing

log = get_logger(__name__)

Background = Callable[[asyncio.Event], Awaitable[None]]


class ServiceRuntime:
    def __init__(
        self,
        settings: BaseServiceSettings,
        schema: str,
        *,
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        #: What ``start`` applies; by default the event store's and those of the service
        #: declared with this schema (``libs.service.declared``).
        self.migrations = migrations
        self.stopping = asyncio.Event()
        self.tailers: list[Tailer] = []
        self.consumers: list[DurableConsumer] = []
        self.command_servers: list[CommandServer] = []
        self._background: list[tuple[str, Background]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._health: asyncio.Server | None = None
        self._consumer_stop = asyncio.Event()  # consumers stop before the tailers
        #: Extra readiness checks; each returns None when fine, else what is wrong.
        self.readiness_checks: list[Callable[[], Awaitable[str | None]]] = []
        self.pool: asyncpg.Pool
        self.nc: Client
        self.js: JetStreamContext
        self.store: EventStore

    async def start(self, *, relay: bool = True) -> None:
        configure_logging(self.settings.service_name, self.settings.log_level)
        configure_tracing(self.settings.service_name, self.settings.otel_exporter)
        self.pool = await create_pool(
            self.settings.database_url, max_size=self.settings.db_pool_size
        )
        self.store = EventStore(self.pool, self.schema)
        # The event store's migrations and the service's, under a lock per schema.
        await migrate(self.pool, self.schema, self.migrations or declared_plan(self.schema))
        self.nc = await connect(self.settings, self.settings.service_name)
        self.js = self.nc.jetstream(timeout=5)
        await ensure_streams(self.js, self.settings)
        if relay:
            self.tailers.append(Relay(self.store, self.js, self.settings))

    async def projector(self, projection: Projection) -> Projector:
        """Run ``projection`` (its tables come from the service's migrations)."""
        p = Projector(self.store, projection)
        self.tailers.append(p)
        return p

    def command_server(self, read_your_writes: Sequence[Tailer] = ()) -> CommandServer:
        server = CommandServer(
            self.nc, self.store, self.settings, read_your_writes=read_your_writes
        )
        self.command_servers.append(server)
        return server

    def consumer(
        self, durable: str, subjects: Sequence[str], handler: Handler, **kw: object
    ) -> DurableConsumer:
        c = DurableConsumer(self.nc, self.js, self.settings, durable, subjects, handler, **kw)  # type: ignore[arg-type]
        self.consumers.append(c)
        return c

    def background(self, name: str, fn: Background) -> None:
        self._background.append((name, fn))

    # -- running ------------------------------------------------------------------------

    async def launch(self) -> None:
        """Start every background task and command server (without waiting for a signal)."""
        for t in self.tailers:
            self._spawn(f"tailer:{t.name}", t.run(self.stopping))
        for c in self.consumers:
            self._spawn(f"consumer:{c.durable}", c.run(self._consumer_stop))
        for name, fn in self._background:
            self._spawn(name, fn(self.stopping))
        for s in self.command_servers:
            await s.start()
        if self.settings.health_port:
            self._health = await asyncio.start_server(
                self._serve_health, "127.0.0.1", self.settings.health_port
            )
        log.info("service_started", schema=self.schema)

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def serve(self) -> None:
        """Launch, then run until SIGTERM or SIGINT, then stop gracefully."""
        await self.launch()
        loop = asyncio.get_running_loop()
        got_signal = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, got_signal.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        await got_signal.wait()
        await self.stop()

    async def stop(self) -> None:
        log.info("service_stopping")
        for s in self.command_servers:
            await s.stop()
        self._consumer_stop.set()
        self.stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
        for t in self.tailers:  # a last catch-up: nothing committed stays unprojected
            with contextlib.suppress(Exception):
                await t.catch_up()
        if self._health is not None:
            self._health.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await self.pool.close()
        log.info("service_stopped")

    # -- health -------------------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        if not self.nc.is_connected:
            return False, "nats disconnected"
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as e:
            return False, f"database: {e!r}"
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return False, f"stopped tasks: {', '.join(dead)}"
        failing = [t.name for t in self.tailers if t.last_error is not None]
        if failing:
            return False, f"failing tailers: {', '.join(failing)}"
        for check in self.readiness_checks:
            problem = await check()
            if problem is not None:
                return False, problem
        # Quarantined streams do not make the service unready (every other stream is
        # served), but readiness says so until an operator retries them.
        async with self.pool.acquire(timeout=2) as conn:
            held = await quarantined_streams(conn, self.schema)
        if held:
            return True, "ready; quarantined: " + ", ".join(
                f"{name} {n} stream{'s' if n != 1 else ''}" for name, n in held.items()
            )
        return True, "ready"

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "/"
            if path.startswith("/healthz"):
                ok, text = True, "alive"
            elif path.startswith("/readyz"):
                ok, text = await self.ready()
            else:
                ok, text = False, "not found"
            status = (
                "200 OK"
                if ok
                else ("404 Not Found" if text == "not found" else "503 Service Unavailable")
            )
            body = text.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


def _report_end(task: asyncio.Task[None]) -> None:
    """A background task must not end while the service runs: say why it did."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("task_failed", task=task.get_name(), exc_info=error)


def dump_tasks() -> None:
    """Log where every task of the process waits (``kill -USR1 <pid>``), for a stuck service."""
    for task in asyncio.all_tasks():
        frames = [
            f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
        ]
        log.warning("task_stack", task=task.get_name(), stack=frames)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entry point for ``python -m services.<name>``."""
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
