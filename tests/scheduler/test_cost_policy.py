"""The scheduler's cost protection, on the process-manager kit with in-memory twins: no
render starts before billing holds the job's credits; a refused hold pauses the job and
suspends its render; the hold placed later resumes them (or stages a job never staged);
the cost cap stops the job; a pause for the owner's suspension holds the render until the
reactivation, whatever holds are placed meanwhile. Refusals by a job that ended meanwhile
are expected."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contracts.billing import JobCostCapReached, JobHoldRefused
from contracts.envelope import AwaitingReason, CostStatus
from contracts.errors import JobFinished, RenderNotFound
from contracts.jobs import ACCOUNT_SUSPENDED, JobPaused, JobResumed, PauseJob, ResumeJob, StopJob
from contracts.render import (
    RenderAccepted,
    RenderOrdered,
    RenderResumed,
    RenderStatus,
    RenderSubmitted,
    RenderSuspended,
    ResumeRender,
    SuspendRender,
)
from libs.process import InMemoryProcessStore, ProcessRunner
from services.scheduler.domain import COST_CAP_REACHED, JobRender
from tests.policies import ScriptedCommands
from tests.scheduler.test_policy import (
    JOB,
    RENDER,
    TOTALS,
    T,
    accepted,
    bus_event,
    commands,
    held,
    prepared,
    refusals,
    runner,
    staged,
    store,
    submitted,
    submitted_before_uploads,
)

__all__ = ["commands", "runner", "store"]  # fixtures, used by name

AWAITING = TOTALS.model_copy(
    update={
        "status": CostStatus.awaiting_credits,
        "held_credits": Decimal("0.00"),
        "awaiting_reason": AwaitingReason.insufficient_credits,
    }
)
refused_hold = JobHoldRefused(
    job_id=JOB,
    owner_id="usr_1",
    totals=AWAITING,
    at=T,
    reason=AwaitingReason.insufficient_credits,
    needed_credits=Decimal("12.00"),
    available_credits=Decimal("3.50"),
)
resumed = held.model_copy(update={"resumed": True})
cap_reached = JobCostCapReached(
    job_id=JOB,
    owner_id="usr_1",
    totals=TOTALS.model_copy(update={"status": CostStatus.cap_reached}),
    at=T,
)
ordered = RenderOrdered(
    render_id=RENDER,
    job_id=JOB,
    owner_id="usr_1",
    kind="full",
    attempt=1,
    frames=list(range(1, 11)),
    chunk_size=5,
    output_dir="/renders/usr_1/job_01/job_01.full.1",
    output_pattern="frame_####.png",
    at=T,
)
on_farm = RenderSubmitted(job_id=JOB, render_id=RENDER, farm_job_id="farm-1", task_count=2, at=T)


def suspended_reply(_: object) -> RenderAccepted:
    return RenderAccepted(
        render_id=RENDER, status=RenderStatus.suspended, farm_job_id="farm-1", version=3
    )


@pytest.fixture(autouse=True)
def cost_commands(commands: ScriptedCommands) -> None:
    commands.answers.update(
        {
            PauseJob: accepted,
            ResumeJob: accepted,
            StopJob: accepted,
            SuspendRender: suspended_reply,
            ResumeRender: suspended_reply,
        }
    )


async def rendering(runner: ProcessRunner[JobRender], commands: ScriptedCommands) -> None:
    """A held job whose scene is staged and whose render is on the farm."""
    for event in (submitted, held, staged, ordered, on_farm):
        await runner.handle(bus_event(event))
    commands.sent.clear()


async def test_a_submitted_job_waits_for_its_first_hold_before_anything_is_staged(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(submitted))
    assert commands.sent == []
    await runner.handle(bus_event(held))
    [(_, stage)] = commands.sent
    assert type(stage).__name__ == "StageScene"


async def test_a_job_from_before_uploads_is_queued_once_held(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(submitted_before_uploads))
    assert commands.sent == []
    await runner.handle(bus_event(held))
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_a_hold_that_grows_while_rendering_changes_nothing(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await rendering(runner, commands)
    await runner.handle(bus_event(held.model_copy(update={"increase_credits": Decimal(5)})))
    assert commands.sent == []


async def test_a_refused_first_hold_pauses_the_job_and_nothing_is_staged(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(submitted))
    await runner.handle(bus_event(refused_hold))
    [(_, pause)] = commands.sent
    assert isinstance(pause, PauseJob) and pause.reason == "insufficient_credits"


async def test_the_hold_placed_later_resumes_the_job_and_stages_its_scene(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    await runner.handle(bus_event(submitted))
    await runner.handle(bus_event(refused_hold))
    commands.sent.clear()
    await runner.handle(bus_event(resumed))
    assert commands.types() == ["ResumeJob", "StageScene"]
    state = store.states[("scheduler", JOB)]
    assert (state["paused"], state["started"], state["staging"]) == (False, True, True)


async def test_a_refused_hold_while_rendering_pauses_the_job_and_suspends_its_render(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await rendering(runner, commands)
    spend_cap = refused_hold.model_copy(
        update={
            "reason": AwaitingReason.spend_cap_reached,
            "totals": AWAITING.model_copy(
                update={"awaiting_reason": AwaitingReason.spend_cap_reached}
            ),
        }
    )
    await runner.handle(bus_event(spend_cap))
    assert commands.types() == ["PauseJob", "SuspendRender"]
    pause, suspend = commands.sent[0][1], commands.sent[1][1]
    assert isinstance(pause, PauseJob) and pause.reason == "spend_cap_reached"
    assert isinstance(suspend, SuspendRender)
    assert (suspend.render_id, suspend.reason) == (RENDER, "spend_cap_reached")


async def test_the_hold_placed_later_resumes_the_job_then_its_suspended_render(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    await rendering(runner, commands)
    await runner.handle(bus_event(refused_hold))
    suspended = RenderSuspended(job_id=JOB, render_id=RENDER, reason="insufficient_credits", at=T)
    await runner.handle(bus_event(suspended))
    assert store.states[("scheduler", JOB)]["status"] == "suspended"
    commands.sent.clear()
    await runner.handle(bus_event(resumed))
    assert commands.types() == ["ResumeJob", "ResumeRender"]
    resume = commands.sent[1][1]
    assert isinstance(resume, ResumeRender) and resume.render_id == RENDER
    await runner.handle(bus_event(RenderResumed(job_id=JOB, render_id=RENDER, at=T)))
    assert store.states[("scheduler", JOB)]["status"] == "submitted"


async def test_a_job_paused_while_its_scene_was_staged_is_prepared_and_queued_once_resumed(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await runner.handle(bus_event(submitted))
    await runner.handle(bus_event(held))
    await runner.handle(bus_event(refused_hold))
    commands.sent.clear()
    await runner.handle(bus_event(staged))
    assert commands.types() == ["LogJobStep", "RecordSceneStaged"]  # not queued while paused
    commands.sent.clear()
    await runner.handle(bus_event(resumed))
    assert commands.types() == ["ResumeJob", "PrepareScene"]
    commands.sent.clear()
    await runner.handle(bus_event(prepared))
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_the_cost_cap_stops_the_job_with_its_code_and_the_cap(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await rendering(runner, commands)
    await runner.handle(bus_event(cap_reached))
    [(_, stop)] = commands.sent
    assert isinstance(stop, StopJob) and stop.code == COST_CAP_REACHED == "cost_cap_reached"
    assert stop.reason == "the job's cost reached its cap of 25.00 credits"


async def test_a_job_that_ended_before_the_hold_was_refused_refuses_the_pause_as_expected(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    await rendering(runner, commands)
    commands.answers[PauseJob] = lambda _: JobFinished("it completed", status="completed")
    await runner.handle(bus_event(refused_hold))
    assert commands.types() == ["PauseJob"]  # nothing to suspend
    [refused] = await refusals(store)
    assert (refused.command_type, refused.expected) == ("job.PauseJob", True)


async def test_a_render_gone_from_the_bridge_refuses_the_suspend_as_expected(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands, store: InMemoryProcessStore
) -> None:
    await rendering(runner, commands)
    commands.answers[SuspendRender] = lambda _: RenderNotFound("no render", render_id=RENDER)
    await runner.handle(bus_event(refused_hold))
    assert commands.types() == ["PauseJob", "SuspendRender"]
    assert [(r.command_type, r.expected) for r in await refusals(store)] == [
        ("render.SuspendRender", True)
    ]


# -- paused for the owner's suspension ----------------------------------------------------

paused_for_suspension = JobPaused(job_id=JOB, reason=ACCOUNT_SUSPENDED, at=T)
reactivated = JobResumed(job_id=JOB, at=T)


async def suspended_on_the_farm(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    """Rendering, then paused for the owner's suspension with its render suspended."""
    await rendering(runner, commands)
    await runner.handle(bus_event(paused_for_suspension))
    assert commands.types() == ["SuspendRender"]
    suspend = commands.sent[0][1]
    assert isinstance(suspend, SuspendRender) and suspend.reason == ACCOUNT_SUSPENDED
    await runner.handle(bus_event(RenderSuspended(job_id=JOB, render_id=RENDER, reason="", at=T)))
    commands.sent.clear()


