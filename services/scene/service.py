"""The scene service: prepares each job's staged scene before its render (``docs/pipeline.md``).

``scene.PrepareScene`` (from the scheduler) puts the job's scene on a Redis work queue
(``libs/workqueue.py``, ADR 0013), test renders before full renders. Workers in this process
take items and run the scene check, repathing and render settings, reporting each step on
the job. An item the workers give up on (too many deliveries, or an error no retry mends) is
a dead letter: the dead-letter watch records it and fails the job, so no job waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from contracts.errors import DomainError
from contracts.jobs import FailJob, JobAccepted
from contracts.preparation import SCENE_QUEUE, AbandonPreparation, PreparationQueued
from libs.bus.commands import CommandClient
from libs.logging import get_logger
from libs.runtime import ServiceRuntime
from libs.service import Service
from libs.workqueue import DeadLetter, Worker, WorkQueue
from services.scene.commands import PreparationCommands
from services.scene.settings import SceneServiceSettings
from services.scene.steps import find_blender
from services.scene.worker import ACTOR, ScenePreparer, now

log = get_logger(__name__)

#: The code a job fails with when the workers give its scene up without a code of its own.
PREPARATION_FAILED = "scene_preparation_failed"
QUEUE_NAME = SCENE_QUEUE


def dead_letter_code(dead: DeadLetter) -> str:
    """The error code a dead letter's stored error starts with (``code: message``)."""
    head, sep, _ = dead.error.partition(": ")
    if sep and head.replace("_", "").isalnum() and head.islower():
        return head
    return PREPARATION_FAILED


@dataclass
class DeadLetterWatch:
    """Fails the job of every dead letter, once (the commands are idempotent by item)."""

    queue: WorkQueue
    #: Sends to this service (AbandonPreparation) and to the job service (FailJob).
    commands: CommandClient
    poll_seconds: float
    seen: set[str] = field(default_factory=set)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for dead in await self.queue.dead_letters(limit=1000):
                if dead.item_id not in self.seen:
                    await self.abandon(dead)
                    self.seen.add(dead.item_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.poll_seconds)

    async def abandon(self, dead: DeadLetter) -> None:
        job_id = str(dead.payload.get("job_id", dead.item_id))
        code = dead_letter_code(dead)
        log.error(
            "scene_preparation_dead",
            job_id=job_id,
            item=dead.item_id,
            deliveries=dead.deliveries,
            error=dead.error,
        )
        cmd = AbandonPreparation(
            job_id=job_id, code=code, error=dead.error[:2000], deliveries=dead.deliveries
        )
        await self.commands.send(
            cmd, PreparationQueued, command_id=f"{dead.item_id}:abandoned", actor=ACTOR
        )
        reason = f"the scene could not be prepared after {dead.deliveries} attempt(s): {dead.error}"
        fail = FailJob(job_id=job_id, reason=reason[:4000], code=code, at=now())
        try:
            await self.commands.send(
                fail, JobAccepted, command_id=f"{dead.item_id}:failed", actor=ACTOR
            )
        except DomainError as e:
            if e.retryable:
                raise
            # The job had ended (cancelled, or failed by the worker that gave up).


@dataclass(frozen=True)
class Scene:
    queue: WorkQueue
    preparer: ScenePreparer
    watch: DeadLetterWatch


async def wire(rt: ServiceRuntime[Scene]) -> Scene:
    settings = rt.settings
    assert isinstance(settings, SceneServiceSettings)
    redis = aioredis.from_url(settings.redis_url)
    rt.on_close(redis.aclose)
    queue = WorkQueue(
        redis,
        QUEUE_NAME,
        prefix=settings.redis_prefix,
        visibility_timeout_seconds=settings.visibility_timeout_seconds,
        max_deliveries=settings.max_deliveries,
    )
    await queue.setup()
    PreparationCommands(queue).register(rt.commands)
    commands = CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds)
    preparer = ScenePreparer(settings, commands, find_blender(settings.blender))
    for n in range(settings.workers):
        consumer = f"{settings.worker_name}-{n}"
        worker = Worker(queue, consumer, preparer.handle)
        rt.background(f"scene-worker-{n}", worker.run)
    watch = DeadLetterWatch(queue, commands, settings.dead_letter_poll_seconds)
    rt.background("scene-dead-letters", watch.run)
    return Scene(queue, preparer, watch)


SERVICE = Service(
    name="scene",
    schema="scene",
    settings=SceneServiceSettings,
    wire=wire,
)
