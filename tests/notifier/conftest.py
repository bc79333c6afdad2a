"""The notifier on real servers, a real HTTP receiver of its webhooks, and a publisher of
trigger events onto JetStream (as other services' relays publish them)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contracts.base import Event
from deploy.local import servers as local
from libs.bus.commands import Actor, CommandClient
from libs.runtime import ServiceRuntime, build
from services.notifier.service import SERVICE
from services.notifier.settings import NotifierSettings
from tests.conftest import Env
from tests.waiting import until

ACTOR = Actor(kind="user", id="usr_test")


@pytest.fixture
def notifier_settings(env: Env) -> NotifierSettings:
    """Fast retries over a short window; a module overrides it for other times."""
    return env.settings(
        NotifierSettings,
        webhook_allow_http=True,
        webhook_allow_private_addresses=True,
        webhook_timeout_seconds=3,
        webhook_retry_base_seconds=0.1,
        webhook_retry_max_delay_seconds=0.4,
        webhook_retry_window_seconds=600,
        webhook_poll_seconds=0.1,
    )


@pytest.fixture
async def notifier(notifier_settings: NotifierSettings) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, notifier_settings)
    await rt.launch()
    yield rt
    await rt.stop()


class Publisher:
    """Publishes events as a relay does; ``twice`` also sends each again under another
    message id, as after JetStream's de-duplication window."""

    def __init__(self, rt: ServiceRuntime[Any]) -> None:
        self.rt = rt

    async def publish(self, event: Event, twice: bool = True) -> uuid.UUID:
        event_id = uuid.uuid4()
        body = orjson.dumps(
            {
                "event_id": str(event_id),
                "stream_id": f"test-{event_id}",
                "version": 1,
                "type": event.event_type,
                "schema_version": event.schema_version,
                "position": 1,
                "recorded_at": datetime.now(UTC).isoformat(),
                "data": event.model_dump(mode="json"),
                "metadata": {"correlation_id": "test"},
            }
        )
        subject = self.rt.settings.subject(f"events.{event.event_type}")
        for n in range(2 if twice else 1):
            await self.rt.js.publish(subject, body, headers={"Nats-Msg-Id": f"{event_id}:{n}"})
        return event_id


@pytest.fixture
def publisher(notifier: ServiceRuntime[Any]) -> Publisher:
    return Publisher(notifier)


@pytest.fixture
def commands(notifier: ServiceRuntime[Any]) -> CommandClient:
    return CommandClient(notifier.nc, notifier.settings, timeout=15)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on a real port: ``/ok/<name>`` answers 204, ``/fail`` 500 until
    ``failing`` is cleared, ``/slow`` never answers. Down until :meth:`start`."""

    port: int = field(default_factory=local.free_port)
    received: list[Received] = field(default_factory=list)
    failing: bool = True
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: Request) -> Response:
        got = Received(request.url.path, dict(request.headers), await request.body())
        self.received.append(got)
        if got.path == "/slow":
            await self._never.wait()
        if got.path == "/fail" and self.failing:
            return Response(status_code=500)
        return Response(status_code=204)

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server

        async def started() -> bool:
            assert self._task is not None and not self._task.done(), "the receiver ended"
            return bool(server.started)

        await until(started, "the receiver to listen", timeout=10)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._never.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test's process keeps its own signal handling


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.stop()