async def test_a_job_paused_for_its_owners_suspension_has_its_render_suspended_until_reactivated(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await suspended_on_the_farm(runner, commands)
    await runner.handle(bus_event(paused_for_suspension))  # delivered twice
    assert commands.sent == []
    await runner.handle(bus_event(reactivated))
    assert commands.types() == ["ResumeRender"]


async def test_a_hold_placed_while_the_owner_is_suspended_resumes_nothing(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await suspended_on_the_farm(runner, commands)
    await runner.handle(bus_event(refused_hold))
    commands.sent.clear()
    await runner.handle(bus_event(resumed))
    assert commands.sent == []
    await runner.handle(bus_event(reactivated))
    assert commands.types() == ["ResumeRender"]


async def test_a_job_still_short_of_credits_at_the_reactivation_is_paused_for_them_again(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await suspended_on_the_farm(runner, commands)
    await runner.handle(bus_event(refused_hold))
    commands.sent.clear()
    await runner.handle(bus_event(reactivated))
    [(_, pause)] = commands.sent
    assert isinstance(pause, PauseJob) and pause.reason == "insufficient_credits"


async def test_a_scene_prepared_while_the_owner_is_suspended_is_queued_at_the_reactivation(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    for event in (submitted, held, staged):
        await runner.handle(bus_event(event))
    await runner.handle(bus_event(paused_for_suspension))
    commands.sent.clear()
    await runner.handle(bus_event(prepared))
    assert commands.sent == []
    await runner.handle(bus_event(reactivated))
    assert commands.types() == ["QueueJob", "SubmitRender"]


async def test_the_schedulers_own_pauses_and_resumes_for_credits_change_nothing_more(
    runner: ProcessRunner[JobRender], commands: ScriptedCommands
) -> None:
    await rendering(runner, commands)
    await runner.handle(bus_event(JobPaused(job_id=JOB, reason="insufficient_credits", at=T)))
    await runner.handle(bus_event(reactivated))
    assert commands.sent == []
