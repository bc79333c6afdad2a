"""The Razorpay stand-in (one per session, a real server process), the payments service and a
gateway listening on a real port (the stand-in POSTs its webhooks there)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from deploy.local import servers as local
from libs.runtime import ServiceRuntime, build
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from services.payments import service as payments_service_
from services.payments.settings import PaymentsSettings
from tests.conftest import Env

T = TypeVar("T")

KEY_ID = "rzp_test_StandIn00000001"


@dataclass(frozen=True)
class StandIn:
    """The running stand-in and its credentials."""

    url: str
    key_id: str
    key_secret: str
    webhook_secret: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, auth=(self.key_id, self.key_secret), timeout=15)


@pytest.fixture(scope="session")
def razorpay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    standin = StandIn("", KEY_ID, secrets.token_hex(16), secrets.token_hex(16))
    handle = local.start_razorpay(
        tmp_path_factory.mktemp("razorpay") / "razorpay.db",
        local.free_port(),
        key_id=standin.key_id,
        key_secret=standin.key_secret,
        webhook_secret=standin.webhook_secret,
    )
    yield StandIn(handle.url, standin.key_id, standin.key_secret, standin.webhook_secret)
    handle.stop()


#: The webhook secret before the current one: a rotation is under way in every test.
PREVIOUS_WEBHOOK_SECRET = "previous-webhook-secret-0123456789"


@pytest.fixture
def payments_settings(env: Env, razorpay: StandIn) -> PaymentsSettings:
    return env.settings(
        PaymentsSettings,
        razorpay_url=razorpay.url,
        razorpay_key_id=razorpay.key_id,
        razorpay_key_secret=razorpay.key_secret,
        razorpay_webhook_secret=razorpay.webhook_secret,
        razorpay_webhook_secret_previous=PREVIOUS_WEBHOOK_SECRET,
        razorpay_timeout_seconds=5,
    )


@pytest.fixture
async def payments_service(
    payments_settings: PaymentsSettings,
) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(payments_service_.SERVICE, payments_settings)
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
def gateway_settings(env: Env, razorpay: StandIn) -> GatewaySettings:
    return env.settings(GatewaySettings, razorpay_key_id=razorpay.key_id)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test's process keeps its own signal handling


@pytest.fixture
async def webhook_url(gateway: Gateway) -> AsyncIterator[str]:
    """The gateway's webhook route on a real port, where the stand-in sends webhooks."""
    port = local.free_port()
    config = uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "the gateway's HTTP server ended"
        assert time.monotonic() < deadline, "the gateway's HTTP server did not start"
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1/payments/webhook"
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def pay_api(
    gateway: Gateway, payments_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with the payments service behind it."""
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
async def standin(razorpay: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    async with razorpay.client() as c:
        yield c


@pytest.fixture
async def wallet_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    from services.wallet import service as wallet_service_
    from services.wallet.settings import WalletSettings

    rt = await build(wallet_service_.SERVICE, env.settings(WalletSettings))
    await rt.launch()
    yield rt
    await rt.stop()
