"""Servers, databases and child processes of a bench run, all stopped on the way out."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Servers:
    admin_dsn: str
    nats_url: str
    redis_url: str
    own: tuple[str, ...]  # which of postgres/nats/valkey this run started


def dsn_for(admin_dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{database}"))


def _death_signal_preexec(sig: int) -> Callable[[], None]:
    """Make the kernel send ``sig`` to the child if this process dies, even by SIGKILL."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


class Child:
    """A Python child process (a service under test), its output in a log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_file: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_file = log_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the child and its own children (worker
        processes), Linux /proc; 0 if unavailable."""
        from bench.cpu import tree_seconds

        return tree_seconds(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the child and its own children (Linux /proc; 0 elsewhere)."""
        from bench.cpu import tree_rss

        return tree_rss(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


class Infra:
    """Owns everything a run starts; :meth:`close` stops it all (children first)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = secrets.token_hex(3)
        self.children: list[Child] = []
        self._server_handles: list[Any] = []
        self._databases: list[str] = []
        self.servers: Servers | None = None
        self._s3_url: str | None = None
        self._closed = False

    # -- servers --------------------------------------------------------------------------

    def start_servers(self) -> Servers:
        env = os.environ
        admin_dsn = env.get("RF_TEST_DATABASE_URL", "")
        nats_url = env.get("RF_TEST_NATS_URL", "")
        redis_url = env.get("RF_TEST_REDIS_URL", "")
        own: list[str] = []
        if not (admin_dsn and nats_url and redis_url):
            from deploy.local import servers as local

            if not admin_dsn:
                pg = local.start_postgres(self.root / "pg", local.free_port())
                self._server_handles.append(pg)
                admin_dsn = pg.dsn
                own.append("postgres")
            if not nats_url:
                nats = local.start_nats(self.root / "nats", local.free_port())
                self._server_handles.append(nats)
                nats_url = nats.url
                own.append("nats")
            if not redis_url:
                valkey = local.start_valkey(local.free_port(), self.root / "valkey")
                self._server_handles.append(valkey)
                redis_url = valkey.url
                own.append("valkey")
        self.servers = Servers(admin_dsn, nats_url, redis_url, tuple(own))
        return self.servers

    def s3_env(self, prefix: str) -> dict[str, str]:
        """Settings for a service on this run's S3 (``RF_TEST_S3_URL``, else a MiniStack
        started on first use), with buckets of its own."""
        if self._s3_url is None:
            self._s3_url = os.environ.get("RF_TEST_S3_URL", "")
            if not self._s3_url:
                from deploy.local import servers as local

                s3 = local.start_s3(self.root / "s3", local.free_port())
                self._server_handles.append(s3)
                self._s3_url = s3.url
        return {
            "RF_S3_ENDPOINT_URL": self._s3_url,
            "RF_S3_ACCESS_KEY_ID": "test",
            "RF_S3_SECRET_ACCESS_KEY": "test",
            "RF_S3_SCENES_BUCKET": f"{prefix}-scenes",
            "RF_S3_OUTPUTS_BUCKET": f"{prefix}-outputs",
        }

    async def create_database(self, suffix: str) -> str:
        assert self.servers is not None
        name = f"rfbench_{self.tag}_{suffix}"
        conn = await asyncpg.connect(self.servers.admin_dsn, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._databases.append(name)
        return dsn_for(self.servers.admin_dsn, name)

    async def drop_databases(self) -> None:
        if self.servers is None or not self._databases:
            return
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.servers.admin_dsn, timeout=10)
            try:
                for name in self._databases:
                    with contextlib.suppress(Exception):
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
        self._databases.clear()

    # -- children -------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        """Start ``python <args>`` from the repository root with ``env`` added."""
        log_file = self.root / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
        )
        kwargs: dict[str, Any] = {}
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            kwargs["preexec_fn"] = _death_signal_preexec(signal.SIGTERM)
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=full_env,
                **kwargs,
            )
        child = Child(name, proc, log_file)
        self.children.append(child)
        return child

    def stop_child(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    # -- teardown -------------------------------------------------------------------------

    def close_processes(self) -> None:
        """Stop children (newest first), then the servers this run started. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        self.children.clear()
        for handle in reversed(self._server_handles):
            with contextlib.suppress(Exception):
                handle.stop()
        self._server_handles.clear()


def install_sigterm_as_interrupt() -> None:
    """Turn SIGTERM (e.g. from ``timeout``) into KeyboardInterrupt, so cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)
