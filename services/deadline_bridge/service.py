"""Wiring and start-up of the deadline-bridge."""

from __future__ import annotations

from pathlib import Path

from libs.runtime import ServiceRuntime, run
from libs.service import Service
from services.deadline_bridge.client import DeadlineClient
from services.deadline_bridge.commands import RenderCommands
from services.deadline_bridge.poller import FarmPoller
from services.deadline_bridge.projections import RendersProjection
from services.deadline_bridge.settings import BridgeSettings


class Bridge:
    def __init__(self, rt: ServiceRuntime, farm: DeadlineClient, poller: FarmPoller) -> None:
        self.rt = rt
        self.farm = farm
        self.poller = poller

    async def stop(self) -> None:
        await self.rt.stop()
        await self.farm.aclose()


async def build(settings: BridgeSettings) -> Bridge:
    rt = ServiceRuntime(settings, schema="bridge")
    await rt.start()
    farm = DeadlineClient(settings)
    renders_view = await rt.projector(RendersProjection())
    RenderCommands(settings, rt.store, farm).register(rt.command_server())
    poller = FarmPoller(settings, rt.store, farm, renders_view)
    rt.background("farm-poller", poller.run)

    async def poller_health() -> str | None:
        if poller.last_error is not None:
            return f"farm poller: {poller.last_error}"
        return None

    rt.readiness_checks.append(poller_health)
    return Bridge(rt, farm, poller)


SERVICE = Service(
    name="deadline-bridge",
    schema="bridge",
    settings=BridgeSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(RendersProjection(),),
    secrets=frozenset({"farm_password"}),
)


async def main() -> None:
    bridge = await build(BridgeSettings())
    try:
        await bridge.rt.serve()
    finally:
        await bridge.farm.aclose()


if __name__ == "__main__":
    run(main)
