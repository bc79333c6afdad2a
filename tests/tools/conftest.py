"""The gateway on a real port, as a studio's machine reaches it, with the upload and job
services behind it and MiniStack as the store; and the studio machine's cache folder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from deploy.local.servers import free_port
from libs.runtime import ServiceRuntime
from services.gateway.service import Gateway

# The render path as processes (a job that renders and is charged), for the audit tests.
from tests.render.conftest import (  # noqa: F401
    farm_blender,
    farm_process,
    render_system,
    scene_env,
)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test's process keeps its own signal handling


@pytest.fixture
async def gateway_url(
    gateway: Gateway, upload_service: ServiceRuntime[Any], job_service: ServiceRuntime[Any]
) -> AsyncIterator[str]:
    port = free_port()
    server = _Server(uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The studio machine's cache folder, where renderctl keeps its upload records."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"
