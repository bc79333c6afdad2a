"""A job event the jobs read model cannot apply stops that job's row only: the other jobs
keep updating, readiness and ``renderctl quarantine`` show it, and once the cause is fixed
``renderctl quarantine --retry`` brings the row up to date."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from contracts.jobs import JobAccepted, JobChanges, UpdateJob
from libs.bus.commands import Actor, CommandClient
from libs.config import BaseServiceSettings
from libs.eventstore.projection import Row
from libs.eventstore.store import RecordedEvent
from libs.runtime import ServiceRuntime
from services.job.projections import JobsProjection
from tests.conftest import Env
from tests.job.test_service import envelope, submit
from tools import renderctl


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What renderctl printed (the services' JSON log lines share stdout in tests)."""
    return [x for x in capsys.readouterr().out.splitlines() if not x.startswith("{")]


async def rename(rt: ServiceRuntime[Any], job_id: str, owner: str, name: str) -> int:
    accepted = await CommandClient(rt.nc, rt.settings, timeout=10).send(
        UpdateJob(job_id=job_id, owner_id=owner, changes=JobChanges(name=name)),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=Actor(kind="user", id=owner),
    )
    return accepted.version


async def test_a_job_event_the_read_model_cannot_apply_is_quarantined_then_retried(
    job_service: ServiceRuntime[Any],
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli = env.settings(BaseServiceSettings, service_name="renderctl")
    poisoned = await submit(job_service, "usr_a")
    healthy = await submit(job_service, "usr_b")
    original = JobsProjection.evolve

    def buggy(self: JobsProjection, row: Row | None, e: Any, rec: RecordedEvent) -> Row | None:
        if e.job_id == poisoned and getattr(e, "name", None) == "shot_010 v2":
            raise RuntimeError("a bug in the jobs read model")
        return original(self, row, e, rec)

    monkeypatch.setattr(JobsProjection, "evolve", buggy)
    await rename(job_service, poisoned, "usr_a", "shot_010 v2")  # fails in the read model
    last = await rename(job_service, poisoned, "usr_a", "shot_010 v3")  # held behind it
    await rename(job_service, healthy, "usr_b", "still updating")

    assert (await envelope(job_service, healthy))["name"] == "still updating"
    stuck = await envelope(job_service, poisoned)
    assert (stuck["name"], stuck["version"]) == ("shot_010", 1)
    assert await job_service.ready() == (True, "ready; quarantined: jobs 1 stream")

    capsys.readouterr()
    assert await renderctl.run(["quarantine"], cli) == 0
    lines = printed(capsys)
    assert len(lines) == 2
    assert lines[0].startswith(f"job.jobs job-{poisoned} v2 job.JobRenamed ")
    assert lines[0].endswith("RuntimeError: a bug in the jobs read model")
    assert lines[1].startswith(f"job.jobs job-{poisoned} v3 job.JobRenamed ")
    assert lines[1].endswith("held (behind an earlier event)")

    # Still broken: the retry fails again and says so.
    assert await renderctl.run(["quarantine", "--retry"], cli) == 1
    assert "still failing: RuntimeError" in "\n".join(printed(capsys))

    monkeypatch.setattr(JobsProjection, "evolve", original)  # the fix is deployed
    assert await renderctl.run(["quarantine", "--retry", "--projection", "jobs"], cli) == 0
    assert printed(capsys) == [f"job.jobs job-{poisoned}: applied 2 event(s)"]
    fixed = await envelope(job_service, poisoned)
    assert (fixed["name"], fixed["version"]) == ("shot_010 v3", last)
    assert await job_service.ready() == (True, "ready")
    assert await renderctl.run(["quarantine"], cli) == 0
    assert printed(capsys) == []
    # The row is what the events give: a rebuild would produce the same.
    assert await renderctl.run(["rebuild", "--verify", "--projection", "job.jobs"], cli) == 0
