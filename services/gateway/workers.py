"""Several gateway worker processes on one port, under a supervising parent.

``python -m services.gateway`` with ``RF_GATEWAY_WORKERS`` > 1 (0: one per core) starts this
parent instead of a gateway. It runs N children, ``python -m services.gateway`` each with one
worker, ``RF_GATEWAY_REUSE_PORT=1`` (every child binds the port with SO_REUSEPORT and the
kernel spreads connections over them) and a health port of its own. Each child is a full
gateway runtime (its own pools, NATS connection, supervised tasks, action-log flusher;
leader-locked tailers elect one leader among them).

Supervision is the runtime's, one level up: a child that exits while the gateway runs is
restarted with back-off (0.5 s doubling to 30 s); more than 5 exits within 60 s end the
parent with exit code 1, after stopping the others. SIGTERM/SIGINT are passed on to every
child, which stops gracefully (HTTP first, then the action log's last flush); the parent
exits 0 when all did. The kernel stops the children if the parent dies (PR_SET_PDEATHSIG).

With ``RF_HEALTH_PORT`` set, the parent serves ``/healthz`` (every worker running) and
``/readyz`` (every worker ready) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

from libs.health import serve_health
from libs.logging import configure_logging, get_logger
from libs.restarts import RestartBudget
from services.gateway.settings import GatewaySettings

log = get_logger(__name__)

STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def worker_count(settings: GatewaySettings) -> int:
    n = settings.gateway_workers
    return n if n > 0 else os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclass
class Worker:
    index: int
    health_port: int
    proc: asyncio.subprocess.Process | None = None
    budget: RestartBudget = field(default_factory=RestartBudget)


class WorkerPool:
    def __init__(self, settings: GatewaySettings, n: int) -> None:
        self.settings = settings
        self.workers = [Worker(i, _free_port()) for i in range(n)]
        self.stopping = asyncio.Event()
        self.exit_code = 0

    async def _spawn(self, w: Worker) -> None:
        env = {
            **os.environ,
            "RF_GATEWAY_WORKERS": "1",
            "RF_GATEWAY_REUSE_PORT": "1",
            "RF_HEALTH_PORT": str(w.health_port),
            "RF_GATEWAY_HEALTH_PORT": str(w.health_port),
        }
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.gateway",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.info("gateway_worker_started", worker=w.index, pid=w.proc.pid)

    async def _keep(self, w: Worker) -> None:
        while not self.stopping.is_set():
            await self._spawn(w)
            assert w.proc is not None
            code = await w.proc.wait()
            if self.stopping.is_set():
                return
            log.error("gateway_worker_exited", worker=w.index, exit_code=code)
            delay = w.budget.failed()
            if delay is None:
                failures = w.budget.recent_failures
                log.error("gateway_worker_gave_up", worker=w.index, failures=failures)
                self.exit_code = 1
                self.stopping.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _stop_all(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                code = await asyncio.wait_for(p.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                code = await p.wait()
            if code != 0:
                self.exit_code = self.exit_code or 1

    async def _worker_ready(self, w: Worker) -> tuple[bool, str]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", w.health_port), 2
            )
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
        except (OSError, TimeoutError) as e:
            return False, f"worker {w.index}: {e!r}"
        head, _, body = raw.partition(b"\r\n\r\n")
        return head.startswith(
            b"HTTP/1.1 200"
        ), f"worker {w.index}: {body.decode(errors='replace')}"

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await serve_health(reader, writer, self._health_answer)

    async def _health_answer(self, path: str) -> tuple[bool, str] | None:
        if path.startswith("/healthz"):
            running = [w for w in self.workers if w.proc and w.proc.returncode is None]
            ok = len(running) == len(self.workers) and not self.stopping.is_set()
            return ok, f"alive; {len(running)} of {len(self.workers)} workers running"
        if path.startswith("/readyz"):
            answers = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
            ok = all(a for a, _ in answers) and not self.stopping.is_set()
            return ok, ("ready" if ok else "not ready") + "\n" + "\n".join(t for _, t in answers)
        return None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        health = None
        if self.settings.health_port:
            health = await asyncio.start_server(
                self._serve_health, "127.0.0.1", self.settings.health_port
            )
        log.info("gateway_workers_starting", workers=len(self.workers))
        keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        await self.stopping.wait()
        await self._stop_all()
        await asyncio.gather(*keepers, return_exceptions=True)
        if health is not None:
            health.close()
        log.info("gateway_workers_stopped", exit_code=self.exit_code)
        return self.exit_code


def run_workers(settings: GatewaySettings) -> int:
    configure_logging(settings.service_name, settings.log_level)
    return asyncio.run(WorkerPool(settings, worker_count(settings)).run())
