"""The deadline-bridge: renders on a Deadline farm, through its Web Service REST API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.runtime import ServiceRuntime
from libs.service import Service
from services.deadline_bridge.client import DeadlineClient
from services.deadline_bridge.commands import RenderCommands
from services.deadline_bridge.poller import FarmPoller
from services.deadline_bridge.projections import RendersProjection
from services.deadline_bridge.settings import BridgeSettings


@dataclass(frozen=True)
class Bridge:
    farm: DeadlineClient
    commands: RenderCommands
    poller: FarmPoller


async def wire(rt: ServiceRuntime[Bridge]) -> Bridge:
    settings = rt.settings
    assert isinstance(settings, BridgeSettings)
    farm = DeadlineClient(settings)
    rt.on_close(farm.aclose)
    commands = RenderCommands(settings, farm)
    commands.register(rt.commands)
    poller = FarmPoller(settings, rt.store, farm, rt.projectors["renders"])
    rt.background("farm-poller", poller.run)

    async def farm_reachable() -> str | None:
        return f"farm poller: {poller.last_error}" if poller.last_error is not None else None

    rt.readiness_checks.append(farm_reachable)
    return Bridge(farm, commands, poller)


SERVICE = Service(
    name="deadline-bridge",
    schema="bridge",
    settings=BridgeSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(RendersProjection(),),
    wire=wire,
    secrets=frozenset({"farm_password"}),
)
