"""A job rendered as the farm path does it, without a farm: its scene staged, each frame put
in the outputs bucket as the bridge stores it, then recorded on the job with the scheduler's
commands."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

import asyncpg

from contracts.jobs import (
    CompleteJob,
    FrameOutput,
    FrameRange,
    FrameThumbnail,
    JobAccepted,
    JobSpec,
    RecordFramesRendered,
    Resolution,
    SubmitJob,
)
from contracts.outputs import frame_key, frame_output_id, thumbnail_key
from contracts.render import RenderKind
from libs.bus.commands import Actor
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client
from tests.fixtures import scene_ref
from tests.job.scheduler import T0, Scheduler, render_id

MiB = 1024 * 1024


def frame_bytes(frame: int, size: int = 2048) -> bytes:
    """An image-sized blob, different for every frame."""
    return f"frame {frame}\n".encode() + os.urandom(size)


async def submit(job_service: ServiceRuntime[Any], owner_id: str, frames: int) -> str:
    scene = scene_ref()
    spec = JobSpec(
        name="shot_030 fx",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=frames),
        resolution=Resolution(width=320, height=180),
    )
    job_id = new_id("job")
    await Scheduler(job_service).client.send(
        SubmitJob(job_id=job_id, owner_id=owner_id, spec=spec, scene=scene),
        JobAccepted,
        command_id=f"submit:{job_id}",
        actor=Actor(kind="user", id=owner_id),
    )
    return job_id


async def store_frame(
    s3: S3Client, bucket: str, owner_id: str, job_id: str, frame: int, data: bytes
) -> FrameOutput:
    """The frame (and a thumbnail) in the bucket under the job's prefix, as the bridge
    reports it."""
    key = frame_key(owner_id, job_id, RenderKind.full, f"frame_{frame:04d}.png")
    await s3.put_object(Bucket=bucket, Key=key, Body=data)
    thumb = data[:64]
    await s3.put_object(Bucket=bucket, Key=thumbnail_key(key), Body=thumb)
    return FrameOutput(
        frame=frame,
        output_id=frame_output_id(job_id, RenderKind.full, frame),
        object_key=key,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        thumbnail=FrameThumbnail(
            object_key=thumbnail_key(key),
            width=16,
            height=9,
            size_bytes=len(thumb),
            sha256=hashlib.sha256(thumb).hexdigest(),
        ),
    )


async def render(
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    bucket: str,
    owner_id: str,
    frames: dict[int, bytes],
    *,
    completed: bool = True,
) -> str:
    """A job of ``owner_id`` that rendered ``frames`` (one task each), completed."""
    job_id = await submit(job_service, owner_id, len(frames))
    scheduler = Scheduler(job_service)
    await scheduler.prepare(job_id)
    await scheduler.queue(job_id)
    await scheduler.start(job_id)
    for task_id, (frame, data) in enumerate(sorted(frames.items())):
        output = await store_frame(s3, bucket, owner_id, job_id, frame, data)
        await scheduler.send(
            RecordFramesRendered(
                job_id=job_id,
                render_id=render_id(job_id),
                task_id=task_id,
                frames=[output],
                worker="worker-1",
                render_seconds=2.0,
                at=T0 + timedelta(seconds=task_id),
            )
        )
    if completed:
        await complete(job_service, job_id)
    return job_id


async def complete(job_service: ServiceRuntime[Any], job_id: str) -> JobAccepted:
    """Every frame is there: the job completes."""
    return await Scheduler(job_service).send(
        CompleteJob(job_id=job_id, at=T0 + timedelta(minutes=5))
    )


async def upload_events(rt: ServiceRuntime[Any], job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The job's outputs stream in the upload service: (type, data) in order."""
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, data FROM upload.events WHERE stream_id = $1 ORDER BY version",
            f"outputs-{job_id}",
        )
    return [(r["type"], r["data"]) for r in rows]


async def output_rows(pool: asyncpg.Pool, job_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM upload.outputs WHERE job_id = $1 ORDER BY output_id", job_id
        )
    )
