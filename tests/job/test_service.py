"""The job service end to end: the scheduler's commands over NATS, the events, the slots and
the read models (``job.jobs``, ``job.frames``) in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from contracts.base import Command
from contracts.errors import (
    DomainError,
    InvalidStateTransition,
    JobFinished,
    JobIdTaken,
    JobLimitReached,
    JobNotFound,
)
from contracts.jobs import (
    CancelJob,
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    FrameRange,
    JobAccepted,
    JobSpec,
    LogJobStep,
    LogLevel,
    RecordSceneChecked,
    RecordScenePrepared,
    RecordSceneRepathed,
    RecordSceneStaged,
    RecordSceneStagingProgress,
    Resolution,
    StartJobStep,
    StartSceneStaging,
    StepName,
    SubmitJob,
)
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from services.job.domain import CANCELLED_ON_FARM
from tests.fixtures import scene_ref
from tests.job.scheduler import T0, Scheduler, outputs, prepared_key, render_id, staged_key


@pytest.fixture
def scheduler(job_service: ServiceRuntime[Any]) -> Scheduler:
    return Scheduler(job_service)


async def submit(rt: ServiceRuntime[Any], owner: str, frames: int = 24, chunk_size: int = 4) -> str:
    job_id = new_id("job")
    scene = scene_ref()
    spec = JobSpec(
        name="shot_010",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=frames),
        chunk_size=chunk_size,
        resolution=Resolution(width=1920, height=1080),
    )
    await CommandClient(rt.nc, rt.settings, timeout=10).send(
        SubmitJob(job_id=job_id, owner_id=owner, spec=spec, scene=scene),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=Actor(kind="user", id=owner),
    )
    return job_id


async def envelope(rt: ServiceRuntime[Any], job_id: str) -> dict[str, Any]:
    async with rt.pool.acquire() as conn:
        body = await conn.fetchval("SELECT envelope FROM job.jobs WHERE job_id = $1", job_id)
    result: dict[str, Any] = json.loads(body)
    return result


async def frame_rows(rt: ServiceRuntime[Any], job_id: str) -> list[dict[str, Any]]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM job.frames WHERE job_id = $1 ORDER BY frame", job_id)
    return [dict(r) for r in rows]


async def stream_types(rt: ServiceRuntime[Any], stream: str) -> list[str]:
    return [e.event_type for e in await rt.store.read_stream(stream)]


async def test_a_job_goes_from_submitted_through_its_render_to_completed(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    job_id = await submit(job_service, "usr_a", frames=24, chunk_size=4)
    job = await envelope(job_service, job_id)
    assert (job["status"], job["scene_id"], job["scene_file"]) == (
        "submitted",
        scene_ref().scene_id,
        "shot_010.blend",
    )
    await scheduler.send(StartSceneStaging(job_id=job_id, at=T0))
    half = RecordSceneStagingProgress(job_id=job_id, bytes_done=50, bytes_total=100, at=T0)
    await scheduler.send(half)
    job = await envelope(job_service, job_id)
    assert (job["status"], job["current_step"]) == ("preparing", "stage_scene")
    assert job["steps"][0] | {"started_at": None} == {
        "name": "stage_scene",
        "status": "running",
        "progress_percent": 50.0,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "error_code": None,
    }
    staged = RecordSceneStaged(job_id=job_id, scene_key=staged_key(job_id), reused=False, at=T0)
    await scheduler.send(staged)
    assert (await envelope(job_service, job_id))["steps"][0]["status"] == "succeeded"
    with pytest.raises(InvalidStateTransition):  # not before the scene steps ran
        await scheduler.queue(job_id)
    for step in (StepName.scene_check, StepName.repath, StepName.render_settings):
        await scheduler.send(StartJobStep(job_id=job_id, step=step, at=T0))
    await scheduler.send(
        RecordSceneChecked(job_id=job_id, findings=[], assets_total=2, assets_missing=0, at=T0)
    )
    await scheduler.send(RecordSceneRepathed(job_id=job_id, rewritten=1, at=T0))
    ready = RecordScenePrepared(job_id=job_id, scene_key=prepared_key(job_id), at=T0)
    await scheduler.send(ready)
    assert (await envelope(job_service, job_id))["status"] == "ready"
    order = await scheduler.queue(job_id)
    assert (order.job_id, order.owner_id, order.status) == (job_id, "usr_a", "queued")
    assert order.scene_key == prepared_key(job_id)  # the farm opens the prepared copy
    assert (order.frame_range, order.chunk_size) == (FrameRange(start=1, end=24), 4)
    assert order.resolution == Resolution(width=1920, height=1080)
    # submitted, staging (4), the scene steps (3 starts, 5 ends), test render skipped, queued
    assert order.version == 15
    assert (await envelope(job_service, job_id))["status"] == "queued"

    started = await scheduler.start(job_id)
    job = await envelope(job_service, job_id)
    assert job["status"] == "rendering" and job["current_step"] == "render"
    assert job["eta"] == {"eta_seconds": None, "eta_at": None, "reason": "no_measurements"}
    assert job["version"] == started.version == 16

    await scheduler.send(scheduler.task(job_id, 0, [1, 2, 3, 4], worker="w1", seconds=30))
    await scheduler.send(scheduler.task(job_id, 1, [5, 6, 7, 8], worker="w2", seconds=30))
    job = await envelope(job_service, job_id)
    assert job["frames_done"] == 8
    assert job["steps"][-1]["progress_percent"] == 33.3
    # 4 tasks left x 30 s over 2 workers, from the latest task's end (T0 + 60 s)
    assert job["eta"]["eta_seconds"] == 60 and job["eta"]["reason"] is None
    assert job["eta"]["eta_at"] == (T0 + timedelta(seconds=120)).isoformat().replace("+00:00", "Z")
    await scheduler.send(
        LogJobStep(job_id=job_id, step=StepName.render, level=LogLevel.info, message="2/6", at=T0)
    )
    for task_id in range(2, 6):
        first = 1 + task_id * 4
        await scheduler.send(scheduler.task(job_id, task_id, list(range(first, first + 4))))
    done = await scheduler.send(CompleteJob(job_id=job_id, at=T0 + timedelta(hours=1)))

    job = await envelope(job_service, job_id)
    assert job["status"] == "completed" and job["version"] == done.version
    assert job["frames_done"] == job["frames_total"] == 24
    assert job["progress_percent"] == 100.0 and job["eta"]["reason"] == "finished"
    rows = await frame_rows(job_service, job_id)
    assert [r["frame"] for r in rows] == list(range(1, 25))
    row = rows[0]
    assert (row["output_id"], row["object_key"]) == (
        f"{job_id}-full-0000001",
        f"jobs/usr_a/{job_id}/full/frame_0001.png",
    )
    assert row["sha256"] == outputs(job_id, [1])[0].sha256
    assert (row["render_id"], row["task_id"], row["worker"]) == (render_id(job_id), 0, "w1")
    assert row["size_bytes"] == 1_000_001 and row["rendered_at"] == T0 + timedelta(seconds=30)
    assert await stream_types(job_service, "owner-usr_a") == [
        "job.JobSlotTaken",
        "job.JobSlotFreed",
    ]
    types = await stream_types(job_service, f"job-{job_id}")
    assert types.count("job.JobFramesRendered") == 6 and types[-1] == "job.JobCompleted"


async def test_a_scene_that_cannot_be_staged_fails_the_job_before_any_render_with_its_code(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    job_id = await submit(job_service, "usr_f")
    await scheduler.send(StartSceneStaging(job_id=job_id, at=T0))
    reason = "the scene could not be staged to the farm: shot_010.blend: wrong SHA-256"
    await scheduler.send(
        FailJob(job_id=job_id, reason=reason, code="scene_checksum_mismatch", at=T0)
    )
    job = await envelope(job_service, job_id)
    assert (job["status"], job["failure_reason"], job["failure_code"]) == (
        "failed",
        reason,
        "scene_checksum_mismatch",
    )
    stage, render = job["steps"][0], job["steps"][-1]
    assert (stage["status"], stage["error"], stage["error_code"]) == (
        "failed",
        reason,
        "scene_checksum_mismatch",
    )
    assert render["status"] == "pending"
    with pytest.raises(JobFinished):
        await scheduler.queue(job_id)


async def test_a_job_whose_scene_is_being_staged_is_cancelled_at_once(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    job_id = await submit(job_service, "usr_g")
    await scheduler.send(StartSceneStaging(job_id=job_id, at=T0))
    await CommandClient(job_service.nc, job_service.settings, timeout=10).send(
        CancelJob(job_id=job_id, owner_id="usr_g", reason="wrong scene"),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=Actor(kind="user", id="usr_g"),
    )
    job = await envelope(job_service, job_id)
    assert (job["status"], job["steps"][0]["status"]) == ("cancelled", "cancelled")
    # The staging's end, reported after the cancel, changes nothing.
    before = job["version"]
    assert (await scheduler.stage(job_id)).version == before
    assert await stream_types(job_service, "owner-usr_g") == [
        "job.JobSlotTaken",
        "job.JobSlotFreed",
    ]


async def test_a_repeated_command_id_or_a_repeated_task_is_recorded_exactly_once(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    job_id = await submit(job_service, "usr_b")
    staged = RecordSceneStaged(job_id=job_id, scene_key=staged_key(job_id), reused=True, at=T0)
    done = await scheduler.send(staged, command_id="staged-1")
    assert await scheduler.send(staged, command_id="staged-1") == done  # stored reply
    assert await scheduler.send(staged, command_id="staged-2") == done  # staged already
    assert await scheduler.send(StartSceneStaging(job_id=job_id, at=T0)) == done  # late start
    ready = RecordScenePrepared(job_id=job_id, scene_key=prepared_key(job_id), at=T0)
    prepared = await scheduler.send(ready, command_id="prepared-1")
    assert await scheduler.send(ready, command_id="prepared-2") == prepared  # prepared already
    first = await scheduler.queue(job_id, command_id="queue-1")
    assert await scheduler.queue(job_id, command_id="queue-1") == first  # stored reply
    assert await scheduler.queue(job_id, command_id="queue-2") == first  # queued already
    task = scheduler.task(job_id, 0, [1, 2, 3, 4])
    recorded = await scheduler.send(task, command_id="task-0")
    assert recorded.version == first.version + 2  # the render step started, then the frames
    assert await scheduler.send(task, command_id="task-0") == recorded
    assert await scheduler.send(task, command_id="task-0-redelivered") == recorded
    # Five redeliveries racing each other, each with its own command id: one is recorded.
    again = scheduler.task(job_id, 1, [5, 6, 7, 8])
    answers = await asyncio.gather(
        *(scheduler.send(again, command_id=f"task-1-{n}") for n in range(5))
    )
    assert {a.version for a in answers} == {recorded.version + 1}
    assert await scheduler.start(job_id) == recorded.model_copy(
        update={"version": recorded.version + 1}
    )  # a start arriving after the results changes nothing
    job = await envelope(job_service, job_id)
    assert job["frames_done"] == 8 and job["version"] == recorded.version + 1
    assert len(await frame_rows(job_service, job_id)) == 8
    types = await stream_types(job_service, f"job-{job_id}")
    assert types.count("job.JobFramesRendered") == 2
    # the stage step, the settings step, then the render once
    assert types.count("job.JobStepStarted") == 3


async def test_every_way_a_job_ends_frees_its_owners_slot(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    owner = "usr_c"  # the fixture's limit is 3 active jobs
    completed, failed, vanished = [await submit(job_service, owner) for _ in range(3)]
    with pytest.raises(DomainError) as e:
        await submit(job_service, owner)
    assert type(e.value) is JobLimitReached
    for job_id in (completed, failed, vanished):
        await scheduler.prepare(job_id)
        await scheduler.queue(job_id)
        await scheduler.start(job_id)
    await scheduler.send(CompleteJob(job_id=completed, at=T0))
    await scheduler.send(FailJob(job_id=failed, reason="scene file is corrupt", at=T0))
    await scheduler.send(ConfirmJobCancelled(job_id=vanished, at=T0))  # nobody asked

    assert (await envelope(job_service, completed))["status"] == "completed"
    job = await envelope(job_service, failed)
    assert (job["status"], job["failure_reason"]) == ("failed", "scene file is corrupt")
    assert job["steps"][-1]["error"] == "scene file is corrupt"
    job = await envelope(job_service, vanished)
    assert (job["status"], job["failure_reason"]) == ("failed", CANCELLED_ON_FARM)
    freed = await stream_types(job_service, f"owner-{owner}")
    assert freed == ["job.JobSlotTaken"] * 3 + ["job.JobSlotFreed"] * 3
    # Reports after the end change nothing, and the freed slots are usable again.
    for job_id in (completed, failed, vanished):
        before = (await envelope(job_service, job_id))["version"]
        late: list[Command] = [
            CompleteJob(job_id=job_id, at=T0),
            FailJob(job_id=job_id, reason="late", at=T0),
            ConfirmJobCancelled(job_id=job_id, at=T0),
        ]
        if job_id != completed:
            late.append(scheduler.task(job_id, 5, [21, 22, 23, 24]))
        for cmd in late:
            assert (await scheduler.send(cmd)).version == before
    # A completed job still records its render's late task: the files exist.
    late_task = await scheduler.send(scheduler.task(completed, 5, [21, 22, 23, 24]))
    job = await envelope(job_service, completed)
    assert (job["status"], job["frames_done"], job["version"]) == (
        "completed",
        4,
        late_task.version,
    )
    assert [r["frame"] for r in await frame_rows(job_service, completed)] == [21, 22, 23, 24]
    assert await frame_rows(job_service, failed) == []
    assert len({await submit(job_service, owner) for _ in range(3)}) == 3


async def test_a_cancel_is_confirmed_by_the_farm_or_overtaken_by_the_renders_end(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    owner = "usr_d"
    users = CommandClient(job_service.nc, job_service.settings, timeout=10)
    jobs = [await submit(job_service, owner) for _ in range(2)]
    for job_id in jobs:
        await scheduler.prepare(job_id)
        await scheduler.queue(job_id)
        await scheduler.send(scheduler.task(job_id, 0, [1, 2, 3, 4]))  # before any start
        await users.send(
            CancelJob(job_id=job_id, owner_id=owner, reason="wrong camera"),
            JobAccepted,
            command_id=uuid.uuid4().hex,
            actor=Actor(kind="user", id=owner),
        )
        assert (await envelope(job_service, job_id))["status"] == "cancelling"
    confirmed, finished = jobs
    await scheduler.send(scheduler.task(confirmed, 1, [5, 6, 7, 8]))  # still in flight
    await scheduler.send(ConfirmJobCancelled(job_id=confirmed, at=T0))
    await scheduler.send(scheduler.task(confirmed, 2, [9, 10, 11, 12]))  # after: ignored
    await scheduler.send(CompleteJob(job_id=finished, at=T0))
    await scheduler.send(ConfirmJobCancelled(job_id=finished, at=T0))  # too late: ignored

    job = await envelope(job_service, confirmed)
    assert (job["status"], job["frames_done"]) == ("cancelled", 8)
    assert len(await frame_rows(job_service, confirmed)) == 8
    job = await envelope(job_service, finished)
    assert (job["status"], job["frames_done"]) == ("completed", 4)
    assert await stream_types(job_service, f"owner-{owner}") == [
        "job.JobSlotTaken",
        "job.JobSlotTaken",
        "job.JobSlotFreed",
        "job.JobSlotFreed",
    ]


async def test_scheduler_commands_for_a_missing_job_or_a_job_not_yet_queued_are_refused(
    job_service: ServiceRuntime[Any], scheduler: Scheduler
) -> None:
    with pytest.raises(DomainError) as e:
        await scheduler.queue("job_missing")
    assert type(e.value) is JobNotFound
    job_id = await submit(job_service, "usr_e")
    with pytest.raises(DomainError) as e:
        await scheduler.send(scheduler.task(job_id, 0, [1]))
    assert type(e.value) is InvalidStateTransition
    assert await frame_rows(job_service, job_id) == []
    assert (await envelope(job_service, job_id))["version"] == 1


async def test_a_taken_job_id_is_refused_for_good_not_as_a_conflict(
    job_service: ServiceRuntime[Any],
) -> None:
    job_id = await submit(job_service, "usr_t")
    scene = scene_ref()
    spec = JobSpec(
        name="again",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=4),
        resolution=Resolution(width=640, height=480),
    )
    with pytest.raises(JobIdTaken) as e:
        await CommandClient(job_service.nc, job_service.settings).send(
            SubmitJob(job_id=job_id, owner_id="usr_t", spec=spec, scene=scene),
            JobAccepted,
            command_id=uuid.uuid4().hex,
            actor=Actor(kind="user", id="usr_t"),
        )
    assert (e.value.http_status, e.value.retryable) == (409, False)
    assert e.value.details.job_id == job_id  # typed details survive the trip over NATS
