"""The job service: the job aggregate's commands and its read models."""

from __future__ import annotations

from pathlib import Path

from libs.runtime import ServiceRuntime
from libs.service import Service
from services.job.commands import JobCommands
from services.job.projections import FramesProjection, JobsProjection
from services.job.settings import JobSettings


async def wire(rt: ServiceRuntime[JobCommands]) -> JobCommands:
    assert isinstance(rt.settings, JobSettings)
    commands = JobCommands(rt.settings)
    commands.register(rt.commands)
    return commands


SERVICE = Service(
    name="job",
    schema="job",
    settings=JobSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(JobsProjection(), FramesProjection()),
    wire=wire,
)
