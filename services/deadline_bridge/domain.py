"""A render on the farm: what the bridge has told the rest of the system about it.

The aggregate turns what the farm shows (task states, as the poller reads them) into events,
each at most once: a task's start, its completion with the files it wrote, its failures, and
the render's end. Pure: no I/O and no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from contracts.base import Event
from contracts.jobs import FrameOutput
from contracts.render import (
    FINISHED_RENDER_STATUSES,
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
    chunk_frames,
)
from libs.eventstore.aggregate import Aggregate


class TaskState(StrEnum):
    queued = "queued"
    rendering = "rendering"
    completed = "completed"
    failed = "failed"  # failed on the farm; requeued by the bridge if retries are left


class TaskView(BaseModel):
    frames: list[int]
    state: TaskState = TaskState.queued
    failures: int = 0
    retry_pending: bool = False  # failed with a retry left, not yet requeued on the farm
    worker: str = ""
    started_at: datetime | None = None


@dataclass(frozen=True)
class Observed:
    """One farm task as the poller saw it, with what the bridge found out about it."""

    task_id: int
    state: TaskState
    worker: str
    started_at: datetime | None
    completed_at: datetime | None
    #: For a completed task: its frames' files, or why they are not usable.
    outputs: list[FrameOutput] | None = None
    output_error: str | None = None
    #: For a failed task: the farm's error report.
    error: str | None = None
    #: The render's peak memory (the farm task's ``RamPeak``), when the farm measured it.
    peak_memory_bytes: int | None = None


@dataclass
class Decision:
    events: list[Event] = field(default_factory=list)
    #: Failed tasks to requeue on the farm (then :meth:`FarmRender.requeued`).
    requeue: list[int] = field(default_factory=list)


class FarmRender(Aggregate):
    """One render on the farm (stream ``render-<render id>``)."""

    stream_prefix = "render"

    render_id: str = ""
    job_id: str = ""
    owner_id: str = ""
    kind: RenderKind = RenderKind.full
    status: RenderStatus | None = None
    farm_job_id: str | None = None
    frames: list[int] = []
    chunk_size: int = 1
    output_dir: str = ""
    output_pattern: str = ""
    tasks: dict[int, TaskView] = {}

    def apply(self, event: Event) -> None:
        match event:
            case RenderOrdered():
                self.render_id, self.job_id, self.owner_id = (
                    event.render_id,
                    event.job_id,
                    event.owner_id,
                )
                self.kind = event.kind
                self.frames, self.chunk_size = event.frames, event.chunk_size
                self.output_dir, self.output_pattern = event.output_dir, event.output_pattern
                self.status = RenderStatus.ordered
            case RenderSubmitted():
                self.farm_job_id = event.farm_job_id
                self.status = RenderStatus.submitted
                self.tasks = {
                    i: TaskView(frames=chunk)
                    for i, chunk in enumerate(chunk_frames(self.frames, self.chunk_size))
                }
            case RenderTaskStarted():
                task = self.tasks[event.task_id]
                task.state, task.worker, task.started_at = (
                    TaskState.rendering,
                    event.worker,
                    event.at,
                )
            case RenderTaskCompleted():
                task = self.tasks[event.task_id]
                task.state, task.worker = TaskState.completed, event.worker
            case RenderTaskFailed():
                task = self.tasks[event.task_id]
                task.state, task.failures = TaskState.failed, event.failures
                task.retry_pending = event.will_retry
            case RenderTaskRequeued():
                task = self.tasks[event.task_id]
                task.state, task.retry_pending = TaskState.queued, False
            case RenderCompleted():
                self.status = RenderStatus.completed
            case RenderFailed():
                self.status = RenderStatus.failed
            case RenderCancelled():
                self.status = RenderStatus.cancelled
            case RenderSuspended():
                self.status = RenderStatus.suspended
            case RenderResumed():
                self.status = RenderStatus.submitted
            case _:
                raise TypeError(f"render cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_RENDER_STATUSES

    @property
    def on_farm(self) -> bool:
        """The farm has the job, working on it or suspended."""
        return self.status in (RenderStatus.submitted, RenderStatus.suspended)

    @property
    def suspended(self) -> bool:
        return self.status is RenderStatus.suspended

    def output_file_name(self, frame: int) -> str:
        """The file the farm writes for ``frame`` (``####`` is the frame number, zero-padded)."""
        return self.output_pattern.replace("####", f"{frame:04d}")

    def output_path(self, frame: int) -> str:
        """Where the farm writes ``frame``."""
        return f"{self.output_dir}/{self.output_file_name(frame)}"

    # -- decide -----------------------------------------------------------------------

    def order(self, ordered: RenderOrdered) -> list[Event]:
        """Take the order (before the farm is called); a repeated order changes nothing."""
        return [] if self.exists else self.record(ordered)

    def submitted(self, farm_job_id: str, now: datetime) -> list[Event]:
        """The farm took the job; only an ordered render moves on."""
        if self.status is not RenderStatus.ordered:
            return []
        return self.record(
            RenderSubmitted(
                render_id=self.render_id,
                job_id=self.job_id,
                farm_job_id=farm_job_id,
                task_count=-(-len(self.frames) // self.chunk_size),
                at=now,
            )
        )

    def observe(self, seen: list[Observed], max_retries: int, now: datetime) -> Decision:
        """Events for what changed on the farm since the last look, each said once.

        A suspended farm job's tasks wait (the farm shows them suspended, which is no
        failure and no requeue); a task that failed before the suspend is requeued only once
        the render is resumed (it stays ``retry_pending``)."""
        out = Decision()
        if not self.on_farm:
            return out
        ids = dict(job_id=self.job_id, render_id=self.render_id)
        for obs in sorted(seen, key=lambda o: o.task_id):
            task = self.tasks.get(obs.task_id)
            if task is None or task.state is TaskState.completed:
                continue  # a completed task's frames were reported once; a later requeue
                # by an operator re-renders files we already have
            if obs.state is TaskState.failed or (
                obs.state is TaskState.completed and obs.output_error is not None
            ):
                if task.state is TaskState.failed:
                    if task.retry_pending and not self.suspended:
                        out.requeue.append(obs.task_id)  # the last requeue did not happen
                    continue
                failures = task.failures + 1
                retry = failures <= max_retries
                error = obs.error or obs.output_error or "the task failed without an error report"
                out.events.append(
                    RenderTaskFailed(
                        **ids,
                        task_id=obs.task_id,
                        frames=task.frames,
                        worker=obs.worker,
                        error=error,
                        failures=failures,
                        will_retry=retry,
                        at=obs.completed_at or now,
                    )
                )
                if retry and not self.suspended:
                    out.requeue.append(obs.task_id)
                elif not retry:
                    out.events.append(
                        RenderFailed(
                            **ids,
                            error=f"task {obs.task_id} (frames {_frames_text(task.frames)})"
                            f" failed {failures} times; last error: {error}",
                            at=now,
                        )
                    )
                    self.record(*out.events)
                    return out
                continue
            if obs.state in (TaskState.rendering, TaskState.completed) and (
                task.state is TaskState.queued or obs.worker != task.worker
            ):
                started = obs.started_at or now
                out.events.append(
                    RenderTaskStarted(
                        **ids,
                        task_id=obs.task_id,
                        frames=task.frames,
                        worker=obs.worker,
                        at=started,
                    )
                )
            if obs.state is TaskState.completed:
                assert obs.outputs is not None
                started = obs.started_at or task.started_at or now
                finished = obs.completed_at or now
                out.events.append(
                    RenderTaskCompleted(
                        **ids,
                        task_id=obs.task_id,
                        frames=task.frames,
                        worker=obs.worker,
                        started_at=started,
                        finished_at=finished,
                        render_seconds=max(0.0, (finished - started).total_seconds()),
                        outputs=obs.outputs,
                        peak_memory_bytes=obs.peak_memory_bytes,
                    )
                )
        done = {i for i, t in self.tasks.items() if t.state is TaskState.completed} | {
            e.task_id for e in out.events if isinstance(e, RenderTaskCompleted)
        }
        if len(done) == len(self.tasks):
            out.events.append(RenderCompleted(**ids, frames_rendered=len(self.frames), at=now))
        self.record(*out.events)
        return out

    def requeued(self, task_id: int, now: datetime) -> list[Event]:
        task = self.tasks[task_id]
        if self.status is not RenderStatus.submitted or not task.retry_pending:
            return []
        return self.record(
            RenderTaskRequeued(
                job_id=self.job_id, render_id=self.render_id, task_id=task_id, at=now
            )
        )

    def vanished(self, now: datetime) -> list[Event]:
        """The farm job is gone (deleted on the farm, not by us)."""
        if not self.on_farm:
            return []
        return self.record(
            RenderCancelled(
                job_id=self.job_id,
                render_id=self.render_id,
                reason="the farm job was deleted on the farm",
                at=now,
            )
        )

    def suspend(self, reason: str, now: datetime) -> list[Event]:
        """The farm suspended the job; a render not working on the farm changes nothing."""
        if self.status is not RenderStatus.submitted:
            return []
        return self.record(
            RenderSuspended(job_id=self.job_id, render_id=self.render_id, reason=reason, at=now)
        )

    def resume(self, now: datetime) -> list[Event]:
        """The farm resumed the job; a render that is not suspended changes nothing."""
        if not self.suspended:
            return []
        return self.record(RenderResumed(job_id=self.job_id, render_id=self.render_id, at=now))

    def cancel(self, reason: str | None, now: datetime) -> list[Event]:
        if self.finished:
            return []
        return self.record(
            RenderCancelled(job_id=self.job_id, render_id=self.render_id, reason=reason, at=now)
        )


def _frames_text(frames: list[int]) -> str:
    return f"{frames[0]}-{frames[-1]}" if len(frames) > 1 else str(frames[0])
