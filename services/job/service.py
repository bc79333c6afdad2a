"""The job service: the job aggregate's commands and its read models."""

from __future__ import annotations

from pathlib import Path

from libs.bus.commands import Actor, CommandClient
from libs.process import PostgresProcessStore, ProcessRunner
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.job.commands import JobCommands
from services.job.deadlines import TestRenderDeadlines
from services.job.projections import FramesProjection, JobsProjection
from services.job.settings import JobSettings
from services.job.suspensions import SuspensionProcess


async def wire(rt: ServiceRuntime[JobCommands]) -> JobCommands:
    assert isinstance(rt.settings, JobSettings)
    commands = JobCommands(rt.settings)
    commands.register(rt.commands)
    to_itself = CommandClient(rt.nc, rt.settings, timeout=10)
    deadlines = TestRenderDeadlines(rt.settings, rt.store, to_itself)
    rt.background("test-render-deadlines", deadlines.run)
    suspensions = ProcessRunner(
        SuspensionProcess(rt.settings.suspended_user_jobs),
        to_itself,
        PostgresProcessStore(rt.store),
        Actor(kind="service", id=rt.settings.service_name),
    )
    rt.consumer(suspensions.manager.name, suspensions.manager.subjects, suspensions.handle)
    return commands


SERVICE = Service(
    name="job",
    schema="job",
    settings=JobSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(JobsProjection(), FramesProjection()),
    wire=wire,
)
