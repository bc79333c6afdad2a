"""The scheduler's policy on the process-manager kit, with in-memory twins (no servers): what
it sends for each event, the ids it sends them under, and what a refusal becomes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest
from pydantic import BaseModel

from contracts.base import Command, Event
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
    JobStatus,
    JobSubmitted,
    QueueJob,
    Renderer,
    RenderOrder,
    RenderSettings,
    Resolution,
)
from contracts.process import CommandRefused
from contracts.render import (
    CancelRender,
    RenderAccepted,
    RenderCompleted,
    RenderStatus,
    RenderSubmitted,
    SubmitRender,
)
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent, Retry
from libs.eventstore.store import Position
from libs.process import InMemoryProcessStore, ProcessRunner
from services.scheduler.domain import JobRender, RenderProcess

R = TypeVar("R", bound=BaseModel)
T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
JOB = "job_01"
RENDER = f"{JOB}.full.1"
SPEC: dict[str, Any] = {
    "name": "shot_040",
    "scene_key": "scenes/shot_040.blend",
    "renderer": Renderer.blender_cycles,
    "frame_range": FrameRange(start=1, end=10),
    "chunk_size": 5,
    "resolution": Resolution(width=2048, height=858),
    "render_settings": RenderSettings(samples=64),
}

Answer = BaseModel | DomainError[Any]


@dataclass
class ScriptedCommands:
    """The command bus's twin: records what is sent and answers from a script per type."""

    answers: dict[type[Command], Callable[[Command], Answer]] = field(default_factory=dict)
    sent: list[tuple[str, Command]] = field(default_factory=list)

    async def send(
        self,
        cmd: Command,
        result_type: type[R],
        *,
        command_id: str,
        actor: Actor,
        correlation_id: str | None = None,
    ) -> R:
        self.sent.append((command_id, cmd))
        answer = self.answers[type(cmd)](cmd)
        if isinstance(answer, DomainError):
            raise answer
        assert isinstance(answer, result_type)
        return answer

    def types(self) -> list[str]:
        return [type(cmd).__name__ for _, cmd in self.sent]


def bus_event(event: Event, event_id: uuid.UUID | None = None) -> BusEvent:
    return BusEvent(
        event_id=event_id or uuid.uuid4(),
        stream_id=f"x-{JOB}",
        version=1,
        event_type=event.event_type,
        schema_version=event.schema_version,
        position=1,
        recorded_at=T,
        data=orjson.loads(orjson.dumps(event.model_dump(mode="json"))),
        metadata={"correlation_id": "corr-1"},
        deliveries=1,
    )


def order(_: Command) -> RenderOrder:
    return RenderOrder(
        job_id=JOB,
        owner_id="usr_1",
        status=JobStatus.queued,
        priority="normal",
        version=7,
        **SPEC,
    )


def accepted(_: Command) -> JobAccepted:
    return JobAccepted(job_id=JOB, version=9)


def on_farm(_: Command) -> RenderAccepted:
    return RenderAccepted(
        render_id=RENDER, status=RenderStatus.submitted, farm_job_id="farm-1", version=2
    )


submitted = JobSubmitted(
    job_id=JOB, owner_id="usr_1", priority="normal", cost_cap_credits=None, submitted_at=T, **SPEC
)


@pytest.fixture
def commands() -> ScriptedCommands:
    return ScriptedCommands(
        {
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


async def test_a_submitted_job_is_queued_then_rendered_with_the_settings_queueing_froze(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    event_id = uuid.uuid4()
    await runner.handle(bus_event(submitted, event_id))
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
    delivery = bus_event(submitted)
    await runner.handle(delivery)
    await runner.handle(delivery)
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_a_retryable_refusal_redelivers_and_the_retry_repeats_the_same_command_ids(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[SubmitRender] = lambda _: ServiceUnavailable("the farm is away")
    delivery = bus_event(submitted)
    with pytest.raises(Retry):
        await runner.handle(delivery)
    assert store.inbox == set()  # not marked handled: it comes again
    commands.answers[SubmitRender] = on_farm
    await runner.handle(delivery)
    ids = [command_id for command_id, _ in commands.sent]
    assert ids == [ids[0], ids[1], ids[0], ids[1]]


async def test_a_job_cancelled_before_it_was_queued_is_confirmed_cancelled_and_recorded(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    commands.answers[QueueJob] = lambda _: JobFinished("it is cancelled", status="cancelled")
    commands.answers[CancelRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(submitted))
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
    await runner.handle(bus_event(submitted))
    assert commands.types() == ["QueueJob", "SubmitRender", "FailJob"]
    fail = commands.sent[-1][1]
    assert isinstance(fail, FailJob) and fail.reason.endswith("scene_key leaves the scenes root")
    [refused] = await refusals(store)
    assert (refused.command_type, refused.code, refused.expected) == (
        "render.SubmitRender",
        "validation_failed",
        False,
    )
