"""Suspending and resuming a render on the local farm through the bridge: a suspended render
stops taking tasks (its waiting tasks are neither failures nor requeues, and it does not
finish), a resumed one finishes with every frame once; repeats and unknown renders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import DomainError, RenderNotFound
from contracts.jobs import FrameRange
from contracts.render import (
    RenderAccepted,
    RenderCompleted,
    RenderResumed,
    RenderStatus,
    RenderSuspended,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskRequeued,
    ResumeRender,
    SuspendRender,
)
from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime
from services.deadline_bridge.client import JobStat, TaskStat
from services.deadline_bridge.projections import active_renders
from services.deadline_bridge.service import Bridge
from tests.deadline_bridge.test_bridge import ACTOR, bridge_on, order
from tests.farm.conftest import Farm

__all__ = ["bridge_on"]  # the fixture, used by name

FRAMES = 8


async def event_types(bridge: ServiceRuntime[Bridge], render_id: str) -> list[str]:
    return [r.event_type for r in await bridge.store.read_stream(f"render-{render_id}")]


async def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.1)
    return result


async def test_a_suspended_render_stops_taking_tasks_and_a_resumed_one_finishes(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm("--frame-seconds", "0.3", workers=1)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    cmd = order("job_s", frame_range=FrameRange(start=1, end=FRAMES), chunk_size=1)
    rendering = await client.send(cmd, RenderAccepted, command_id="submit-s", actor=ACTOR)
    render_id, farm_job_id = cmd.render_id, rendering.farm_job_id
    assert farm_job_id is not None
    completed = RenderTaskCompleted.event_type

    async def some_done() -> bool:
        return completed in await event_types(bridge, render_id)

    await wait_until(some_done)
    suspend = SuspendRender(render_id=render_id, reason="insufficient_credits")
    suspended = await client.send(suspend, RenderAccepted, command_id="suspend-1", actor=ACTOR)
    assert suspended.status is RenderStatus.suspended
    [job] = farm.client.get("/api/jobs", params={"JobID": farm_job_id}).json()
    assert int(job["Stat"]) == JobStat.suspended

    # Several poll cycles later the farm has rendered nothing more (but the task a worker
    # was finishing), and the bridge said nothing of failures, requeues or an end.
    poller, farm_tasks = bridge.wired.poller, bridge.wired.farm.tasks

    async def farm_completed() -> int:
        return sum(t.stat == TaskStat.completed for t in await farm_tasks(farm_job_id))

    done_at_suspend = await farm_completed()
    cycles = poller.cycles
    await wait_until(lambda: asyncio.sleep(0, poller.cycles >= cycles + 4))
    assert await farm_completed() <= done_at_suspend + 1 < FRAMES
    types = await event_types(bridge, render_id)
    assert not {RenderTaskFailed.event_type, RenderTaskRequeued.event_type} & set(types)
    assert RenderCompleted.event_type not in types
    async with bridge.store.pool.acquire() as conn:
        assert (render_id, farm_job_id) in await active_renders(conn)  # still watched

    again = await client.send(suspend, RenderAccepted, command_id="suspend-2", actor=ACTOR)
    assert again.status is RenderStatus.suspended  # and no second RenderSuspended (below)

    resume = ResumeRender(render_id=render_id)
    resumed = await client.send(resume, RenderAccepted, command_id="resume-1", actor=ACTOR)
    assert resumed.status is RenderStatus.submitted

    async def finished() -> bool:
        return RenderCompleted.event_type in await event_types(bridge, render_id)

    await wait_until(finished)
    types = await event_types(bridge, render_id)
    assert types.count(completed) == FRAMES  # every frame once
    assert types.count(RenderSuspended.event_type) == types.count(RenderResumed.event_type) == 1
    assert RenderTaskFailed.event_type not in types

    late = await client.send(resume, RenderAccepted, command_id="resume-2", actor=ACTOR)
    assert late.status is RenderStatus.completed
    after_end = await client.send(suspend, RenderAccepted, command_id="suspend-3", actor=ACTOR)
    assert after_end.status is RenderStatus.completed
    assert (await event_types(bridge, render_id)) == types


async def test_resuming_a_render_that_is_not_suspended_changes_nothing(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    cmd = order("job_r")
    submitted = await client.send(cmd, RenderAccepted, command_id="submit-r", actor=ACTOR)
    resume = ResumeRender(render_id=cmd.render_id)
    reply = await client.send(resume, RenderAccepted, command_id="resume-r", actor=ACTOR)
    assert (reply.status, reply.version) == (RenderStatus.submitted, submitted.version)


@pytest.mark.parametrize(
    "cmd",
    [SuspendRender(render_id="job_x.full.1", reason="x"), ResumeRender(render_id="job_x.full.1")],
)
async def test_an_unknown_render_is_not_found(
    bridge_on: Callable[..., Any],
    make_farm: Callable[..., Farm],
    cmd: SuspendRender | ResumeRender,
) -> None:
    bridge: ServiceRuntime[Bridge] = await bridge_on(make_farm(workers=0))
    client = CommandClient(bridge.nc, bridge.settings)
    with pytest.raises(DomainError) as refused:
        await client.send(cmd, RenderAccepted, command_id=f"{cmd.command_type}-x", actor=ACTOR)
    assert type(refused.value) is RenderNotFound
