"""The live feed (``GET /v1/events/stream``) over real HTTP from two gateway processes (two
runtimes on their own ports, as worker processes): a client gets its own job, wallet and
notification events in order and never another user's; reconnecting with Last-Event-ID
resumes with nothing lost or repeated; quiet streams get heartbeats; the per-user limit
holds across the processes (429 with a code); bad cursors are 422s with a code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from contracts.notifications import NotificationKind
from deploy.local import servers as local
from libs.auth import verify_access_token
from libs.runtime import ServiceRuntime, build
from services.gateway import service as gateway_service
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.notifier.conftest import Publisher
from tests.notifier.events import owners, triggers
from tests.waiting import until

#: Feed items one user gets from ``owners`` and ``triggers``: six job events
#: (JobSubmitted, JobTestRenderCompleted, JobCompleted, JobFailed, JobPaused, JobKilled), one
#: wallet event (CreditsHeld) and a notification of every kind.
ITEMS_PER_ROUND = 6 + 1 + len(NotificationKind)
#: Longest wait for the next line of a stream.
LINE_TIMEOUT = 30.0


@pytest.fixture
def gateway_settings(env: Env) -> GatewaySettings:
    return env.settings(
        GatewaySettings,
        sse_heartbeat_seconds=0.5,
        sse_connections_per_user=2,
        sse_poll_seconds=0.05,
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test's process keeps its own signal handling


@dataclass
class Served:
    """A gateway runtime behind a real HTTP server."""

    gateway: Gateway
    port: int = field(default_factory=local.free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve(gw: Gateway) -> AsyncIterator[Served]:
    served = Served(gw)
    config = uvicorn.Config(gw.app, host="127.0.0.1", port=served.port, log_level="warning")
    server = _Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        assert not task.done(), "the HTTP server ended"
        return bool(server.started)

    await until(started, "the gateway to listen", timeout=10)
    try:
        yield served
    finally:
        gw.feed.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def two(
    notifier: ServiceRuntime[Any], gateway: Gateway, gateway_settings: GatewaySettings
) -> AsyncIterator[tuple[Served, Served]]:
    """Two gateway processes on one database and Redis prefix, each on its own port (the
    notifier first, so both follow its feed table from their start)."""
    rt = await build(gateway_service.SERVICE, gateway_settings)
    await rt.launch()
    try:
        async with serve(gateway) as first, serve(rt.wired) as second:
            yield first, second
    finally:
        await rt.stop()


@dataclass
class Sse:
    """One parsed server-sent event, or a comment line (``comment``)."""

    id: str | None = None
    event: str | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None


class Stream:
    """An open ``GET /v1/events/stream`` read line by line."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> Sse:
        got = Sse()
        data: list[str] = []
        while True:
            async with asyncio.timeout(LINE_TIMEOUT):
                line = await anext(self._lines)
            if line.startswith(":"):
                return Sse(comment=line[1:].strip())
            if line == "":
                if data or got.id or got.event:
                    got.data = orjson.loads("\n".join(data)) if data else None
                    return got
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                got.id = value
            elif name == "event":
                got.event = value
            elif name == "data":
                data.append(value)

    async def items(self, n: int) -> list[Sse]:
        """The next ``n`` events, skipping heartbeats."""
        found: list[Sse] = []
        while len(found) < n:
            e = await self.next()
            if e.comment is None:
                found.append(e)
        return found


@contextlib.asynccontextmanager
async def open_stream(
    served: Served, headers: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[Stream]:
    extra = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    timeout = httpx.Timeout(10, read=None)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=timeout) as client,
        client.stream("GET", "/v1/events/stream", headers={**headers, **extra}) as r,
    ):
        assert r.status_code == 200, (r.status_code, await r.aread())
        assert r.headers["content-type"].startswith("text/event-stream")
        yield Stream(r)


def user_of(users: Users, headers: dict[str, str]) -> str:
    token = headers["Authorization"].removeprefix("Bearer ")
    return verify_access_token(users.settings, token).user_id


