"""Wiring and start-up of the scheduler."""

from __future__ import annotations

from pathlib import Path

from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime, run
from libs.service import Service
from services.scheduler.manager import CONSUMER, SUBJECTS, RenderManager
from services.scheduler.settings import SchedulerSettings

#: Redelivery back-off: a farm or service outage of a few minutes delays, never loses.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
MAX_DELIVER = 20


class Scheduler:
    def __init__(self, rt: ServiceRuntime, manager: RenderManager) -> None:
        self.rt = rt
        self.manager = manager


async def build(settings: SchedulerSettings) -> Scheduler:
    rt = ServiceRuntime(settings, schema="scheduler")
    await rt.start(relay=False)  # it records no events of its own
    client = CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds)
    manager = RenderManager(settings, rt.store, client)
    rt.consumer(
        CONSUMER, SUBJECTS, manager.handle, max_deliver=MAX_DELIVER, backoff=BACKOFF, batch=100
    )
    return Scheduler(rt, manager)


SERVICE = Service(
    name="scheduler",
    schema="scheduler",
    settings=SchedulerSettings,
    migrations=Path(__file__).parent / "migrations",
    relay=False,
)


async def main() -> None:
    scheduler = await build(SchedulerSettings())
    await scheduler.rt.serve()


if __name__ == "__main__":
    run(main)
