"""Drives jobs through their render as the scheduler does: its commands, over NATS."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from contracts.base import Command
from contracts.jobs import (
    CompleteJob,
    FrameOutput,
    JobAccepted,
    QueueJob,
    RecordFramesRendered,
    RecordSceneChecked,
    RecordScenePrepared,
    RecordSceneRepathed,
    RecordSceneStaged,
    RecordSceneStagingProgress,
    RenderOrder,
    StartJobRender,
    StartSceneStaging,
)
from contracts.outputs import frame_key, frame_output_id
from contracts.render import RenderKind
from libs.bus.commands import Actor, CommandClient
from libs.runtime import ServiceRuntime

R = TypeVar("R", bound=BaseModel)

SCHEDULER = Actor(kind="service", id="scheduler")
T0 = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)


def outputs(job_id: str, frames: list[int], owner_id: str = "usr_a") -> list[FrameOutput]:
    """The frames as the bridge reports them once stored (``contracts/outputs.py``)."""
    return [
        FrameOutput(
            frame=n,
            output_id=frame_output_id(job_id, RenderKind.full, n),
            object_key=frame_key(owner_id, job_id, RenderKind.full, f"frame_{n:04d}.png"),
            size_bytes=1_000_000 + n,
            sha256=hashlib.sha256(f"{job_id}:{n}".encode()).hexdigest(),
        )
        for n in frames
    ]


def render_id(job_id: str, attempt: int = 1) -> str:
    return f"{job_id}.full.{attempt}"


def staged_key(job_id: str) -> str:
    return f"staged/usr_x/{job_id.lower()}/main.blend"


def prepared_key(job_id: str) -> str:
    return f"prepared/{job_id}/main.blend"


class Scheduler:
    """Sends the scheduler's commands to the running job service."""

    def __init__(self, rt: ServiceRuntime[Any]) -> None:
        self.client = CommandClient(rt.nc, rt.settings, timeout=10)

    async def send(self, cmd: Command, *, command_id: str | None = None) -> JobAccepted:
        return await self.ask(cmd, JobAccepted, command_id=command_id)

    async def ask(self, cmd: Command, result_type: type[R], *, command_id: str | None = None) -> R:
        return await self.client.send(
            cmd, result_type, command_id=command_id or uuid.uuid4().hex, actor=SCHEDULER
        )

    async def stage(self, job_id: str) -> JobAccepted:
        """The job's scene staged, as the upload service reports it: start, half, done."""
        await self.send(StartSceneStaging(job_id=job_id, at=T0))
        await self.send(
            RecordSceneStagingProgress(job_id=job_id, bytes_done=50, bytes_total=100, at=T0)
        )
        staged = RecordSceneStaged(job_id=job_id, scene_key=staged_key(job_id), reused=False, at=T0)
        return await self.send(staged)

    async def prepare(self, job_id: str) -> JobAccepted:
        """The job's scene staged, then checked (nothing found), repathed and given the job's
        settings, as the upload service and a scene worker report them."""
        await self.stage(job_id)
        await self.send(
            RecordSceneChecked(job_id=job_id, findings=[], assets_total=1, assets_missing=0, at=T0)
        )
        await self.send(RecordSceneRepathed(job_id=job_id, rewritten=0, at=T0))
        prepared = RecordScenePrepared(job_id=job_id, scene_key=prepared_key(job_id), at=T0)
        return await self.send(prepared)

    async def queue(self, job_id: str, command_id: str | None = None) -> RenderOrder:
        cmd = QueueJob(job_id=job_id, skip_reason="scene processing is not built yet")
        return await self.ask(cmd, RenderOrder, command_id=command_id)

    async def start(self, job_id: str) -> JobAccepted:
        return await self.send(StartJobRender(job_id=job_id, render_id=render_id(job_id), at=T0))

    def task(
        self,
        job_id: str,
        task_id: int,
        frames: list[int],
        *,
        worker: str = "worker-1",
        seconds: float = 30.0,
        attempt: int = 1,
        peak_memory_bytes: int | None = 3 * 2**30,
    ) -> RecordFramesRendered:
        return RecordFramesRendered(
            job_id=job_id,
            render_id=render_id(job_id, attempt),
            task_id=task_id,
            frames=outputs(job_id, frames),
            worker=worker,
            render_seconds=seconds,
            at=T0 + timedelta(seconds=seconds * (task_id + 1)),
            peak_memory_bytes=peak_memory_bytes,
        )

    async def render_all(self, job_id: str, frames: list[int], chunk_size: int) -> JobAccepted:
        """Prepare, queue, start, record every task and complete: a whole render, in order."""
        await self.prepare(job_id)
        await self.queue(job_id)
        await self.start(job_id)
        for i in range(0, len(frames), chunk_size):
            await self.send(self.task(job_id, i // chunk_size, frames[i : i + chunk_size]))
        return await self.send(CompleteJob(job_id=job_id, at=T0 + timedelta(hours=1)))