async def publish_round(publisher: Publisher, user: str, tag: str) -> None:
    for event in owners(user, f"job_{tag}", f"ord_{tag}"):
        await publisher.publish(event)
    for event in triggers(user, f"job_{tag}", f"ord_{tag}").values():
        await publisher.publish(event)


async def test_a_client_gets_its_own_events_in_order_and_resumes_losing_and_repeating_nothing(
    two: tuple[Served, Served], users: Users, notifier: ServiceRuntime[Any]
) -> None:
    first, second = two
    me, other = users.new(), users.new()
    user, stranger = user_of(users, me), user_of(users, other)
    publisher = Publisher(notifier)
    async with open_stream(second, me) as stream:
        # Items projected by the notifier reach the connection on the second process.
        await publish_round(publisher, user, "a1")
        await publish_round(publisher, stranger, "x1")
        got = await stream.items(ITEMS_PER_ROUND)
    assert [e.id for e in got] == [str(n) for n in range(1, ITEMS_PER_ROUND + 1)]
    assert all(e.data is not None and e.data["seq"] == int(e.id or 0) for e in got)
    kinds = [e.data["data"]["kind"] for e in got if e.event == "notification.created" and e.data]
    assert sorted(kinds) == sorted(NotificationKind)
    events = [e.event for e in got]
    assert events[0] == "job.JobSubmitted"
    assert {"job.JobCompleted", "wallet.CreditsHeld"} <= set(events)
    assert "job_x1" not in str([e.data for e in got])  # never the other user's

    # Disconnected: a second round happens meanwhile; resuming from the last id gets it all,
    # on the other process, once.
    await publish_round(publisher, user, "a2")
    gw = first.gateway

    async def all_projected() -> bool:
        return await gw.notifications.feed_head(user) == 2 * ITEMS_PER_ROUND

    await until(all_projected, "the second round in the feed", timeout=60)
    async with open_stream(first, me, last_event_id=got[-1].id) as stream:
        rest = await stream.items(ITEMS_PER_ROUND)
        await publish_round(publisher, user, "a3")  # and live again after the backlog
        live = await stream.items(ITEMS_PER_ROUND)
    ids = [int(e.id or 0) for e in got + rest + live]
    assert ids == list(range(1, 3 * ITEMS_PER_ROUND + 1))
    assert "job_a2" in str([e.data for e in rest]) and "job_a3" in str([e.data for e in live])

    # The other user's stream has only theirs.
    async with open_stream(second, other, last_event_id="0") as stream:
        theirs = await stream.items(ITEMS_PER_ROUND)
    assert "job_a" not in str([e.data for e in theirs]) and "job_x1" in str(theirs)


async def test_quiet_streams_get_heartbeats_and_the_limit_holds_across_processes(
    two: tuple[Served, Served], users: Users
) -> None:
    first, second = two
    me = users.new()
    async with open_stream(first, me) as a, open_stream(second, me) as b:
        assert (await a.next()).comment == "heartbeat"
        assert (await b.next()).comment == "heartbeat"
        for served in (first, second):
            async with httpx.AsyncClient(base_url=served.url) as client:
                r = await client.get("/v1/events/stream", headers=me)
            assert r.status_code == 429, r.text
            assert r.json()["code"] == "stream_limit_reached"
            assert r.json()["details"] == {"limit": 2}
        async with open_stream(first, users.new()) as someone_else:  # a limit per user
            assert (await someone_else.next()).comment == "heartbeat"
    # Both closed: their places are free again.
    async with open_stream(second, me) as again, open_stream(first, me) as also:
        assert (await again.next()).comment == "heartbeat"
        assert (await also.next()).comment == "heartbeat"


async def test_a_bad_cursor_is_a_422_with_a_code(two: tuple[Served, Served], users: Users) -> None:
    first, _ = two
    me = users.new()
    async with httpx.AsyncClient(base_url=first.url) as client:
        for bad in ("abc", "-1", "1" * 19, "5"):  # "5": past the latest event (there is none)
            r = await client.get("/v1/events/stream", headers={**me, "Last-Event-ID": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["code"] == "invalid_cursor"
        r = await client.get("/v1/events/stream?last_event_id=x", headers=me)
        assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"
        r = await client.get("/v1/events/stream")
        assert r.status_code == 401
