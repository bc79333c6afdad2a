"""The scheduler's policy on the process-manager kit, with in-memory twins (no servers): what
it sends for each event (staging the scene, then the render), the ids it sends them under,
and what a refusal becomes."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.billing import CostTotals, JobCostHeld
from contracts.envelope import CostStatus
from contracts.errors import (
    DomainError,
    FieldProblem,
    InvalidStateTransition,
    JobFinished,
    RenderNotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from contracts.jobs import (
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    FrameRange,
    JobAccepted,
    JobCancellationRequested,
    JobFramesChanged,
    JobScenePrepared,
    JobStatus,
    JobSubmitted,
    LogJobStep,
    QueueJob,
    RecordSceneNeededFilesStaged,
    RecordSceneStaged,
    RecordSceneStagingProgress,
    Renderer,
    RenderOrder,
    RenderSettings,
    Resolution,
    StartSceneStaging,
    StepName,
)
from contracts.preparation import PreparationQueued, PrepareScene
from contracts.process import CommandRefused
from contracts.render import (
    CancelRender,
    RenderAccepted,
    RenderCompleted,
    RenderStatus,
    RenderSubmitted,
    SubmitRender,
)
from contracts.staging import (
    CancelStaging,
    SceneFilesAwaited,
    SceneNeededFilesStaged,
    SceneStaged,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingStarted,
    StageScene,
    StagingAccepted,
    StagingStatus,
)
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent, Retry
from libs.eventstore.store import Position
from libs.process import InMemoryProcessStore, ProcessRunner
from services.scheduler.domain import JobRender, RenderProcess
from tests.fixtures import scene_ref
from tests.policies import ScriptedCommands, delivery

R = TypeVar("R", bound=BaseModel)
T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
JOB = "job_01"
RENDER = f"{JOB}.full.1"
STAGED_KEY = f"staged/usr_1/{'5c' * 32}/shot_010.blend"
PREPARED_KEY = f"prepared/{JOB}/shot_010.blend"
SPEC: dict[str, Any] = {
    "name": "shot_040",
    "renderer": Renderer.blender_cycles,
    "frame_range": FrameRange(start=1, end=10),
    "chunk_size": 5,
    "resolution": Resolution(width=2048, height=858),
    "render_settings": RenderSettings(samples=64),
}

Answer = BaseModel | DomainError[Any]


def bus_event(event: Event, event_id: uuid.UUID | None = None) -> BusEvent:
    return delivery(event, stream_id=f"x-{JOB}", recorded_at=T, event_id=event_id)


def as_schema_1(event: JobSubmitted, event_id: uuid.UUID | None = None) -> BusEvent:
    """``event`` as a job service from before scene uploads published it (schema 1)."""
    delivery = bus_event(event, event_id)
    data = {k: v for k, v in delivery.data.items() if k != "scene"}
    return dataclasses.replace(delivery, schema_version=1, data=data)


def order(_: Command) -> RenderOrder:
    return RenderOrder(
        job_id=JOB,
        owner_id="usr_1",
        status=JobStatus.queued,
        priority="normal",
        version=7,
        scene_key=PREPARED_KEY,
        **SPEC,
    )


def queued_for_preparation(_: Command) -> PreparationQueued:
    return PreparationQueued(job_id=JOB, item_id=JOB, queued=True)


def staging(_: Command) -> StagingAccepted:
    return StagingAccepted(
        job_id=JOB, status=StagingStatus.requested, staged_key=STAGED_KEY, version=1
    )


def accepted(_: Command) -> JobAccepted:
    return JobAccepted(job_id=JOB, version=9)


def on_farm(_: Command) -> RenderAccepted:
    return RenderAccepted(
        render_id=RENDER, status=RenderStatus.submitted, farm_job_id="farm-1", version=2
    )


submitted = JobSubmitted(
    job_id=JOB,
    owner_id="usr_1",
    priority="normal",
    cost_cap_credits=None,
    submitted_at=T,
    scene=scene_ref(),
    **SPEC,
)
#: A submission from before scene uploads: the farm opens its key as given.
submitted_before_uploads = submitted.model_copy(
    update={"scene": None, "scene_key": "scenes/shot_040.blend"}
)
staged = SceneStaged(job_id=JOB, staged_key=STAGED_KEY, reused=False, bytes_copied=4_200_000, at=T)
prepared = JobScenePrepared(job_id=JOB, scene_key=PREPARED_KEY, at=T)
TOTALS = CostTotals(
    status=CostStatus.held,
    estimate=None,
    cap_credits=Decimal("25.00"),
    held_credits=Decimal("12.00"),
    so_far_credits=Decimal("0.00"),
    captured_credits=Decimal("0.00"),
    released_credits=Decimal("0.00"),
)
#: Billing placed the job's first hold: the render path may begin.
held = JobCostHeld(
    job_id=JOB,
    owner_id="usr_1",
    totals=TOTALS,
    at=T,
    transfer_id="trf_1",
    increase_credits=Decimal("12.00"),
    resumed=False,
)


@pytest.fixture
def commands() -> ScriptedCommands:
    return ScriptedCommands(
        {
            StageScene: staging,
            CancelStaging: staging,
            StartSceneStaging: accepted,
            RecordSceneStagingProgress: accepted,
            RecordSceneStaged: accepted,
            RecordSceneNeededFilesStaged: accepted,
            LogJobStep: accepted,
            PrepareScene: queued_for_preparation,
            QueueJob: order,
            SubmitRender: on_farm,
            CancelRender: on_farm,
            CompleteJob: accepted,
            FailJob: accepted,
            ConfirmJobCancelled: accepted,
        }
    )


@pytest.fixture
def store() -> InMemoryProcessStore:
    return InMemoryProcessStore()


@pytest.fixture
def runner(commands: ScriptedCommands, store: InMemoryProcessStore) -> ProcessRunner[JobRender]:
    return ProcessRunner(
        RenderProcess("no scene processing yet"),
        commands,
        store,
        Actor(kind="service", id="scheduler"),
    )


async def refusals(store: InMemoryProcessStore) -> list[CommandRefused]:
    events = [r.decode() for r in await store.events.read_all(Position.start())]
    return [e for e in events if isinstance(e, CommandRefused)]


async def test_a_submitted_job_has_its_scene_staged_first_and_nothing_else(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    event_id = uuid.uuid4()
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted, event_id))
    [(command_id, stage)] = commands.sent
    assert command_id == f"scheduler:{event_id}:0"
    assert isinstance(stage, StageScene)
    assert (stage.job_id, stage.owner_id, stage.scene) == (JOB, "usr_1", scene_ref())
    assert store.states[("scheduler", JOB)]["staging"] is True


async def test_staging_events_show_as_the_jobs_stage_step_with_its_progress_and_logs(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    started = SceneStagingStarted(job_id=JOB, files_total=3, bytes_total=12 * 2**20, at=T)
    await runner.handle(bus_event(started))
    progressed = SceneStagingProgressed(
        job_id=JOB, files_done=1, bytes_done=3 * 2**20, bytes_total=12 * 2**20, at=T
    )
    await runner.handle(bus_event(progressed))
    assert commands.types() == ["StartSceneStaging", "LogJobStep", "RecordSceneStagingProgress"]
    log = commands.sent[1][1]
    assert isinstance(log, LogJobStep) and log.step is StepName.stage_scene
    assert log.message == "copying the scene to the farm: 3 files, 12.0 MiB"
    progress = commands.sent[2][1]
    assert isinstance(progress, RecordSceneStagingProgress)
    assert (progress.bytes_done, progress.bytes_total) == (3 * 2**20, 12 * 2**20)


async def test_a_staged_scene_is_recorded_then_prepared_then_the_job_queued_and_rendered(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted))
    event_id = uuid.uuid4()
    await runner.handle(bus_event(staged, event_id))
    assert commands.types() == ["StageScene", "LogJobStep", "RecordSceneStaged", "PrepareScene"]
    ids = [command_id.removeprefix(f"scheduler:{event_id}:") for command_id, _ in commands.sent]
    assert ids[1:] == ["0", "1", "1>:0"]
    record, prepare = commands.sent[2][1], commands.sent[3][1]
    assert isinstance(record, RecordSceneStaged) and record.scene_key == STAGED_KEY
    assert isinstance(prepare, PrepareScene) and prepare.staged_key == STAGED_KEY
    # The workers get the job's settings as last changed, to check and apply.
    assert prepare.settings.frame_range == SPEC["frame_range"]
    assert prepare.settings.render_settings.samples == 64
    assert store.states[("scheduler", JOB)]["staging"] is False
    commands.sent.clear()
    await runner.handle(bus_event(prepared))
    assert commands.types() == ["QueueJob", "SubmitRender"]
    submit = commands.sent[1][1]
    assert isinstance(submit, SubmitRender) and submit.scene_key == PREPARED_KEY
    reused = staged.model_copy(update={"reused": True, "bytes_copied": 0})
    await runner.handle(bus_event(reused))
    log = next(cmd for _, cmd in reversed(commands.sent) if isinstance(cmd, LogJobStep))
    assert log.message == f"the farm holds this scene already: reusing {STAGED_KEY}"


async def test_the_test_frames_files_are_staged_first_and_the_scene_prepared_from_them(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    """The scene is prepared as soon as the files its test frames need are staged; the
    full render waits for the whole scene (SceneStaged), and is queued then."""
    await runner.handle(bus_event(held))
    await runner.handle(bus_event(submitted))
    stage = commands.sent[0][1]
    assert isinstance(stage, StageScene) and stage.test_frames == [1, 6, 10]
    needed_key = f"staged/.needed/{JOB}/shot_010.blend"
    needed = SceneNeededFilesStaged(
        job_id=JOB,
        staged_key=needed_key,
        files=["shot_010.blend", "tex/wood.png"],
        bytes_needed=3 * 2**20,
        files_total=40,
        bytes_total=200 * 2**20,
        seconds=1.5,
        at=T,
    )
    commands.sent.clear()
    await runner.handle(bus_event(needed))
    assert commands.types() == ["LogJobStep", "RecordSceneNeededFilesStaged", "PrepareScene"]
    log, record, prepare = (cmd for _, cmd in commands.sent)
    assert isinstance(log, LogJobStep) and log.message == (
        "the 2 files the test frames need (3.0 MiB) are on the farm after 1.5 s; the scene"
        " is prepared from them while the other 197.0 MiB are copied"
    )
    assert isinstance(record, RecordSceneNeededFilesStaged)
    assert (record.scene_key, record.files, record.bytes_staged) == (needed_key, 2, 3 * 2**20)
    assert isinstance(prepare, PrepareScene) and prepare.staged_key == needed_key
    commands.sent.clear()
    await runner.handle(bus_event(prepared))
    assert commands.types() == []  # the rest of the scene is still being staged
    await runner.handle(bus_event(staged))
    assert commands.types() == ["LogJobStep", "RecordSceneStaged", "QueueJob", "SubmitRender"]
    submit = commands.sent[-1][1]
    assert isinstance(submit, SubmitRender) and submit.scene_key == PREPARED_KEY


async def test_a_staging_waiting_for_uploads_is_logged_on_the_stage_step_and_sends_nothing_else(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    """A job on a manifest still waiting for files: what its staging waits for is in the
    stage step's log, first for the test frames' files, then for the rest of the scene."""

    def waiting(needed: bool, paths: list[str], done: int) -> SceneFilesAwaited:
        return SceneFilesAwaited(
            job_id=JOB,
            needed=needed,
            files_waiting=len(paths),
            bytes_waiting=len(paths) * 2**30,
            needed_files_waiting=1 if needed else 0,
            files_done=done,
            bytes_done=done * 2**20,
            files_total=done + len(paths),
            bytes_total=done * 2**20 + len(paths) * 2**30,
            paths=paths,
            at=T,
        )

    await runner.handle(bus_event(waiting(True, ["shot.blend", "cache/a.vdb"], 0)))
    await runner.handle(bus_event(waiting(False, ["cache/a.vdb"], 1)))
    assert commands.types() == ["LogJobStep", "LogJobStep"]
    first, then = (cmd for _, cmd in commands.sent)
    assert isinstance(first, LogJobStep) and first.step is StepName.stage_scene
    assert first.message == (
        "waiting for the upload of 2 files (2.0 GiB: shot.blend, cache/a.vdb); 0 of 2 files"
        " (0 B of 2.0 GiB) are on the farm; the test render waits for 1 of them its frames"
        " need, the full render for all of them"
    )
    assert isinstance(then, LogJobStep) and then.message == (
        "waiting for the upload of 1 file (1.0 GiB: cache/a.vdb); 1 of 2 files (1.0 MiB of"
        " 1.0 GiB) are on the farm; the files the test frames need are on the farm; the full"
        " render waits"
    )


async def test_frames_changed_before_the_scene_is_staged_are_what_the_workers_apply(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(held))
    await runner.handle(bus_event(submitted))
    frames = FrameRange(start=3, end=4)
    await runner.handle(bus_event(JobFramesChanged(job_id=JOB, frame_range=frames, chunk_size=1)))
    await runner.handle(bus_event(staged))
    [prepare] = commands.of(PrepareScene)
    assert prepare.settings.frame_range == frames


async def test_a_scene_that_cannot_be_staged_fails_the_job_with_the_staging_code(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    failed = SceneStagingFailed(
        job_id=JOB, code="scene_checksum_mismatch", reason="main.blend: wrong bytes", at=T
    )
    await runner.handle(bus_event(failed))
    [(_, fail)] = commands.sent
    assert isinstance(fail, FailJob) and fail.code == "scene_checksum_mismatch"
    assert fail.reason == "the scene could not be staged to the farm: main.blend: wrong bytes"


async def test_a_refused_staging_request_fails_the_job(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    problem = FieldProblem(loc=["scene"], message="no content hash", type="sha256")
    commands.answers[StageScene] = lambda _: ValidationFailed("no hash", errors=[problem])
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted))
    assert commands.types() == ["StageScene", "FailJob"]
    fail = commands.sent[1][1]
    assert isinstance(fail, FailJob) and fail.code == "validation_failed"
    [refused] = await refusals(store)
    assert (refused.command_type, refused.then) == ("upload.StageScene", ["job.FailJob"])


async def test_a_cancel_while_the_scene_is_staged_stops_the_staging_and_confirms(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[CancelRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted))
    await runner.handle(bus_event(JobCancellationRequested(job_id=JOB, reason=None, at=T)))
    assert commands.types() == [
        "StageScene",
        "CancelStaging",
        "CancelRender",
        "ConfirmJobCancelled",
    ]
    # Once the staging has ended, a cancel only looks at the render.
    await runner.handle(bus_event(staged))
    commands.sent.clear()
    await runner.handle(bus_event(JobCancellationRequested(job_id=JOB, reason=None, at=T)))
    assert commands.types() == ["CancelRender", "ConfirmJobCancelled"]


async def test_a_staged_scene_reported_after_the_cancel_queues_nothing(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[QueueJob] = lambda _: JobFinished("it is cancelled", status="cancelled")
    commands.answers[CancelRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(staged))
    await runner.handle(bus_event(prepared))
    assert "SubmitRender" not in commands.types()
    assert all(r.expected for r in await refusals(store))


async def test_a_job_from_before_uploads_is_queued_then_rendered_with_the_frozen_settings(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    event_id = uuid.uuid4()
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(as_schema_1(submitted_before_uploads, event_id))
    assert commands.types() == ["QueueJob", "SubmitRender"]
    [(queue_id, _), (submit_id, submit)] = commands.sent
    # Ids derive from the causing event: a redelivery sends the very same ids.
    assert queue_id == f"scheduler:{event_id}:0"
    assert submit_id == f"scheduler:{event_id}:0>:0"
    assert isinstance(submit, SubmitRender)
    assert (submit.render_id, submit.render_settings.samples) == (RENDER, 64)
    assert store.states[("scheduler", JOB)]["render_id"] == RENDER
    assert await refusals(store) == []


async def test_an_event_handled_before_sends_nothing_again(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(held))  # billing held the credits first
    delivery = bus_event(submitted_before_uploads)
    await runner.handle(delivery)
    await runner.handle(delivery)
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_a_retryable_refusal_redelivers_and_the_retry_repeats_the_same_command_ids(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[SubmitRender] = lambda _: ServiceUnavailable("the farm is away")
    await runner.handle(bus_event(held))  # billing held the credits first
    delivery = bus_event(submitted_before_uploads)
    with pytest.raises(Retry):
        await runner.handle(delivery)
    assert ("scheduler", delivery.event_id) not in store.inbox  # not handled: it comes again
    commands.answers[SubmitRender] = on_farm
    await runner.handle(delivery)
    ids = [command_id for command_id, _ in commands.sent]
    assert ids == [ids[0], ids[1], ids[0], ids[1]]


async def test_a_job_cancelled_before_it_was_queued_is_confirmed_cancelled_and_recorded(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[QueueJob] = lambda _: JobFinished("it is cancelled", status="cancelled")
    commands.answers[CancelRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted_before_uploads))
    assert commands.types() == ["QueueJob", "CancelRender", "ConfirmJobCancelled"]
    refused = await refusals(store)
    assert [(r.command_type, r.code, r.expected) for r in refused] == [
        ("job.QueueJob", "job_finished", True),
        ("render.CancelRender", "render_not_found", True),
    ]
    assert refused[1].then == ["job.ConfirmJobCancelled"]


async def test_a_refused_completion_fails_the_job_with_the_reason_and_raises_an_alert(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[CompleteJob] = lambda _: InvalidStateTransition(
        "job is paused", from_="paused", to="completed"
    )
    done = RenderCompleted(job_id=JOB, render_id=RENDER, frames_rendered=10, at=T)
    await runner.handle(bus_event(done))
    assert commands.types() == ["CompleteJob", "FailJob"]
    fail = commands.sent[1][1]
    assert isinstance(fail, FailJob) and "invalid_state_transition: job is paused" in fail.reason
    [refused] = await refusals(store)
    assert (refused.command_type, refused.expected, refused.key) == ("job.CompleteJob", False, JOB)
    assert refused.then == ["job.FailJob"]


async def test_a_cancel_stops_the_render_the_scheduler_saw_ordered(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    retried = RENDER.replace(".1", ".2")
    seen = RenderSubmitted(job_id=JOB, render_id=retried, farm_job_id="farm-2", task_count=2, at=T)
    await runner.handle(bus_event(seen))
    await runner.handle(bus_event(JobCancellationRequested(job_id=JOB, reason=None, at=T)))
    cancel = commands.sent[-1][1]
    assert isinstance(cancel, CancelRender) and cancel.render_id == retried


async def test_a_refused_render_order_fails_the_job_with_the_bridges_reason(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    problem = FieldProblem(loc=["scene_key"], message="leaves the scenes root", type="scene_key")
    commands.answers[SubmitRender] = lambda _: ValidationFailed(
        "refusing to render job_01: scene_key leaves the scenes root", errors=[problem]
    )
    await runner.handle(bus_event(held))  # billing held the credits first
    await runner.handle(bus_event(submitted_before_uploads))
    assert commands.types() == ["QueueJob", "SubmitRender", "FailJob"]
    fail = commands.sent[-1][1]
    assert isinstance(fail, FailJob) and fail.reason.endswith("scene_key leaves the scenes root")
    [refused] = await refusals(store)
    assert (refused.command_type, refused.code, refused.expected) == (
        "render.SubmitRender",
        "validation_failed",
        False,
    )
