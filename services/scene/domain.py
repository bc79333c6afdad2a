"""The scene service's one aggregate: a job's scene preparation (stream
``preparation-<job id>``), queued once for the scene workers and, if they give it up,
abandoned once."""

from __future__ import annotations

from datetime import datetime

from contracts.base import Event
from contracts.preparation import (
    PreparationPriority,
    ScenePreparationAbandoned,
    ScenePreparationQueued,
)
from libs.eventstore.aggregate import Aggregate


class ScenePreparation(Aggregate):
    stream_prefix = "preparation"

    job_id: str = ""
    item_id: str = ""
    abandoned: bool = False

    def apply(self, event: Event) -> None:
        match event:
            case ScenePreparationQueued():
                self.job_id, self.item_id = event.job_id, event.item_id
            case ScenePreparationAbandoned():
                self.abandoned = True
            case _:
                raise TypeError(f"scene preparation cannot apply {type(event).__name__}")

    @property
    def queued(self) -> bool:
        return bool(self.item_id)

    def queue(
        self, job_id: str, staged_key: str, priority: PreparationPriority, now: datetime
    ) -> list[Event]:
        """Queue the job's scene as item ``job_id``; asking again changes nothing."""
        if self.queued:
            return []
        return self.record(
            ScenePreparationQueued(
                job_id=job_id, item_id=job_id, staged_key=staged_key, priority=priority, at=now
            )
        )

    def abandon(
        self, job_id: str, code: str, error: str, deliveries: int, now: datetime
    ) -> list[Event]:
        """The workers gave the item up; once only."""
        if self.abandoned:
            return []
        return self.record(
            ScenePreparationAbandoned(
                job_id=job_id,
                item_id=self.item_id or job_id,
                code=code,
                error=error,
                deliveries=deliveries,
                at=now,
            )
        )
