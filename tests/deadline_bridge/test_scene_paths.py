"""The bridge builds the farm's scene path from the scene key, and never one outside the
scenes root: a key that got past the API is refused here for good, before anything is
ordered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import DomainError, ValidationFailed
from contracts.render import RenderAccepted
from libs.bus.commands import CommandClient
from libs.eventstore.uow import UnitOfWork
from libs.runtime import ServiceRuntime
from services.deadline_bridge.commands import RenderCommands
from services.deadline_bridge.domain import FarmRender
from services.deadline_bridge.service import Bridge
from services.deadline_bridge.settings import BridgeSettings
from tests.deadline_bridge.test_bridge import ACTOR, bridge_on, farm_jobs_tagged, order
from tests.farm.conftest import Farm

__all__ = ["bridge_on"]


@pytest.mark.parametrize(
    "scene_key",
    ["../../etc/passwd", "/etc/passwd", "..", "scenes/../../outside.blend", "a//b", "a\\b"],
)
async def test_a_scene_key_leaving_the_scenes_root_is_refused_before_anything_is_ordered(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm], scene_key: str
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    cmd = order("job_evil").model_copy(update={"scene_key": scene_key})
    client = CommandClient(bridge.nc, bridge.settings)
    with pytest.raises(DomainError) as refused:
        await client.send(cmd, RenderAccepted, command_id=f"submit-{scene_key}", actor=ACTOR)
    assert type(refused.value) is ValidationFailed
    assert not refused.value.retryable  # the scheduler fails the job instead of retrying
    assert "scene_key" in refused.value.message
    assert await farm_jobs_tagged(farm, cmd.render_id) == []
    assert not (await UnitOfWork(bridge.store).get(FarmRender, cmd.render_id)).exists


async def test_a_scene_key_through_a_symlink_out_of_the_scenes_root_is_refused(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "shared").symlink_to(tmp_path / "elsewhere")
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    cmd = order("job_link").model_copy(update={"scene_key": "shared/shot.blend"})
    client = CommandClient(bridge.nc, bridge.settings)
    with pytest.raises(DomainError) as refused:
        await client.send(cmd, RenderAccepted, command_id="submit-link", actor=ACTOR)
    assert type(refused.value) is ValidationFailed
    assert await farm_jobs_tagged(farm, cmd.render_id) == []


async def test_a_good_scene_key_names_the_file_under_the_scenes_root(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    bridge: ServiceRuntime[Bridge] = await bridge_on(make_farm(workers=0))
    settings = bridge.settings
    assert isinstance(settings, BridgeSettings)
    commands = RenderCommands(settings, bridge.wired.farm)
    assert commands.scene_file(order()) == f"{tmp_path}/scenes/scenes/shot_030.blend"
