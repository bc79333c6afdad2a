"""The render aggregate: what the bridge says about a farm job, and that it says it once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.jobs import FrameOutput
from contracts.render import (
    RenderCancelled,
    RenderCompleted,
    RenderFailed,
    RenderKind,
    RenderOrdered,
    RenderResumed,
    RenderStatus,
    RenderSubmitted,
    RenderSuspended,
    RenderTaskCompleted,
    RenderTaskFailed,
    RenderTaskRequeued,
    RenderTaskStarted,
)
from services.deadline_bridge.client import frame_list_text, parse_frames
from services.deadline_bridge.domain import FarmRender, Observed, TaskState
from tests.aggregates import evolve

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def submitted(frames: list[int], chunk: int = 1) -> FarmRender:
    r = FarmRender()
    r.apply(
        RenderOrdered(
            render_id="job_1.full.1",
            job_id="job_1",
            owner_id="usr_1",
            kind=RenderKind.full,
            attempt=1,
            frames=frames,
            chunk_size=chunk,
            output_dir="/out/usr_1/job_1/job_1.full.1",
            output_pattern="frame_####.png",
            at=T0,
        )
    )
    r.apply(
        RenderSubmitted(
            render_id="job_1.full.1", job_id="job_1", farm_job_id="f1", task_count=0, at=T0
        )
    )
    return r


def outputs(frames: list[int]) -> list[FrameOutput]:
    return [
        FrameOutput(
            frame=f,
            output_id=f"j1-full-{f:07d}",
            object_key=f"jobs/u1/j1/full/frame_{f:04d}.png",
            size_bytes=10,
            sha256="ab" * 32,
        )
        for f in frames
    ]


def done(task_id: int, frames: list[int], worker: str = "w1") -> Observed:
    return Observed(
        task_id=task_id,
        state=TaskState.completed,
        worker=worker,
        started_at=T0,
        completed_at=T0 + timedelta(seconds=3),
        outputs=outputs(frames),
    )


def failed(task_id: int, error: str = "boom") -> Observed:
    return Observed(
        task_id=task_id,
        state=TaskState.failed,
        worker="w1",
        started_at=T0,
        completed_at=T0,
        error=error,
    )


def test_tasks_are_the_frame_list_in_chunks() -> None:
    r = submitted([1, 3, 5, 7, 9], chunk=2)
    assert {i: t.frames for i, t in r.tasks.items()} == {0: [1, 3], 1: [5, 7], 2: [9]}
    assert r.output_path(7) == "/out/usr_1/job_1/job_1.full.1/frame_0007.png"


def test_a_completed_task_is_reported_once_with_start_and_timings() -> None:
    r = submitted([1, 2])
    d = r.observe([done(0, [1])], max_retries=2, now=T0)
    assert [type(e) for e in d.events] == [RenderTaskStarted, RenderTaskCompleted]
    completed = d.events[1]
    assert isinstance(completed, RenderTaskCompleted)
    assert completed.render_seconds == 3.0 and completed.outputs == outputs([1])
    evolve(r, d.events)
    assert r.observe([done(0, [1])], max_retries=2, now=T0).events == []


def test_the_render_completes_after_its_last_task() -> None:
    r = submitted([1, 2])
    evolve(r, r.observe([done(0, [1])], 2, T0).events)
    d = r.observe([done(0, [1]), done(1, [2])], 2, T0)
    assert [type(e) for e in d.events] == [RenderTaskStarted, RenderTaskCompleted, RenderCompleted]
    evolve(r, d.events)
    assert r.status is RenderStatus.completed
    assert r.observe([done(0, [1]), done(1, [2])], 2, T0).events == []


def test_a_failed_task_is_requeued_until_its_retries_run_out() -> None:
    r = submitted([1])
    for failure in (1, 2):
        d = r.observe([failed(0)], max_retries=2, now=T0)
        assert d.requeue == [0]
        assert isinstance(d.events[0], RenderTaskFailed)
        assert d.events[0].failures == failure and d.events[0].will_retry
        evolve(r, d.events)
        # seen again before the requeue went through: asks to requeue again, says nothing new
        again = r.observe([failed(0)], max_retries=2, now=T0)
        assert again.events == [] and again.requeue == [0]
        evolve(r, r.requeued(0, T0))
        assert r.tasks[0].state is TaskState.queued
    d = r.observe([failed(0, "plugin crashed")], max_retries=2, now=T0)
    assert d.requeue == []
    assert [type(e) for e in d.events] == [RenderTaskFailed, RenderFailed]
    assert isinstance(d.events[1], RenderFailed) and "plugin crashed" in d.events[1].error
    evolve(r, d.events)
    assert r.status is RenderStatus.failed
    assert r.observe([failed(0)], 2, T0).events == []


def test_requeue_is_said_once() -> None:
    r = submitted([1])
    evolve(r, r.observe([failed(0)], 2, T0).events)
    events = r.requeued(0, T0)
    assert [type(e) for e in events] == [RenderTaskRequeued]
    evolve(r, events)
    assert r.requeued(0, T0) == []


def test_a_completed_task_without_its_files_counts_as_a_failure() -> None:
    r = submitted([1])
    missing = Observed(
        task_id=0,
        state=TaskState.completed,
        worker="w1",
        started_at=T0,
        completed_at=T0,
        output_error="frame 1: output /out/frame_0001.png is missing",
    )
    d = r.observe([missing], 2, T0)
    assert [type(e) for e in d.events] == [RenderTaskFailed]
    assert d.requeue == [0]


def test_a_task_moving_to_another_worker_starts_again() -> None:
    r = submitted([1])
    on = Observed(0, TaskState.rendering, "w1", T0, None)
    evolve(r, r.observe([on], 2, T0).events)
    assert r.observe([on], 2, T0).events == []
    moved = Observed(0, TaskState.rendering, "w2", T0 + timedelta(seconds=30), None)
    d = r.observe([moved], 2, T0)
    assert [type(e) for e in d.events] == [RenderTaskStarted]


def test_a_vanished_or_cancelled_render_ends_once() -> None:
    r = submitted([1])
    events = r.vanished(T0)
    assert [type(e) for e in events] == [RenderCancelled]
    evolve(r, events)
    assert r.vanished(T0) == [] and r.cancel("again", T0) == []
    assert r.observe([done(0, [1])], 2, T0).events == []


def test_deadline_frame_text_round_trips() -> None:
    for frames in ([1], [1, 2, 3], list(range(1, 100, 5)), [1, 2, 3, 10, 20, 30, 31], [0, 5]):
        assert parse_frames(frame_list_text(frames)) == frames
    assert frame_list_text([1, 2, 3, 4]) == "1-4"
    assert frame_list_text([1, 6, 11]) == "1-11x5"
    assert parse_frames("1-3,7,10-14x2") == [1, 2, 3, 7, 10, 12, 14]


def waiting(task_id: int) -> Observed:
    """A task the farm shows suspended (the poller reads it as queued)."""
    return Observed(
        task_id=task_id, state=TaskState.queued, worker="", started_at=None, completed_at=None
    )


def test_a_render_is_suspended_and_resumed_once_each() -> None:
    r = submitted([1, 2])
    assert [type(e) for e in r.suspend("insufficient_credits", T0)] == [RenderSuspended]
    assert r.status is RenderStatus.suspended
    assert r.suspend("insufficient_credits", T0) == []
    assert [type(e) for e in r.resume(T0)] == [RenderResumed]
    assert not r.suspended and r.on_farm
    assert r.resume(T0) == []


def test_a_suspended_renders_waiting_tasks_are_no_failures_and_it_does_not_finish() -> None:
    r = submitted([1, 2, 3])
    r.observe([done(0, [1])], 2, T0)
    r.suspend("insufficient_credits", T0)
    d = r.observe([done(0, [1]), waiting(1), waiting(2)], 2, T0)
    assert d.events == [] and d.requeue == []
    assert r.status is RenderStatus.suspended


def test_a_task_failing_while_suspended_is_requeued_only_once_resumed() -> None:
    r = submitted([1, 2])
    r.suspend("insufficient_credits", T0)
    d = r.observe([failed(0), waiting(1)], 2, T0)
    assert [type(e) for e in d.events] == [RenderTaskFailed] and d.requeue == []
    assert r.observe([failed(0), waiting(1)], 2, T0).requeue == []
    r.resume(T0)
    assert r.observe([failed(0), waiting(1)], 2, T0).requeue == [0]


def test_a_suspended_render_still_reports_a_late_completion_and_its_end() -> None:
    r = submitted([1, 2])
    r.observe([done(0, [1])], 2, T0)
    r.suspend("insufficient_credits", T0)
    d = r.observe([done(0, [1]), done(1, [2])], 2, T0)
    assert [type(e) for e in d.events] == [RenderTaskStarted, RenderTaskCompleted, RenderCompleted]


def test_a_finished_render_is_neither_suspended_nor_resumed() -> None:
    r = submitted([1])
    r.cancel("stop", T0)
    assert r.suspend("insufficient_credits", T0) == [] and r.resume(T0) == []
    r2 = submitted([1])
    r2.suspend("x", T0)
    assert [type(e) for e in r2.vanished(T0)] == [RenderCancelled]
