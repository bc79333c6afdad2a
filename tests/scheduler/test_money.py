"""Cost protection on the real render path: the job, scheduler, upload, bridge, wallet and
billing services in this process, on real PostgreSQL, NATS, S3 and a local farm.

The farm's machine is priced high and the estimator's reference time set low, so a few
frames of the built-in renderer cost whole credits and every job outruns its first hold:
holds grow, pause and cap for real."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest

from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import CancelJob, JobAccepted, JobPriority, Renderer
from libs.bus.commands import CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client
from services.billing.settings import BillingSettings
from tests.conftest import Env
from tests.money import fund
from tests.scenes import put_scene, scene_bytes
from tests.scheduler.conftest import USER, submit
from tests.waiting import until as wait_until

D = Decimal
#: 100,000 credits an hour: a 0.2 s farm task costs about 5.6 credits.
RATE = D("100000")


@pytest.fixture
def farm_args() -> tuple[str, ...]:
    """Frames of 0.2 s: slow enough for a pause to reach the farm mid-render."""
    return ("--frame-seconds", "0.2")


@pytest.fixture
def billing_settings(env: Env) -> BillingSettings:
    prices = PriceList(
        instances=[
            InstancePrice(
                instance_type="local-cpu",
                cores=8,
                ghz=D("3.00"),
                unit=PriceUnit.instance_hour,
                rates={p: RATE for p in JobPriority},
            )
        ],
        default_instance_type="local-cpu",
        storage_per_gb_month=D("0"),
        egress_per_gb=D("0"),
    )
    # 0.1 s a 1080p frame: a 320x180 frame is estimated at 0.007 s at the high end, far
    # below what the farm takes, so the first hold is soon outrun.
    seconds = {Renderer.blender_cycles: D("0.1"), Renderer.blender_eevee: D("0.1")}
    return env.settings(BillingSettings, default_prices=prices, reference_seconds_per_frame=seconds)


def until(check: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    """Renders take a while here: up to a minute."""
    return wait_until(check, timeout=60)


async def envelope(rt: ServiceRuntime[Any], job_id: str) -> dict[str, Any]:
    async with rt.pool.acquire() as conn:
        text = await conn.fetchval("SELECT envelope FROM job.jobs WHERE job_id = $1", job_id)
    found: dict[str, Any] = orjson.loads(text) if text else {}
    return found


async def wallet(rt: ServiceRuntime[Any]) -> dict[str, Decimal]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT balance, held, available FROM wallet.balances WHERE user_id = $1", USER.id
        )
    assert row is not None
    return dict(row)


async def lines(rt: ServiceRuntime[Any], job_id: str) -> list[dict[str, Any]]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT cause, amount_credits FROM billing.cost_lines WHERE job_id = $1 ORDER BY seq",
            job_id,
        )
    return [dict(r) for r in rows]


async def wallet_moves(rt: ServiceRuntime[Any], job_id: str) -> list[tuple[str, Decimal]]:
    """The job's transfers in the wallet, in order: (kind, balance change)."""
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind, balance_change FROM wallet.transfers WHERE job_id = $1 ORDER BY version",
            job_id,
        )
    return [(r["kind"], r["balance_change"]) for r in rows]


