"""``RF_JOB_SUSPENDED_USER_JOBS=pause`` on the real farm: suspending a user pauses their
rendering job (its farm job suspended, nothing rendered or charged meanwhile) and the
reactivation resumes it to the end, every frame rendered once."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from libs.runtime import ServiceRuntime
from tests.render.conftest import RenderSystem
from tests.render.test_admin_render import (
    PRICES,
    admin,
    identity,
    registered_owner,
    rendering_with_a_cost,
)
from tests.waiting import until

__all__ = ["identity"]  # a fixture, used by name


@pytest.fixture
def scene_env() -> dict[str, str]:
    """The render system's usual scene settings, billing's dearer prices, and suspensions
    that pause."""
    return {
        "RF_SCENE_OPAQUE_SCENES": "allow",
        "RF_BILLING_DEFAULT_PRICES": PRICES.model_dump_json(),
        "RF_JOB_SUSPENDED_USER_JOBS": "pause",
    }


async def test_a_suspended_owners_job_is_paused_on_the_farm_and_resumed_by_the_reactivation(
    render_system: RenderSystem, identity: ServiceRuntime[Any]
) -> None:
    as_admin = admin(render_system)
    api = render_system.api
    owner = await registered_owner(render_system, as_admin)
    job = await owner.create_job(frame_range={"start": 1, "end": 40})
    job_id = job["job_id"]
    await rendering_with_a_cost(owner, job_id)

    r = await api.post(
        f"/v1/admin/users/{owner.owner_id}/suspend",
        json={"reason": "unpaid invoice"},
        headers=as_admin,
    )
    assert r.status_code == 200, r.text
    watcher = dataclasses.replace(render_system, headers=as_admin)
    await watcher.wait(job_id, lambda j: j["status"] == "paused")
    [paused] = await render_system.events("job", "job.JobPaused", job_id)
    assert paused["reason"] == "account_suspended"

    async def farm_suspended() -> bool:
        [farm_job] = await render_system.farm_jobs_of(job_id)
        return bool(farm_job["Stat"] == 2)  # Deadline's Suspended

    await until(farm_suspended, "the farm job suspended")
    before = (await watcher.job(job_id))["frames_done"]
    assert before < 40

    r = await api.post(f"/v1/admin/users/{owner.owner_id}/reactivate", headers=as_admin)
    assert r.status_code == 200, r.text
    done = await watcher.finished(job_id, timeout=120)
    assert done["status"] == "completed" and done["frames_done"] == 40, done
    assert await render_system.events("job", "job.JobResumed", job_id)
    settled = await watcher.wait(job_id, lambda j: j["cost"]["status"] == "settled")
    assert Decimal(settled["cost"]["captured_credits"]) > 0
    assert len(render_system.farm_files(job_id)) == 40  # one file per frame
