"""An administrator sees the render fleet and its usage: the live machines per pool with
their cost per hour and their time so far (``GET /v1/admin/vms``), and VM hours and cost per
day and pool, with the farm's overhead (boot and idle), beside each user's charged task
hours (``GET /v1/admin/usage``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from libs.eventstore.uow import UnitOfWork
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.scaler.machines import Vm
from services.scaler.service import SERVICE as SCALER
from services.scaler.settings import ScalerSettings
from tests.conftest import Env
from tests.fixtures import Scenes, Users
from tests.gateway.test_costs import charge, create_job
from tests.waiting import until

D = Decimal
PRICE = D("0.36")  # a dollar-cent per 100 seconds


@pytest.fixture
async def scaler(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    """The scaler's read models, kept by its projections (no pools to scale: no farm)."""
    rt = await build(SCALER, env.settings(ScalerSettings, pools=(), farm_url="http://127.0.0.1:9"))
    await rt.launch()
    yield rt
    await rt.stop()


async def machine(rt: ServiceRuntime[Any], pool: str, *steps: tuple[str, datetime]) -> str:
    """A machine of ``pool`` that went through ``steps`` (request, boot, busy, idle, stop)."""
    vm_id = new_id("vm")
    uow = UnitOfWork(rt.store, metadata={})
    vm = await uow.get(Vm, vm_id)
    for step, at in steps:
        match step:
            case "request":
                vm.request(
                    pool=pool,
                    provider="simulated",
                    instance_type="c6i.4xlarge",
                    spot=False,
                    region="eu-west-1",
                    hourly_price_usd=PRICE,
                    reason="backlog",
                    decision_id=None,
                    at=at,
                )
            case "boot":
                vm.booted(f"w-{vm_id}", at)
            case "busy" | "idle":
                vm.worker_seen(step == "busy", at)
            case "stop":
                vm.stopped("drained", at)
    await uow.commit()
    return vm_id


async def test_the_live_fleet_per_pool_with_its_cost_per_hour_and_time_so_far(
    client: httpx.AsyncClient, scaler: ServiceRuntime[Any], users: Users
) -> None:
    now = datetime.now(UTC)
    busy = await machine(
        scaler,
        "full",
        ("request", now - timedelta(seconds=300)),
        ("boot", now - timedelta(seconds=200)),
        ("busy", now - timedelta(seconds=100)),
    )
    await machine(scaler, "test", ("request", now - timedelta(seconds=50)))
    await machine(
        scaler,
        "full",
        ("request", now - timedelta(hours=2)),
        ("boot", now - timedelta(hours=1)),
        ("stop", now - timedelta(minutes=30)),
    )
    admin = users.new("admin")

    async def two_live() -> Any:
        body = (await client.get("/v1/admin/vms", headers=admin)).json()
        return body if len(body["items"]) == 2 else None

    body = await until(two_live, "the fleet read model", timeout=60)
    assert [(p["pool"], p["vms"], p["busy"], p["cost_per_hour_usd"]) for p in body["pools"]] == [
        ("full", 1, 1, "0.36"),
        ("test", 1, 0, "0.36"),
    ]
    assert body["cost_per_hour_usd"] == "0.72"
    full = next(v for v in body["items"] if v["vm_id"] == busy)
    assert (full["phase"], full["instance_type"], full["reason"]) == (
        "busy",
        "c6i.4xlarge",
        "backlog",
    )
    # Boot 100 s and idle 100 s ended; busy counted up to the answer (at least 100 s).
    assert (D(full["boot_seconds"]), D(full["idle_seconds"])) == (D(100), D(100))
    assert D(full["busy_seconds"]) >= 100
    lived = D(full["boot_seconds"]) + D(full["idle_seconds"]) + D(full["busy_seconds"])
    assert abs(D(full["cost_usd"]) - lived * PRICE / 3600) < D("0.00001")
    only = (await client.get("/v1/admin/vms", params={"pool": "test"}, headers=admin)).json()
    assert [v["pool"] for v in only["items"]] == ["test"]
    refused = await client.get("/v1/admin/vms", headers=users.new())
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


async def test_usage_per_day_and_pool_with_the_farms_overhead_and_per_user_task_hours(
    client: httpx.AsyncClient,
    scaler: ServiceRuntime[Any],
    billing: ServiceRuntime[Any],
    users: Users,
    scenes: Scenes,
) -> None:
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    # Booted before midnight, busy across it: the day before gets its part.
    await machine(
        scaler,
        "full",
        ("request", midnight - timedelta(seconds=200)),
        ("boot", midnight - timedelta(seconds=100)),
        ("busy", midnight - timedelta(seconds=50)),
        ("idle", midnight + timedelta(seconds=1000)),
        ("stop", midnight + timedelta(seconds=1100)),
    )
    admin = users.new("admin")
    user = new_id("usr")
    r = await client.post(
        f"/v1/admin/users/{user}/credits",
        json={"amount_credits": "50.00"},
        headers={**admin, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 200, r.text
    job = await create_job(client, scenes, users.headers(user))

    async def opened() -> bool:
        r = await client.get(f"/v1/jobs/{job}/cost", headers=users.headers(user))
        return bool(r.status_code == 200 and r.json()["cost_status"] == "held")

    await until(opened, "billing to open and hold the job's cost", timeout=60)
    for task, seconds in ((1, 1800.0), (2, 1800.0)):
        await charge(billing, job, task, seconds)
    yesterday, today = (midnight - timedelta(days=1)).date(), midnight.date()

    async def counted() -> Any:
        body = (
            await client.get(
                "/v1/admin/usage",
                params={"from": yesterday.isoformat(), "to": today.isoformat()},
                headers=admin,
            )
        ).json()
        return body if len(body["pools"]) == 2 and body["users"] else None

    body = await until(counted, "the usage read models", timeout=60)
    before, after = body["pools"]
    assert (before["day"], before["pool"]) == (yesterday.isoformat(), "full")
    assert D(before["boot_hours"]) * 3600 == 100 and D(before["idle_hours"]) * 3600 == 50
    assert D(before["busy_hours"]) * 3600 == 50
    assert D(after["busy_hours"]) * 3600 == 1000 and D(after["idle_hours"]) * 3600 == 100
    assert D(before["farm_overhead_usd"]) == (D(150) * PRICE / 3600).quantize(D("0.000001"))
    total = D(before["cost_usd"]) + D(after["cost_usd"])
    assert D(body["total_cost_usd"]) == total
    assert abs(total - D(1300) * PRICE / 3600) < D("0.00001")
    [mine] = [u for u in body["users"] if u["user_id"] == user]
    assert (mine["day"], D(mine["task_hours"])) == (today.isoformat(), D(1))
    assert D(mine["charged_credits"]) > 0
    bad = await client.get(
        "/v1/admin/usage",
        params={"from": today.isoformat(), "to": yesterday.isoformat()},
        headers=admin,
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_failed")
