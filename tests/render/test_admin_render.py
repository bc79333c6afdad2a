"""An administrator stops a job on the real farm: by killing it, or by suspending its owner.
Either way it goes the cancel path: the farm job is deleted, billing settles the cost (what
the rendered tasks cost is captured, the rest of the hold released), and the job's history
says who stopped it and why (``job.JobKilled``)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import JobPriority
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.gateway.settings import GatewaySettings
from services.identity.service import SERVICE as IDENTITY
from services.identity.settings import IdentitySettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.render.conftest import RenderSystem

PASSWORD = "correct horse battery staple"
#: The farm's machine at 3,600 credits an hour: a 0.3 s frame costs about 0.3 credits, so
#: the first task charged shows a cost (at the default ₹36/hour it rounds to nothing).
PRICES = PriceList(
    instances=[
        InstancePrice(
            instance_type="local-cpu",
            cores=8,
            ghz=Decimal("3.00"),
            unit=PriceUnit.instance_hour,
            rates={p: Decimal("3600") for p in JobPriority},
        )
    ],
    default_instance_type="local-cpu",
    storage_per_gb_month=Decimal("0"),
    egress_per_gb=Decimal("0"),
)


@pytest.fixture
def scene_env() -> dict[str, str]:
    """The render system's usual scene settings, and billing's dearer prices."""
    return {
        "RF_SCENE_OPAQUE_SCENES": "allow",
        "RF_BILLING_DEFAULT_PRICES": PRICES.model_dump_json(),
    }


@pytest.fixture
async def identity(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    """Identity for the suspension (the render system's gateway process reaches it over the
    bus): here in the test process."""
    rt = await build(IDENTITY, env.settings(IdentitySettings, password_scrypt_n=2**10))
    await rt.launch()
    yield rt
    await rt.stop()


def admin(system: RenderSystem) -> dict[str, str]:
    return Users(system.env.settings(GatewaySettings)).headers(new_id("usr"), "admin")


async def rendering_with_a_cost(system: RenderSystem, job_id: str) -> dict[str, Any]:
    """Rendering, with at least one task charged (so there is a cost to capture)."""
    return await system.wait(
        job_id,
        lambda j: j["status"] == "rendering" and Decimal(j["cost"]["so_far_credits"]) > 0,
    )


async def assert_stopped_and_settled(system: RenderSystem, job_id: str) -> dict[str, Any]:
    done = await system.finished(job_id)
    assert done["status"] == "cancelled", done
    assert await system.farm_jobs_of(job_id) == []  # deleted from the farm
    settled = await system.wait(job_id, lambda j: j["cost"]["status"] == "settled")
    cost = settled["cost"]
    assert Decimal(cost["captured_credits"]) > 0, cost
    assert Decimal(cost["captured_credits"]) == Decimal(cost["so_far_credits"]), cost
    assert Decimal(cost["held_credits"]) == 0, cost
    return settled


async def registered_owner(system: RenderSystem, as_admin: dict[str, str]) -> RenderSystem:
    """A user registered, approved, logged in and granted 1,000 credits: the render system
    as that user (identity in the test process, so the user can be suspended)."""
    api = system.api
    r = await api.post(
        "/v1/auth/register",
        json={"email": "owner@studio.test", "password": PASSWORD, "display_name": "Owner"},
    )
    assert r.status_code == 201, r.text
    owner_id = r.json()["user_id"]
    assert (await api.post(f"/v1/admin/users/{owner_id}/approve", headers=as_admin)).is_success
    tokens = await api.post(
        "/v1/auth/login", json={"email": "owner@studio.test", "password": PASSWORD}
    )
    headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
    granted = await api.post(
        f"/v1/admin/users/{owner_id}/credits",
        json={"amount_credits": "1000.00"},
        headers={**as_admin, "Idempotency-Key": owner_id},
    )
    assert granted.status_code == 200, granted.text
    return dataclasses.replace(system, headers=headers, owner_id=owner_id)


async def test_an_admin_kill_stops_the_farm_job_and_captures_the_cost(
    render_system: RenderSystem,
) -> None:
    system = render_system
    as_admin = admin(system)
    job = await system.create_job(frame_range={"start": 1, "end": 40})
    await rendering_with_a_cost(system, job["job_id"])
    r = await system.api.post(
        f"/v1/admin/jobs/{job['job_id']}/kill",
        json={"reason": "renders someone else's scene"},
        headers=as_admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelling"  # the farm is busy with it: wait for the farm
    done = await assert_stopped_and_settled(system, job["job_id"])
    assert done["frames_done"] < 40
    [killed] = await system.events("job", "job.JobKilled", job["job_id"])
    assert killed["cause"] == "admin_kill" and killed["status"] == "rendering"
    assert killed["owner_id"] == system.owner_id and killed["job_name"] == job["name"]
    assert killed["reason"] == "renders someone else's scene"


async def test_suspending_the_owner_stops_their_rendering_job(
    render_system: RenderSystem, identity: ServiceRuntime[Any]
) -> None:
    system = render_system
    as_admin = admin(system)
    api = system.api
    owner = await registered_owner(system, as_admin)
    owner_id, headers = owner.owner_id, owner.headers
    job = await owner.create_job(frame_range={"start": 1, "end": 40})
    await rendering_with_a_cost(owner, job["job_id"])

    r = await api.post(
        f"/v1/admin/users/{owner_id}/suspend", json={"reason": "stolen card"}, headers=as_admin
    )
    assert r.status_code == 200, r.text
    refused = await api.get("/v1/jobs", headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (403, "user_suspended")
    # The owner cannot look any more; the admin can.
    admin_view = dataclasses.replace(system, headers=as_admin)
    await assert_stopped_and_settled(admin_view, job["job_id"])
    [killed] = await system.events("job", "job.JobKilled", job["job_id"])
    assert (killed["cause"], killed["owner_id"]) == ("user_suspended", owner_id)
    assert killed["reason"] == "the account was suspended: stolen card"