async def settled(rt: ServiceRuntime[Any], job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await envelope(rt, job_id)
        return job if job and job["cost"]["status"] == "settled" else None

    found: dict[str, Any] = await until(check)
    return found


async def launch(render_path: dict[str, ServiceRuntime[Any]]) -> ServiceRuntime[Any]:
    for rt in render_path.values():
        await rt.launch()
    return render_path["job"]


async def test_a_rendered_job_is_charged_exactly_what_its_tasks_cost_and_the_rest_released(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    rt = await launch(render_path)
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await submit(rt, scene, frames=4, credits=D("1000.00"))

    job = await settled(rt, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 4
    cost = job["cost"]
    charged = await lines(rt, job_id)
    assert [line["cause"] for line in charged] == ["task"] * 4
    so_far = sum((line["amount_credits"] for line in charged), D(0))
    assert D(cost["so_far_credits"]) == so_far > 0
    assert D(cost["captured_credits"]) == so_far  # every task was within the hold
    assert D(cost["held_credits"]) == 0
    # The wallet: the holds went out as held, the capture posted the cost and gave the rest
    # back; nothing else moved.
    assert await until(lambda: _wallet_is(rt, D("1000.00") - so_far)) is True

    # wallet.transfers is a read model of its own: wait for it to show the capture too.
    async def captured() -> list[tuple[str, Decimal]] | None:
        found = await wallet_moves(rt, job_id)
        return found if found and found[-1][0] == "capture" else None

    moves = await until(captured)
    kinds = [kind for kind, _ in moves]
    assert kinds[0] == "hold" and kinds[-1] == "capture"
    assert set(kinds[1:-1]) <= {"hold_increase"}
    assert sum((change for _, change in moves), D(0)) == -so_far


async def _wallet_is(rt: ServiceRuntime[Any], balance: Decimal) -> bool:
    w = await wallet(rt)
    return w["balance"] == balance and w["held"] == 0 and w["available"] == balance


async def test_a_job_at_its_cost_cap_stops_and_is_charged_at_most_the_cap(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    rt = await launch(render_path)
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await submit(rt, scene, frames=40, credits=D("1000.00"), cost_cap_credits=D("3"))

    job = await settled(rt, job_id)
    assert job["status"] == "failed" and job["failure_code"] == "cost_cap_reached"
    assert job["frames_done"] < 40
    captured = D(job["cost"]["captured_credits"])
    assert 0 < captured <= D("3.00")
    # The lines (tasks, and a negative cap adjustment for what ran past the cap) add up to
    # exactly what was charged; the wallet lost exactly that.
    charged = await lines(rt, job_id)
    assert sum((line["amount_credits"] for line in charged), D(0)) == captured
    assert {line["cause"] for line in charged} <= {"task", "cap_adjustment"}
    assert await until(lambda: _wallet_is(rt, D("1000.00") - captured)) is True


async def test_a_job_without_credits_waits_paused_and_renders_after_a_top_up(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    rt = await launch(render_path)
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await submit(rt, scene, frames=2, credits=None)

    async def paused() -> dict[str, Any] | None:
        job = await envelope(rt, job_id)
        waiting = job and job["status"] == "paused"
        return job if waiting and job["cost"]["status"] == "awaiting_credits" else None

    job = await until(paused)
    assert job["cost"]["status"] == "awaiting_credits"
    assert job["cost"]["awaiting_reason"] == "insufficient_credits"
    assert job["eta"]["reason"] == "paused"
    # Nothing was staged or rendered for it: no cost, and the steps did not start.
    assert job["steps"][0]["status"] == "pending" and D(job["cost"]["so_far_credits"]) == 0

    await fund(rt.nc, rt.settings, USER.id, D("1000.00"))
    job = await settled(rt, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 2


async def test_a_job_whose_hold_cannot_grow_pauses_its_farm_job_and_resumes_after_a_top_up(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    rt = await launch(render_path)
    scene = await put_scene(s3, env, scene_bytes(4096))
    # Credits for the first hold (30 frames at 0.19 credits, +20 %) and not much more.
    job_id = await submit(rt, scene, frames=30, credits=D("7.50"))

    async def paused_rendering() -> dict[str, Any] | None:
        job = await envelope(rt, job_id)
        if job and job["status"] == "paused" and job["frames_done"] > 0:
            return job if job["cost"]["status"] == "awaiting_credits" else None
        return None

    job = await until(paused_rendering)
    assert job["cost"]["awaiting_reason"] == "insufficient_credits"
    async with render_path["bridge"].pool.acquire() as conn:
        suspended = await conn.fetchval(
            "SELECT count(*) FROM bridge.events WHERE type = 'render.RenderSuspended'"
            " AND data->>'job_id' = $1",
            job_id,
        )
    assert suspended == 1  # the farm job was suspended, not left rendering

    await fund(rt.nc, rt.settings, USER.id, D("1000.00"))
    job = await settled(rt, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 30
    charged = await lines(rt, job_id)
    captured = D(job["cost"]["captured_credits"])
    assert sum((line["amount_credits"] for line in charged), D(0)) == captured > D("7.50")
    assert await until(lambda: _wallet_is(rt, D("1007.50") - captured)) is True


async def test_a_job_cancelled_while_the_scheduler_is_down_gets_its_hold_back_whole(
    render_path: dict[str, ServiceRuntime[Any]], s3: S3Client, env: Env
) -> None:
    for name, service in render_path.items():
        if name != "scheduler":  # down: nothing prepares, stages or renders the job
            await service.launch()
    rt = render_path["job"]
    scene = await put_scene(s3, env, scene_bytes(4096))
    job_id = await submit(rt, scene, frames=2, credits=D("1000.00"))

    async def held() -> dict[str, Any] | None:
        job = await envelope(rt, job_id)
        return job if job and job["cost"]["status"] == "held" else None

    job = await until(held)
    hold = D(job["cost"]["held_credits"])
    assert hold > 0 and job["status"] == "submitted"
    assert await until(lambda: _wallet_holds(rt, hold)) is True

    cancel = CancelJob(job_id=job_id, owner_id=USER.id, reason="wrong camera")
    client = CommandClient(rt.nc, rt.settings, timeout=10)
    await client.send(cancel, JobAccepted, command_id=new_id("cmd"), actor=USER)
    job = await settled(rt, job_id)
    assert job["status"] == "cancelled"
    assert D(job["cost"]["captured_credits"]) == 0 and D(job["cost"]["held_credits"]) == 0
    # The hold went back whole: the wallet is as funded, nothing charged.
    assert await until(lambda: _wallet_is(rt, D("1000.00"))) is True
    voided = [("hold", D(0)), ("void", D(0))]

    async def moves_voided() -> bool:
        return await wallet_moves(rt, job_id) == voided

    assert await until(moves_voided) is True


async def _wallet_holds(rt: ServiceRuntime[Any], held: Decimal) -> bool:
    w = await wallet(rt)
    return w["held"] == held and w["available"] == w["balance"] - held
