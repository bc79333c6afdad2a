"""Billing and the wallet on the real servers: a submitted job gets its hold in the wallet,
finished farm tasks become cost lines, the job's end captures the cost and releases the
rest, and a top-up retries a refused hold. The job and render events come from a stand-in
service's event store, published on the bus by its relay as the job service's are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from contracts.base import Event
from contracts.jobs import (
    FrameRange,
    JobCompleted,
    JobSubmitted,
    Renderer,
    RenderSettings,
    Resolution,
)
from contracts.render import RenderTaskCompleted
from libs.config import BaseServiceSettings
from libs.eventstore.store import NewEvent, StreamWrite
from libs.ids import new_id
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

D = Decimal
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


@pytest.fixture
async def stack(env: Env) -> AsyncIterator[tuple[Source, Wallets, ServiceRuntime[Any]]]:
    started = [
        await build(WALLET, env.settings(WalletSettings)),
        await build(
            BILLING,
            env.settings(BillingSettings, default_prices=TEST_PRICES, command_timeout_seconds=2),
        ),
        await build(SOURCE, env.settings(BaseServiceSettings, service_name="jobsource")),
    ]
    for rt in started:
        await rt.launch()
    yield Source(started[2]), Wallets(started[0]), started[1]
    for rt in reversed(started):
        await rt.stop()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)


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


async def cost_row(rt: ServiceRuntime[Any], job_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await rt.store.pool.fetchrow(
        "SELECT * FROM billing.job_costs WHERE job_id = $1", job_id
    )
    return row


async def wallet_row(rt: ServiceRuntime[Any], user: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await rt.store.pool.fetchrow(
        "SELECT balance, held, available FROM wallet.balances WHERE user_id = $1", user
    )
    return row


async def test_a_job_is_held_charged_per_task_and_settled_in_the_wallet(
    stack: tuple[Source, Wallets, ServiceRuntime[Any]],
) -> None:
    source, wallets, billing = stack
    user, job = new_id("usr"), new_id("job")
    await wallets.deposit(user, "10.00")
    await source.emit(f"job-{job}", submitted(job, user))

    async def held() -> Any:
        row = await cost_row(billing, job)
        return row if row is not None and row["status"] == "held" else None

    row = await until(held)
    assert row["held_credits"] == D("0.50")
    balance = await until(lambda: wallet_row(billing, user))
    assert (balance["held"], balance["available"]) == (D("0.50"), D("9.50"))

    await source.emit(f"render-{job}", task(job, 1, 90.0))  # 0.025 -> 0.03
    await source.emit(f"render-{job}", task(job, 2, 90.0))
    await source.emit(f"render-{job}", task(job, 2, 90.0))  # the bridge said it twice

    async def lines() -> Any:
        rows = await billing.store.pool.fetch(
            "SELECT line_id, amount_credits FROM billing.cost_lines WHERE job_id = $1 ORDER BY seq",
            job,
        )
        return rows if len(rows) == 2 else None

    rows = await until(lines)
    assert [r["amount_credits"] for r in rows] == [D("0.03"), D("0.03")]
    await source.emit(f"job-{job}", JobCompleted(job_id=job, at=datetime.now(UTC)))

    async def settled() -> Any:
        row = await cost_row(billing, job)
        return row if row is not None and row["status"] == "settled" else None

    row = await until(settled)
    assert (row["captured_credits"], row["released_credits"]) == (D("0.06"), D("0.44"))

    async def wallet_settled() -> Any:
        row = await wallet_row(billing, user)
        return row if row is not None and row["held"] == 0 else None

    balance = await until(wallet_settled)
    assert (balance["balance"], balance["available"]) == (D("9.94"), D("9.94"))


async def test_a_top_up_retries_a_hold_the_wallet_refused(
    stack: tuple[Source, Wallets, ServiceRuntime[Any]],
) -> None:
    source, wallets, billing = stack
    user, job = new_id("usr"), new_id("job")
    await wallets.deposit(user, "0.20")
    await source.emit(f"job-{job}", submitted(job, user))

    async def status(expected: str) -> Any:
        row = await cost_row(billing, job)
        return row if row is not None and row["status"] == expected else None

    row = await until(lambda: status("awaiting_credits"))
    assert row["awaiting_reason"] == "insufficient_credits"
    await wallets.deposit(user, "5.00")
    row = await until(lambda: status("held"))
    assert row["held_credits"] == D("0.50")
