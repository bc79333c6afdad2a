"""The scheduler's test-render policy: a test render asked for is ordered once the scene is
prepared (before any full render), its farm events are recorded on the job, and the full
render follows: at once when the job starts by itself, on the user's start, or by itself when
the re-estimate from the measured frames is within the budget given."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from contracts.billing import (
    CostEstimate,
    CostLine,
    EstimateAssumptions,
    LineCause,
    SecondsSource,
    TaskCharged,
)
from contracts.envelope import Currency
from contracts.errors import RenderNotFound
from contracts.jobs import (
    CompleteTestRender,
    FrameOutput,
    FullRenderStartedBy,
    JobCancellationRequested,
    JobFullRenderReleased,
    JobPriority,
    JobTestRenderCompleted,
    JobTestRenderFailed,
    JobTestRenderRequested,
    LogJobStep,
    RecordTestRenderFrames,
    RecordTestRenderStarted,
    StartFullRender,
    TestRenderQuality,
)
from contracts.preparation import PreparationPriority, PrepareScene
from contracts.render import (
    CancelRender,
    RenderCompleted,
    RenderKind,
    RenderTaskCompleted,
    SubmitRender,
    render_id_for,
)
from libs.process import InMemoryProcessStore, ProcessRunner
from services.scheduler.domain import JobRender
from tests.policies import ScriptedCommands
from tests.scheduler.test_policy import (
    JOB,
    PREPARED_KEY,
    RENDER,
    SPEC,
    TOTALS,
    T,
    accepted,
    bus_event,
    commands,
    held,
    prepared,
    runner,
    staged,
    store,
    submitted,
)

__all__ = ["commands", "runner", "store"]

TEST = render_id_for(JOB, RenderKind.test, 1)
FRAMES = [1, 5, 10]
waits = submitted.model_copy(update={"start_full_render": False})


def requested(
    budget: str | None = None, quality: TestRenderQuality | None = None
) -> JobTestRenderRequested:
    return JobTestRenderRequested(
        job_id=JOB,
        render_id=TEST,
        frames=FRAMES,
        deadline_at=T + timedelta(minutes=10),
        budget_credits=Decimal(budget) if budget else None,
        at=T,
        quality=quality or TestRenderQuality(),
    )


def task_done(task_id: int, frame: int) -> RenderTaskCompleted:
    output = FrameOutput(
        frame=frame,
        output_id=f"{JOB}-test-{frame:07d}",
        object_key=f"jobs/usr_1/{JOB}/test/frame_{frame:04d}.png",
        size_bytes=1000,
        sha256="ab" * 32,
    )
    return RenderTaskCompleted(
        render_id=TEST,
        job_id=JOB,
        task_id=task_id,
        frames=[frame],
        worker="worker-standby",
        started_at=T,
        finished_at=T + timedelta(seconds=42),
        render_seconds=42.0,
        outputs=[output],
        peak_memory_bytes=3 * 2**30,
    )


def charged(task_id: int, high: str) -> TaskCharged:
    estimate = CostEstimate(
        low_credits=Decimal("8.00"),
        expected_credits=Decimal("9.00"),
        high_credits=Decimal(high),
        currency=Currency.credits,
        duration_seconds=600,
        assumptions=EstimateAssumptions(
            seconds_per_frame_low=Decimal(40),
            seconds_per_frame=Decimal(42),
            seconds_per_frame_high=Decimal(44),
            seconds_source=SecondsSource.test_render,
            measured_tasks=task_id + 1,
            scene_load_seconds=Decimal(0),
            frames=10,
            tasks=2,
            workers=2,
            instance_type="c2-standard-8",
            priority=JobPriority.normal,
            price_per_hour_credits=Decimal(4),
            price_version=1,
        ),
    )
    line = CostLine(
        line_id=f"task:{TEST}:{task_id}",
        cause=LineCause.task,
        render_id=TEST,
        task_id=task_id,
        frames=[FRAMES[task_id]],
        worker="worker-standby",
        instance_type="c2-standard-8",
        seconds=Decimal(42),
        price_per_hour_credits=Decimal(4),
        price_version=1,
        amount_credits=Decimal("0.05"),
        at=T,
    )
    totals = TOTALS.model_copy(update={"estimate": estimate})
    return TaskCharged(job_id=JOB, owner_id="usr_1", totals=totals, at=T, line=line)


@pytest.fixture(autouse=True)
def scripted(commands: ScriptedCommands) -> None:
    for cmd in (
        RecordTestRenderStarted,
        RecordTestRenderFrames,
        CompleteTestRender,
        StartFullRender,
        LogJobStep,
    ):
        commands.answers[cmd] = accepted


async def prepared_and_waiting(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    """A job submitted with start_full_render=false, held, staged and prepared."""
    for event in (held, waits, staged, prepared):
        await runner.handle(bus_event(event))
    assert "QueueJob" not in commands.types()  # it waits at ready
    commands.sent.clear()


async def test_a_test_render_is_ordered_on_the_test_pool_with_its_frames_once_the_job_is_ready(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested()))
    assert commands.types() == ["RecordTestRenderStarted", "SubmitRender"]
    [submit] = commands.of(SubmitRender)
    assert (submit.kind, submit.attempt, submit.frames) == (RenderKind.test, 1, FRAMES)
    assert (submit.chunk_size, submit.scene_key) == (1, PREPARED_KEY)
    assert submit.resolution == SPEC["resolution"]
    assert submit.render_settings == SPEC["render_settings"]


async def test_a_reduced_test_render_is_ordered_smaller_and_with_fewer_samples(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    preview = TestRenderQuality(resolution_percent=25, samples=16)
    await runner.handle(bus_event(requested(quality=preview)))
    [submit] = commands.of(SubmitRender)
    assert (submit.resolution.width, submit.resolution.height) == (512, 215)  # of 2048x858
    assert submit.render_settings.samples == 16
    assert submit.render_settings.output_format == SPEC["render_settings"].output_format


async def test_a_job_waiting_for_a_test_render_is_prepared_ahead_of_full_renders(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    for event in (held, waits, staged):
        await runner.handle(bus_event(event))
    [prepare] = commands.of(PrepareScene)
    assert prepare.priority is PreparationPriority.test
    for event in (held, submitted, staged):
        await runner.handle(bus_event(event.model_copy(update={"job_id": "job_02"})))
    assert commands.of(PrepareScene)[-1].priority is PreparationPriority.full


async def test_a_test_render_asked_for_while_preparing_comes_before_the_full_render(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    for event in (held, submitted, staged, requested()):
        await runner.handle(bus_event(event))
    commands.sent.clear()
    await runner.handle(bus_event(prepared))
    assert commands.types() == ["RecordTestRenderStarted", "SubmitRender"]  # not QueueJob
    commands.sent.clear()
    ended = JobTestRenderCompleted(job_id=JOB, render_id=TEST, at=T)
    await runner.handle(bus_event(ended))
    assert commands.types() == ["QueueJob", "SubmitRender"]  # the job starts by itself
    [full] = commands.of(SubmitRender)
    assert full.kind is RenderKind.full


async def test_the_farms_test_frames_are_recorded_with_their_seconds_and_peak_memory(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested()))
    commands.sent.clear()
    await runner.handle(bus_event(task_done(0, 1)))
    [record] = commands.of(RecordTestRenderFrames)
    [frame] = record.frames
    assert (frame.output.frame, frame.task_id, frame.render_seconds) == (1, 0, 42.0)
    assert frame.peak_memory_bytes == 3 * 2**30
    await runner.handle(
        bus_event(RenderCompleted(render_id=TEST, job_id=JOB, frames_rendered=3, at=T))
    )
    assert commands.types()[-1] == "CompleteTestRender"
    assert "CompleteJob" not in commands.types()  # the job itself goes on


async def test_the_full_render_starts_by_budget_once_every_test_frame_is_charged(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested(budget="12.00")))
    await runner.handle(bus_event(charged(0, "15.00")))
    await runner.handle(bus_event(JobTestRenderCompleted(job_id=JOB, render_id=TEST, at=T)))
    await runner.handle(bus_event(charged(1, "13.00")))
    assert commands.of(StartFullRender) == []  # one frame is not priced yet
    await runner.handle(bus_event(charged(2, "11.50")))
    [start] = commands.of(StartFullRender)
    assert start.by is FullRenderStartedBy.budget
    commands.sent.clear()
    released = JobFullRenderReleased(job_id=JOB, by=FullRenderStartedBy.budget, at=T)
    await runner.handle(bus_event(released))
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_a_re_estimate_above_the_budget_leaves_the_full_render_waiting_and_says_why(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested(budget="10.00")))
    for n in range(3):
        await runner.handle(bus_event(charged(n, "14.25")))
    await runner.handle(bus_event(JobTestRenderCompleted(job_id=JOB, render_id=TEST, at=T)))
    assert commands.of(StartFullRender) == [] and "QueueJob" not in commands.types()
    [log] = [c for c in commands.of(LogJobStep) if "budget" in c.message]
    assert "14.25" in log.message and "10.00" in log.message


async def test_a_failed_test_render_keeps_a_waiting_job_waiting_and_the_user_starts_it(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested()))
    failed = JobTestRenderFailed(job_id=JOB, render_id=TEST, reason="blender crashed", at=T)
    await runner.handle(bus_event(failed))
    assert "QueueJob" not in commands.types()
    released = JobFullRenderReleased(job_id=JOB, by=FullRenderStartedBy.user, at=T)
    await runner.handle(bus_event(released))
    assert commands.types()[-2:] == ["QueueJob", "SubmitRender"]


async def test_a_cancel_stops_a_test_render_on_the_farm_too(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await prepared_and_waiting(runner, commands)
    await runner.handle(bus_event(requested()))
    commands.answers[CancelRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(JobCancellationRequested(job_id=JOB, reason=None, at=T)))
    cancelled = [c.render_id for c in commands.of(CancelRender)]
    assert cancelled == [TEST, RENDER]
    assert commands.types()[-1] == "ConfirmJobCancelled"


async def test_a_full_renders_charged_task_reads_and_writes_no_scheduler_state(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    test_line = charged(0, "9.00")
    full_line = test_line.line.model_copy(update={"render_id": RENDER})
    await runner.handle(bus_event(test_line.model_copy(update={"line": full_line})))
    assert commands.sent == [] and ("scheduler", JOB) not in store.states
