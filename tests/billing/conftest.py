"""Billing and the wallet on the real servers, with a stand-in for the job service and the
bridge: it records job and render events in its own event store and its relay publishes them
on the bus as theirs are. Billing can be stopped and built again on the same database, as a
crashed replica is replaced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from contracts.base import Event
from contracts.jobs import FrameRange, JobSubmitted, Renderer, RenderSettings, Resolution
from contracts.render import RenderTaskCompleted
from libs.config import BaseServiceSettings
from libs.eventstore.store import NewEvent, StreamWrite
from libs.runtime import ServiceRuntime, build
from libs.service import Service
from services.billing.service import SERVICE as BILLING
from services.billing.settings import BillingSettings
from services.wallet.service import SERVICE as WALLET
from services.wallet.settings import WalletSettings
from tests.conftest import Env
from tests.fixtures import scene_ref
from tests.prices import TEST_PRICES
from tests.wallet.conftest import Wallets

#: Records job and render events as if it were the job service and the bridge.
SOURCE = Service(name="jobsource", schema="jobsource", settings=BaseServiceSettings)


class Source:
    def __init__(self, rt: ServiceRuntime[Any]) -> None:
        self.rt = rt
        self.versions: dict[str, int] = {}

    async def emit(self, stream_id: str, event: Event) -> None:
        version = self.versions.get(stream_id, 0)
        await self.rt.store.append_streams([StreamWrite(stream_id, version, [NewEvent(event)])])
        self.rt.store.notify_appended()
        self.versions[stream_id] = version + 1


class Stack:
    """The wallet, billing (priced with tests/prices.py) and the stand-in, launched."""

    def __init__(self, env: Env, source: Source, wallet: ServiceRuntime[Any]) -> None:
        self.env = env
        self.source = source
        self.wallet = wallet
        self.wallets = Wallets(wallet)
        self.billing: ServiceRuntime[Any] | None = None

    async def start_billing(self, **overrides: Any) -> ServiceRuntime[Any]:
        """Build and launch a billing replica on the same database and bus."""
        settings = self.env.settings(
            BillingSettings,
            **{"default_prices": TEST_PRICES, "command_timeout_seconds": 2, **overrides},
        )
        self.billing = await build(BILLING, settings)
        await self.billing.launch()
        return self.billing

    async def stop_billing(self) -> None:
        """Billing goes away (what it has not recorded yet is lost with it)."""
        assert self.billing is not None
        await self.billing.stop()
        self.billing = None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.wallet.store.pool


@pytest.fixture
def wallet_settings(env: Env) -> WalletSettings:
    return env.settings(WalletSettings)


@pytest.fixture
def billing_overrides() -> dict[str, Any]:
    """Billing settings a test module changes (e.g. a short hold TTL)."""
    return {}


@pytest.fixture
async def stack(
    env: Env, wallet_settings: WalletSettings, billing_overrides: dict[str, Any]
) -> AsyncIterator[Stack]:
    wallet = await build(WALLET, wallet_settings)
    source = await build(SOURCE, env.settings(BaseServiceSettings, service_name="jobsource"))
    for rt in (wallet, source):
        await rt.launch()
    started = Stack(env, Source(source), wallet)
    await started.start_billing(**billing_overrides)
    yield started
    if started.billing is not None:
        await started.stop_billing()
    for rt in (source, wallet):
        await rt.stop()


def submitted(job_id: str, user: str) -> JobSubmitted:
    # 10 frames x 60 s at local-cpu's 1 credit/hour (tests/prices.py): high 0.42, hold 0.50.
    return JobSubmitted(
        job_id=job_id,
        owner_id=user,
        name="shot_050",
        scene=scene_ref(size_bytes=0),
        renderer=Renderer.blender_cycles,
        frame_range=FrameRange(start=1, end=10),
        chunk_size=1,
        resolution=Resolution(width=1920, height=1080),
        render_settings=RenderSettings(),
        priority="normal",
        cost_cap_credits=None,
        submitted_at=datetime.now(UTC),
    )


def task(job_id: str, n: int, seconds: float) -> RenderTaskCompleted:
    now = datetime.now(UTC)
    return RenderTaskCompleted(
        render_id=f"{job_id}.full.1",
        job_id=job_id,
        task_id=n,
        frames=[n],
        worker="w1",
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        render_seconds=seconds,
        outputs=[],
    )


async def cost_row(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM billing.job_costs WHERE job_id = $1", job_id
    )
    return row


async def cost_status(pool: asyncpg.Pool, job_id: str, status: str) -> asyncpg.Record | None:
    """The job's cost row once billing's view shows ``status``."""
    row = await cost_row(pool, job_id)
    return row if row is not None and row["status"] == status else None


async def wallet_row(pool: asyncpg.Pool, user: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT balance, held, available FROM wallet.balances WHERE user_id = $1", user
    )
    return row


async def transfers(pool: asyncpg.Pool, job_id: str) -> list[tuple[str, str]]:
    """The job's wallet transfers in order: (kind, transfer id)."""
    rows = await pool.fetch(
        "SELECT kind, transfer_id FROM wallet.transfers WHERE job_id = $1 ORDER BY version",
        job_id,
    )
    return [(r["kind"], r["transfer_id"]) for r in rows]
