"""The scheduler: the render process manager, as a policy on the kit (:mod:`libs.process`)."""

from __future__ import annotations

from libs.bus.commands import Actor, CommandClient
from libs.process import PostgresProcessStore, ProcessRunner
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.scheduler.domain import JobRender, RenderProcess
from services.scheduler.settings import SchedulerSettings

#: Redelivery back-off: a farm or service outage of a few minutes delays, never loses.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
MAX_DELIVER = 20


async def wire(rt: ServiceRuntime[ProcessRunner[JobRender]]) -> ProcessRunner[JobRender]:
    settings = rt.settings
    assert isinstance(settings, SchedulerSettings)
    store = PostgresProcessStore(rt.store)
    runner = ProcessRunner(
        RenderProcess(settings.skip_reason),
        CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds),
        store,
        Actor(kind="service", id=settings.service_name),
    )
    rt.consumer(
        runner.manager.name,
        runner.manager.subjects,
        runner.handle,
        max_deliver=MAX_DELIVER,
        backoff=BACKOFF,
        batch=100,
    )
    return runner


SERVICE = Service(
    name="scheduler",
    schema="scheduler",
    settings=SchedulerSettings,
    wire=wire,
)
