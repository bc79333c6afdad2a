"""A test render asked for while the farm is busy with a full render starts ahead of it:
its own pool and priority put its frame before the queued full-render tasks (and interrupt
one when no worker frees up), so it is ready long before the full render ends."""

from __future__ import annotations

from tests.render.conftest import RenderSystem


async def test_a_test_render_on_a_busy_farm_is_ready_before_the_full_render_ends(
    render_system: RenderSystem,
) -> None:
    system = render_system
    busy = await system.create_job(frame_range={"start": 1, "end": 120})  # 2 workers, 18 s
    await system.wait(busy["job_id"], lambda j: j["frames_done"] >= 2)
    waiting = await system.create_job(start_full_render=False)
    job_id = waiting["job_id"]
    await system.wait(job_id, lambda j: j["status"] == "ready")

    r = await system.api.post(
        f"/v1/jobs/{job_id}/test-render", json={"frames": [3]}, headers=system.headers
    )
    assert r.status_code == 202, r.text
    job = await system.wait(job_id, lambda j: j["test_render"]["status"] == "completed")
    other = await system.job(busy["job_id"])
    assert other["status"] == "rendering" and other["frames_done"] < 120, other
    assert job["status"] == "test_render_ready"
    assert job["test_render"]["ready_in_seconds"] < 10
    [frame] = job["test_render"]["results"]
    assert frame["output"]["frame"] == 3
    assert "start_full_render" in job["allowed_actions"]
