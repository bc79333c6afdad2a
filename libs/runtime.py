"""The one runtime every service runs on: connections, supervised background work, health
and readiness, graceful stop.

``build(SERVICE, settings)`` starts a declared service (:mod:`libs.service`): pool, schema,
NATS, the relay, one projector per declared projection, one command server whose replies
wait for those projections (read-your-writes), then the service's ``wire`` hook for its
handlers, consumers, background tasks, readiness checks and front doors (the gateway's HTTP
server). ``run(SERVICE)`` is ``python -m services.<name>``: build, serve until SIGTERM or
SIGINT, exit with the runtime's exit code.

Supervision. Every background task (tailers, consumers, the service's own) runs under a
supervisor: a task that raises, or returns while the service runs, is restarted with
exponential back-off; one that fails ``max_restarts`` times within ``restart_window``
seconds is given up on: readiness fails, and the process stops with exit code 1 so its
process manager (systemd, Kubernetes, ``make up``) sees it. Nothing is half alive.

Stop order (on SIGTERM/SIGINT): front doors stop taking requests and finish the ones in
flight; command servers stop taking commands and let those in flight finish; consumers stop
after their current message; tailers (projections, relay) get a last catch-up so everything
committed is projected and published; then NATS and the database pool close.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts.base import EVENTS, EventRegistry
from libs.bus.commands import CommandServer
from libs.bus.consumer import DurableConsumer, Handler
from libs.bus.nats import connect, ensure_streams
from libs.bus.relay import Relay
from libs.config import BaseServiceSettings
from libs.eventstore.feed import FeedWatcher
from libs.eventstore.processor import Projector, Tailer
from libs.eventstore.projection import ReadModel, quarantined_streams
from libs.eventstore.store import EventStore, create_pool
from libs.health import serve_health
from libs.logging import configure_logging, get_logger
from libs.migrations import migrate, service_plan
from libs.operations import serve_quarantine_retry
from libs.restarts import RestartBudget
from libs.service import Service
from libs.tracing import configure_tracing

log = get_logger(__name__)

T = TypeVar("T")
Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
#: How often a tailer polls the feed itself when the process's feed watcher wakes it.
TAILER_FALLBACK_POLL_SECONDS = 2.0
#: A readiness check returns None when fine, else what is wrong.
Check = Callable[[], Awaitable[str | None]]


@dataclass
class Supervised:
    """One background task and its restart history."""

    name: str
    run: Background
    stopping: asyncio.Event
    budget: RestartBudget
    last_error: str | None = None
    task: asyncio.Task[None] | None = None


class ServiceRuntime(Generic[T]):
    """A started service. ``wired`` is what its ``wire`` hook returned."""

    #: Restart back-off: first delay, cap, and how many failures in how long end the process.
    restart_delay: float = 0.5
    restart_delay_max: float = 30.0
    max_restarts: int = 5
    restart_window: float = 60.0

    def __init__(
        self, service: Service, settings: BaseServiceSettings, registry: EventRegistry = EVENTS
    ) -> None:
        self.service = service
        self.settings = settings
        #: The event types its store and its read-model queries decode.
        self.registry = registry
        self.schema = service.schema
        self.stopping = asyncio.Event()
        self.tailers: list[Tailer] = []
        self.projectors: dict[str, Projector] = {}
        self.consumers: list[DurableConsumer] = []
        self.readiness_checks: list[Check] = []
        self.exit_code = 0
        self.wired: T
        self._supervised: list[Supervised] = []
        self._background: list[tuple[str, Background]] = []
        self._front_doors: list[tuple[Background, Callable[[], Awaitable[None]]]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._health: asyncio.Server | None = None
        self._consumer_stop = asyncio.Event()  # consumers stop before the tailers
        self._fatal = asyncio.Event()
        self._stopped = False
        self.pool: asyncpg.Pool
        self.nc: Client
        self.js: JetStreamContext
        self.store: EventStore
        self.commands: CommandServer
        self.feed: FeedWatcher | None = None

    # -- start --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, set up the schema, and create the relay, projectors and command server."""
        configure_logging(self.settings.service_name, self.settings.log_level)
        configure_tracing(
            self.settings.service_name, self.settings.otel_exporter, self.settings.otel_sample_ratio
        )
        self.pool = await create_pool(
            self.settings.database_url, max_size=self.settings.db_pool_size
        )
        self.store = EventStore(self.pool, self.schema, self.registry)
        # The event store's migrations and the service's, under a lock per schema.
        await migrate(self.pool, self.schema, service_plan(self.service))
        self.nc = await connect(self.settings, self.settings.service_name)
        self.js = self.nc.jetstream(timeout=5)
        await ensure_streams(self.js, self.settings)
        if self.service.records_events:  # published: the scheduler's refused commands too
            self.tailers.append(Relay(self.store, self.js, self.settings))
        for projection in self.service.projections:
            projector = Projector(self.store, projection)
            self.projectors[projection.name] = projector
            self.tailers.append(projector)
        if self.tailers:
            self.feed = FeedWatcher(self.store, self.settings.feed_poll_seconds)
            self.background("feed-watcher", self.feed.run)
            for tailer in self.tailers:  # the watcher wakes them; their own poll is a fallback
                tailer.poll_interval = TAILER_FALLBACK_POLL_SECONDS
        self.commands = CommandServer(
            self.nc, self.store, self.settings, read_your_writes=list(self.projectors.values())
        )

    # -- what a service's wire hook adds ------------------------------------------------

    def consumer(
        self, durable: str, subjects: Sequence[str], handler: Handler, **kw: Any
    ) -> DurableConsumer:
        c = DurableConsumer(self.nc, self.js, self.settings, durable, subjects, handler, **kw)
        self.consumers.append(c)
        return c

    def background(self, name: str, fn: Background) -> None:
        """A supervised background task: restarted when it fails, see the module docstring."""
        self._background.append((name, fn))

    def front_door(self, serve: Background, stop: Callable[[], Awaitable[None]]) -> None:
        """A server that takes outside requests (HTTP): started by :meth:`serve` only, and
        stopped first, so in-flight requests finish while everything behind them runs."""
        self._front_doors.append((serve, stop))

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Release a resource (an HTTP client, a Redis pool) after everything has stopped."""
        self._closers.append(close)

    # -- running ------------------------------------------------------------------------

    async def launch(self) -> None:
        """Start every background task and the command server (without waiting for a signal)."""
        for t in self.tailers:
            self._supervise(f"tailer:{t.name}", t.run, self.stopping)
        for c in self.consumers:
            self._supervise(f"consumer:{c.durable}", c.run, self._consumer_stop)
        for name, fn in self._background:
            self._supervise(name, fn, self.stopping)
        await self.commands.start()
        models = [p for p in self.service.projections if isinstance(p, ReadModel)]
        if models:  # operators retry quarantined streams here (libs/operations.py)
            await serve_quarantine_retry(self.nc, self.settings, self.store, models)
        if self.settings.health_port:
            self._health = await asyncio.start_server(
                self._serve_health, "127.0.0.1", self.settings.health_port
            )
        log.info("service_started", schema=self.schema)

    def _supervise(self, name: str, fn: Background, stopping: asyncio.Event) -> None:
        budget = RestartBudget(
            self.restart_delay, self.restart_delay_max, self.max_restarts, self.restart_window
        )
        job = Supervised(name, fn, stopping, budget)
        self._supervised.append(job)
        job.task = asyncio.create_task(self._keep_running(job), name=name)

    async def _keep_running(self, job: Supervised) -> None:
        while not job.stopping.is_set():
            try:
                await job.run(job.stopping)
                if job.stopping.is_set():
                    return
                error = "the task returned while the service runs"
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = repr(e)
                log.error("task_failed", task=job.name, exc_info=e)
            job.last_error = error
            delay = job.budget.failed()
            if delay is None:
                failures = job.budget.recent_failures
                log.error("task_gave_up", task=job.name, failures=failures, error=error)
                self.exit_code = 1
                self._fatal.set()
                return
            log.warning("task_restarting", task=job.name, in_seconds=delay, error=error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.stopping.wait(), delay)

    async def serve(self) -> int:
        """Launch, start the front doors, run until SIGTERM/SIGINT or a task given up on,
        then stop gracefully. Returns the exit code."""
        await self.launch()
        loop = asyncio.get_running_loop()
        got_signal = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, got_signal.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        doors = [asyncio.create_task(serve_fn(self.stopping)) for serve_fn, _ in self._front_doors]
        waits = [asyncio.create_task(got_signal.wait()), asyncio.create_task(self._fatal.wait())]
        done, _ = await asyncio.wait([*waits, *doors], return_when=asyncio.FIRST_COMPLETED)
        for door in doors:
            if door in done and not self.stopping.is_set():
                log.error("front_door_ended", error=repr(door.exception()))
                self.exit_code = 1
        for w in waits:
            w.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        await self.stop()
        for door in doors:
            with contextlib.suppress(Exception):
                await door
        return self.exit_code

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("service_stopping")
        for _, stop_door in self._front_doors:
            with contextlib.suppress(Exception):
                await stop_door()
        await self.commands.stop()
        self._consumer_stop.set()
        self.stopping.set()
        tasks = [j.task for j in self._supervised if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for t in self.tailers:  # a last catch-up: nothing committed stays unprojected
            with contextlib.suppress(Exception):
                await t.catch_up()
        if self._health is not None:
            self._health.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        await self.pool.close()
        log.info("service_stopped", exit_code=self.exit_code)

    # -- health -------------------------------------------------------------------------

    def task_report(self) -> dict[str, dict[str, Any]]:
        """Each supervised task: running or not, restarts, last error."""
        return {
            j.name: {
                "running": j.task is not None and not j.task.done(),
                "restarts": j.budget.restarts,
                "gave_up": j.budget.gave_up,
                "last_error": j.last_error,
            }
            for j in self._supervised
        }

    async def ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        if not self.nc.is_connected:
            return False, "nats disconnected"
        try:  # the one query proves the database answers, and finds quarantined streams
            async with self.pool.acquire(timeout=2) as conn:
                held = await quarantined_streams(conn, self.schema)
        except Exception as e:
            return False, f"database: {e!r}"
        dead = [j.name for j in self._supervised if j.budget.gave_up]
        if dead:
            return False, f"tasks given up on: {', '.join(dead)}"
        restarting = [j.name for j in self._supervised if j.task is None or j.task.done()]
        if restarting:
            return False, f"stopped tasks: {', '.join(restarting)}"
        failing = [t.name for t in self.tailers if t.last_error is not None]
        if failing:
            return False, f"failing tailers: {', '.join(failing)}"
        for check in self.readiness_checks:
            problem = await check()
            if problem is not None:
                return False, problem
        # Quarantined streams do not make the service unready (every other stream is
        # served), but readiness says so until an operator retries them.
        if held:
            return True, "ready; quarantined: " + ", ".join(
                f"{name} {n} stream{'s' if n != 1 else ''}" for name, n in held.items()
            )
        return True, "ready"

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await serve_health(reader, writer, self._health_answer)

    async def _health_answer(self, path: str) -> tuple[bool, str] | None:
        if path.startswith("/healthz"):
            return True, "alive"
        if path.startswith("/readyz"):
            return await self.ready()
        return None


def dump_tasks() -> None:
    """Log where every task of the process waits (``kill -USR1 <pid>``), for a stuck service."""
    for task in asyncio.all_tasks():
        frames = [
            f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
        ]
        log.warning("task_stack", task=task.get_name(), stack=frames)


async def build(
    service: Service, settings: BaseServiceSettings, registry: EventRegistry = EVENTS
) -> ServiceRuntime[Any]:
    """Start ``service`` with ``settings`` and wire it; :meth:`ServiceRuntime.launch` or
    :meth:`ServiceRuntime.serve` then runs it. ``registry``: the event types it knows (all of
    them, unless a test adds its own)."""
    check_secrets = getattr(settings, "check_secrets", None)
    if check_secrets is not None:  # an empty signing key or pepper would be an auth bypass
        check_secrets()
    rt: ServiceRuntime[Any] = ServiceRuntime(service, settings, registry)
    await rt.start()
    rt.wired = await service.wire(rt) if service.wire is not None else None
    return rt


def run(service: Service, settings: BaseServiceSettings | None = None) -> None:
    """Entry point for ``python -m services.<name>``: exits with the runtime's exit code.
    ``settings`` default to the service's, read from the environment."""

    async def main() -> int:
        rt = await build(service, settings or service.settings())
        return await rt.serve()

    try:
        import uvloop

        code = uvloop.run(main())
    except ImportError:
        code = asyncio.run(main())
    sys.exit(code)
