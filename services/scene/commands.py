"""Command handlers of the scene service: the scheduler's ``PrepareScene`` queues the scene
for the workers, the dead-letter watch's ``AbandonPreparation`` records that they gave up."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.preparation import AbandonPreparation, PreparationQueued, PrepareScene
from libs.bus.commands import CommandServer
from libs.eventstore.uow import UnitOfWork
from libs.workqueue import WorkQueue
from services.scene.domain import ScenePreparation


class PreparationCommands:
    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue

    def register(self, server: CommandServer) -> None:
        server.register(PrepareScene, self.prepare)
        server.register(AbandonPreparation, self.abandon)

    async def prepare(self, cmd: PrepareScene, uow: UnitOfWork) -> PreparationQueued:
        """Record the request and put the item on the queue. The item is queued before the
        event commits: if the commit fails the scheduler asks again, and the queue, which
        knows the item's id, does not queue it twice."""
        preparation = await uow.get(ScenePreparation, cmd.job_id)
        recorded = preparation.queue(cmd.job_id, cmd.staged_key, cmd.priority, datetime.now(UTC))
        if recorded:
            payload = cmd.model_dump(mode="json")
            await self.queue.enqueue(preparation.item_id, payload, cmd.priority.value)
        return PreparationQueued(
            job_id=cmd.job_id, item_id=preparation.item_id, queued=bool(recorded)
        )

    async def abandon(self, cmd: AbandonPreparation, uow: UnitOfWork) -> PreparationQueued:
        preparation = await uow.get(ScenePreparation, cmd.job_id)
        preparation.abandon(cmd.job_id, cmd.code, cmd.error, cmd.deliveries, datetime.now(UTC))
        return PreparationQueued(job_id=cmd.job_id, item_id=preparation.item_id, queued=False)
