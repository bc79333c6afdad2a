"""The deadline-bridge against the local farm over HTTP: submissions that survive a crash,
and a Web Service that requires authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from contracts.errors import DomainError, FarmUnavailable
from contracts.jobs import (
    FrameRange,
    JobPriority,
    OutputFormat,
    Renderer,
    RenderSettings,
    Resolution,
)
from contracts.render import RenderAccepted, RenderKind, RenderOrdered, RenderStatus, SubmitRender
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.uow import UnitOfWork
from libs.runtime import ServiceRuntime, build
from services.deadline_bridge.client import DeadlineClient, FarmError
from services.deadline_bridge.commands import RenderCommands, tagged
from services.deadline_bridge.domain import FarmRender
from services.deadline_bridge.service import SERVICE, Bridge
from services.deadline_bridge.settings import BridgeSettings
from tests.conftest import Env
from tests.farm.conftest import Farm

ACTOR = Actor(kind="service", id="scheduler")


def order(job_id: str = "job_1", **changes: Any) -> SubmitRender:
    fields: dict[str, Any] = dict(
        job_id=job_id,
        owner_id="usr_1",
        kind=RenderKind.full,
        attempt=1,
        name="shot_030",
        scene_key="scenes/shot_030.blend",
        renderer=Renderer.blender_cycles,
        frame_range=FrameRange(start=1, end=4),
        chunk_size=2,
        resolution=Resolution(width=320, height=180),
        render_settings=RenderSettings(),
        priority=JobPriority.high,
    )
    return SubmitRender(**{**fields, **changes})


@pytest.fixture
async def bridge_on(env: Env, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[ServiceRuntime[Bridge]] = []

    async def start(farm: Farm, **settings: Any) -> ServiceRuntime[Bridge]:
        bridge = await build(
            SERVICE,
            env.settings(
                BridgeSettings,
                farm_url=farm.url,
                farm_outputs_root=str(tmp_path / "renders"),
                scenes_root=str(tmp_path / "scenes"),
                **settings,
            ),
        )
        await bridge.launch()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        await bridge.stop()


async def farm_jobs_tagged(farm: Farm, render_id: str) -> list[dict[str, Any]]:
    states = "Active,Suspended,Completed,Failed,Pending"
    jobs: list[dict[str, Any]] = farm.client.get("/api/jobs", params={"States": states}).json()
    return [j for j in jobs if tagged(j, render_id)]


async def test_a_submission_retried_after_a_crash_finds_its_farm_job_instead_of_adding_one(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    cmd = order()
    # The first try recorded the order and created the farm job, then died before
    # recording RenderSubmitted.
    settings = bridge.settings
    assert isinstance(settings, BridgeSettings)
    commands = RenderCommands(settings, bridge.wired.farm)
    uow = UnitOfWork(bridge.store)
    render = await uow.get(FarmRender, cmd.render_id)
    render_dir = f"{settings.farm_outputs_root}/usr_1/job_1/{cmd.render_id}"
    render.order(
        RenderOrdered(
            render_id=cmd.render_id,
            job_id=cmd.job_id,
            owner_id=cmd.owner_id,
            kind=cmd.kind,
            attempt=1,
            frames=[1, 2, 3, 4],
            chunk_size=2,
            output_dir=render_dir,
            output_pattern="frame_####.png",
            at=datetime.now(UTC),
        )
    )
    await uow.commit()
    first = await bridge.wired.farm.submit_job(
        commands.job_info(cmd, render), commands.plugin_info(cmd, render)
    )

    client = CommandClient(bridge.nc, bridge.settings)
    reply = await client.send(cmd, RenderAccepted, command_id="submit-retry", actor=ACTOR)
    assert reply.status is RenderStatus.submitted and reply.farm_job_id == first
    assert [j["_id"] for j in await farm_jobs_tagged(farm, cmd.render_id)] == [first]

    again = await client.send(cmd, RenderAccepted, command_id="another-id", actor=ACTOR)
    assert again.farm_job_id == first
    assert len(await farm_jobs_tagged(farm, cmd.render_id)) == 1


async def test_the_farm_job_carries_the_order(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    cmd = order(
        "job_2",
        resolution=Resolution(width=1920, height=1080),
        render_settings=RenderSettings(
            output_format=OutputFormat.exr, samples=256, camera="CAM_hero"
        ),
    )
    client = CommandClient(bridge.nc, bridge.settings)
    reply = await client.send(cmd, RenderAccepted, command_id="submit-2", actor=ACTOR)
    [job] = farm.client.get("/api/jobs", params={"JobID": reply.farm_job_id}).json()
    props = job["Props"]
    assert props["Frames"] == "1-4" and int(props["Chunk"]) == 2 and props["Tasks"] == 2
    assert int(props["Pri"]) == 75  # high
    assert props["ExDic"]["rf_render_id"] == cmd.render_id
    assert props["Batch"] == "job_2"
    render_dir = f"/usr_1/job_2/{cmd.render_id}"
    assert job["OutDir"][0].endswith(render_dir)
    assert job["OutFile"] == ["frame_####.exr"]
    # The render settings reach the farm's plugin (values come back as strings, as Deadline
    # stores them).
    plugin_info = props["PlugInfo"]
    assert plugin_info["OutputFormat"] == "OPEN_EXR"
    assert plugin_info["Samples"] == "256"
    assert plugin_info["Camera"] == "CAM_hero"
    assert (plugin_info["ResolutionX"], plugin_info["ResolutionY"]) == ("1920", "1080")
    assert plugin_info["Renderer"] == "CYCLES"
    assert plugin_info["OutputFile"].endswith(f"{render_dir}/frame_####.exr")
    assert plugin_info["SceneFile"].endswith("/scenes/shot_030.blend")


async def test_a_job_that_keeps_the_scenes_samples_and_camera_sends_none(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    cmd = order("job_5", render_settings=RenderSettings(output_format=OutputFormat.jpeg))
    client = CommandClient(bridge.nc, bridge.settings)
    reply = await client.send(cmd, RenderAccepted, command_id="submit-5", actor=ACTOR)
    [job] = farm.client.get("/api/jobs", params={"JobID": reply.farm_job_id}).json()
    plugin_info = job["Props"]["PlugInfo"]
    assert plugin_info["OutputFormat"] == "JPEG"
    assert plugin_info["OutputFile"].endswith("/frame_####.jpg")
    assert "Samples" not in plugin_info and "Camera" not in plugin_info
    assert (plugin_info["ResolutionX"], plugin_info["ResolutionY"]) == ("320", "180")


async def test_an_authenticated_web_service_takes_credentials_and_refuses_without(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm], env: Env
) -> None:
    farm = make_farm("--user", "svc-render", "--password", "s3cret-pass", workers=0)
    anonymous = DeadlineClient(env.settings(BridgeSettings, farm_url=farm.url))
    with pytest.raises(FarmError) as refused:
        await anonymous.jobs_in_states(["Active"])
    assert refused.value.status == 401
    await anonymous.aclose()

    bridge: ServiceRuntime[Bridge] = await bridge_on(
        farm, farm_username="svc-render", farm_password=SecretStr("s3cret-pass")
    )
    client = CommandClient(bridge.nc, bridge.settings)
    reply = await client.send(order("job_3"), RenderAccepted, command_id="s3", actor=ACTOR)
    assert reply.status is RenderStatus.submitted and reply.farm_job_id


async def test_an_unreachable_farm_is_a_retryable_error(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    farm.stop()
    client = CommandClient(bridge.nc, bridge.settings)
    with pytest.raises(DomainError) as failed:
        await client.send(order("job_4"), RenderAccepted, command_id="s4", actor=ACTOR)
    assert type(failed.value) is FarmUnavailable and failed.value.retryable
