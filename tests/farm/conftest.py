"""A real local farm (``python -m deploy.farm serve``) on a free port with a temporary data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {check}")
        time.sleep(interval)


class Farm:
    """One farm server process and an HTTP client for it."""

    def __init__(self, data_dir: Path, *args: str, workers: int = 2) -> None:
        self.data_dir = data_dir
        self.args = args
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=15)

    def start(self) -> Farm:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.farm",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--workers",
                str(self.workers),
                "--blender",
                "builtin",
                "--frame-seconds",
                "0.02",
                *self.args,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "farm exited"
            try:
                return self.client.get("/").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    data_dir = tmp_path_factory.mktemp("farm")
    data_dir.mkdir(exist_ok=True)
    instance = Farm(data_dir, workers=3).start()
    yield instance
    instance.stop()
    instance.client.close()


@pytest.fixture
def make_farm(tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    """Start extra farms (own data dir) for tests that restart or reconfigure one."""
    started: list[Farm] = []

    def make(*args: str, workers: int = 1, data_dir: Path | None = None) -> Farm:
        directory = data_dir or tmp_path / f"farm{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        instance = Farm(directory, *args, workers=workers).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()
        instance.client.close()
