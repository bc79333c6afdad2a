"""The test-render deadline watch: a test render not ready by its deadline is an event and
an alert.

Every ``RF_JOB_TEST_RENDER_DEADLINE_POLL_SECONDS`` the leader (one replica at a time, under an
advisory lock: ``libs/leader.py``) finds the test renders still requested or rendering past
their deadline in the jobs read model and sends each job ``RecordTestRenderDeadlineMissed``.
The aggregate checks again on its own stream, so a stale read model records nothing wrong.
The miss is logged at error level (``test_render_deadline_missed``) for the alerting that
reads the logs; the test render goes on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from contracts.errors import DomainError
from contracts.jobs import JobAccepted, RecordTestRenderDeadlineMissed
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.store import EventStore
from libs.leader import leadership, lock_key, sleep_or_stop
from libs.logging import get_logger
from services.job.settings import JobSettings

log = get_logger(__name__)

ACTOR = Actor(kind="service", id="job-test-render-deadlines")


class TestRenderDeadlines:
    __test__ = False  # not a pytest test class

    def __init__(self, settings: JobSettings, store: EventStore, commands: CommandClient):
        self.settings = settings
        self.store = store
        self.commands = commands
        self._due_sql = (
            f"SELECT job_id, view->'test_render'->>'render_id' AS render_id,"
            f" view->'test_render'->>'deadline_at' AS deadline_at FROM {store.schema}.jobs"
            " WHERE view->'test_render'->>'status' IN ('requested', 'rendering')"
            " AND view->'test_render'->>'deadline_missed' = 'false'"
            " AND (view->'test_render'->>'deadline_at')::timestamptz <= $1 LIMIT 500"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Background task: while leading, look for missed deadlines, then wait."""
        key = lock_key(self.store.schema, "test-render-deadlines")
        async with leadership(self.store.pool, key, stopping) as leading:
            while leading and not stopping.is_set():
                await self.sweep(datetime.now(UTC))
                if await sleep_or_stop(stopping, self.settings.test_render_deadline_poll_seconds):
                    return

    async def sweep(self, now: datetime) -> int:
        """Record every missed deadline found; how many."""
        missed = 0
        for row in await self.store.pool.fetch(self._due_sql, now):
            job_id, render_id = row["job_id"], row["render_id"]
            try:
                await self.commands.send(
                    RecordTestRenderDeadlineMissed(job_id=job_id, render_id=render_id, at=now),
                    JobAccepted,
                    command_id=f"test_render_deadline:{render_id}",
                    actor=ACTOR,
                )
            except DomainError as e:  # tried again at the next sweep
                log.warning("test_render_deadline_not_recorded", job_id=job_id, code=e.code)
                continue
            missed += 1
            log.error(
                "test_render_deadline_missed",
                job_id=job_id,
                render_id=render_id,
                deadline_at=row["deadline_at"],
            )
        return missed
