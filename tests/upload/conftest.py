"""The upload service on the test's own servers and buckets, beside the job service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from libs.runtime import ServiceRuntime, build
from services.upload.service import SERVICE
from services.upload.settings import UploadSettings
from tests.conftest import Env

StartUpload = Callable[..., Awaitable[ServiceRuntime[Any]]]


@pytest.fixture
async def start_upload(env: Env) -> AsyncIterator[StartUpload]:
    """Starts an upload service (settings as overrides); all are stopped at the end."""
    started: list[ServiceRuntime[Any]] = []

    async def start(**overrides: Any) -> ServiceRuntime[Any]:
        settings = env.settings(
            UploadSettings,
            **{"outputs_archive_poll_seconds": 0.1, "outputs_sweep_seconds": 0.1, **overrides},
        )
        rt = await build(SERVICE, settings)
        await rt.launch()
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        await rt.stop()
