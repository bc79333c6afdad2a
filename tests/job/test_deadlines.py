"""The test-render deadline watch on the running job service: a test render past its
deadline is recorded as missed, once, from the jobs read model, and logged as an alert."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.jobs import JobAccepted, RequestTestRender
from libs.bus.commands import Actor, CommandClient
from libs.runtime import ServiceRuntime
from services.job.deadlines import TestRenderDeadlines
from services.job.settings import JobSettings
from tests.job.scheduler import Scheduler
from tests.job.test_service import envelope, stream_types, submit
from tests.waiting import until


async def test_a_test_render_past_its_deadline_is_recorded_missed_once(
    job_service: ServiceRuntime[Any],
) -> None:
    job_id = await submit(job_service, "usr_d", frames=10, chunk_size=1)
    await Scheduler(job_service).prepare(job_id)
    client = CommandClient(job_service.nc, job_service.settings, timeout=10)
    ask = RequestTestRender(job_id=job_id, owner_id="usr_d", deadline_seconds=600)
    user = Actor(kind="user", id="usr_d")
    await client.send(ask, JobAccepted, command_id=uuid.uuid4().hex, actor=user)

    async def asked() -> dict[str, Any] | None:
        test: dict[str, Any] | None = (await envelope(job_service, job_id)).get("test_render")
        return test

    test = await until(asked, "the test render in the jobs read model")
    assert test["frames"] == [1, 6, 10] and test["deadline_missed"] is False
    assert isinstance(job_service.settings, JobSettings)
    watch = TestRenderDeadlines(job_service.settings, job_service.store, client)
    assert await watch.sweep(datetime.now(UTC)) == 0  # not due yet

    late = datetime.now(UTC) + timedelta(minutes=11)
    assert await watch.sweep(late) == 1

    async def missed() -> bool:
        test = await asked()
        return bool(test and test["deadline_missed"])

    await until(missed, "the miss in the jobs read model")
    await watch.sweep(late)  # the same sweep again: its command id answers as before
    types = await stream_types(job_service, f"job-{job_id}")
    assert types.count("job.JobTestRenderDeadlineMissed") == 1
