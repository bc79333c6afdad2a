"""Wiring and start-up of the job service."""

from __future__ import annotations

from pathlib import Path

from libs.runtime import ServiceRuntime, run
from libs.service import Service
from services.job.commands import JobCommands
from services.job.projections import FramesProjection, JobsProjection
from services.job.settings import JobSettings


async def build(settings: JobSettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, schema="job")
    await rt.start()
    jobs_view = await rt.projector(JobsProjection())
    frames_view = await rt.projector(FramesProjection())
    server = rt.command_server(read_your_writes=[jobs_view, frames_view])
    JobCommands(settings, rt.store).register(server)
    return rt


SERVICE = Service(
    name="job",
    schema="job",
    settings=JobSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(JobsProjection(), FramesProjection()),
)


async def main() -> None:
    rt = await build(JobSettings())
    await rt.serve()


if __name__ == "__main__":
    run(main)
