"""Services and the local farm as real OS processes, for tests that kill and restart them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from deploy.local.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class Process:
    """``python -m <module> [args]`` with its own environment and log file; ``python`` is
    the interpreter (this one unless given: the scaler on SkyPilot runs from ``.venv-sky``)."""

    def __init__(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        log_dir: Path,
        ready_url: str,
        args: tuple[str, ...] = (),
        python: str = sys.executable,
    ) -> None:
        self.name, self.module, self.env, self.args = name, module, env, args
        self.python = python
        self.ready_url = ready_url
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Started again on another health port once (see :meth:`ready`).
        self.moved = False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.python, "-m", self.module, *self.args],
            cwd=ROOT,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def ready(self, timeout: float = 30) -> None:
        """Wait until the ready URL answers 200. A service whose health port was taken in the
        meantime (another process bound the free port it was given) is started again once
        on a new free port: a race of the test set-up, not of the service."""
        async with httpx.AsyncClient() as client:
            for _ in range(int(timeout * 10)):
                if not self.running and self._health_port_taken():
                    self._move_health_port()
                assert self.running, self.log.read_text()[-3000:]
                try:
                    r = await client.get(self.ready_url)
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")

    def _health_port_taken(self) -> bool:
        port = self.env.get("RF_HEALTH_PORT")
        return (
            port is not None
            and not self.moved
            and f"('127.0.0.1', {port}): address already in use" in self.log.read_text()
        )

    def _move_health_port(self) -> None:
        old = self.env["RF_HEALTH_PORT"]
        new = str(free_port())
        self.env = {**self.env, "RF_HEALTH_PORT": new}
        self.ready_url = self.ready_url.replace(f":{old}/", f":{new}/")
        self.moved = True
        self.start()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.running:
            assert self.proc
            self.proc.kill()
            self.proc.wait()


def service(name: str, env: dict[str, str], log_dir: Path, python: str = sys.executable) -> Process:
    """One of ours: ``python -m services.<name>``, ready when its health port says so."""
    return Process(
        name,
        f"services.{name}",
        env,
        log_dir,
        f"http://127.0.0.1:{env['RF_HEALTH_PORT']}/readyz",
        python=python,
    )
