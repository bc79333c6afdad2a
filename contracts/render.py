"""Renders on the farm: the deadline-bridge's events (``render.*``) and commands.

A *render* is one order to the farm for one job: the full render now, a test render later.
Its id is ``<job id>.<kind>.<attempt>``, so ordering the same render twice names the same
thing, and the bridge can refuse to submit it to the farm a second time.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from contracts.base import COMMANDS, EVENTS, Command, Event, JsonDict
from contracts.jobs import (
    FrameOutput,
    FrameRange,
    JobPriority,
    Renderer,
    RenderSettings,
    Resolution,
    frames_stored_in_object_storage,
)


class RenderKind(StrEnum):
    full = "full"
    test = "test"


class RenderStatus(StrEnum):
    ordered = "ordered"  # recorded, not yet on the farm
    submitted = "submitted"  # the farm has the job
    suspended = "suspended"  # the farm job is suspended (cost protection); resumable
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


FINISHED_RENDER_STATUSES = frozenset(
    {RenderStatus.completed, RenderStatus.failed, RenderStatus.cancelled}
)


def render_id_for(job_id: str, kind: RenderKind, attempt: int) -> str:
    return f"{job_id}.{kind.value}.{attempt}"


def render_kind_of(render_id: str) -> RenderKind:
    """The kind a render id (``<job id>.<kind>.<attempt>``) names."""
    return split_render_id(render_id)[1]


def split_render_id(render_id: str) -> tuple[str, RenderKind, int]:
    """The job id, kind and attempt of a render id (:func:`render_id_for`'s inverse);
    ValueError if it is not one."""
    job_id, kind, attempt = render_id.rsplit(".", 2)
    return job_id, RenderKind(kind), int(attempt)


def chunk_frames(frames: list[int], chunk_size: int) -> list[list[int]]:
    """Frames per farm task, the way Deadline chunks a frame list: consecutive runs."""
    return [frames[i : i + chunk_size] for i in range(0, len(frames), chunk_size)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class RenderOrdered(Event):
    """The bridge accepted the order; the farm job is created next."""

    event_type = "render.RenderOrdered"
    render_id: str
    job_id: str
    owner_id: str
    kind: RenderKind
    attempt: int
    frames: list[int]
    chunk_size: int
    output_dir: str
    output_pattern: str  # file name with #### for the zero-padded frame number
    at: datetime


@EVENTS.register
class RenderSubmitted(Event):
    event_type = "render.RenderSubmitted"
    render_id: str
    job_id: str
    farm_job_id: str
    task_count: int
    at: datetime


@EVENTS.register
class RenderTaskStarted(Event):
    event_type = "render.RenderTaskStarted"
    render_id: str
    job_id: str
    task_id: int
    frames: list[int]
    worker: str
    at: datetime


@EVENTS.register
class RenderTaskCompleted(Event):
    event_type = "render.RenderTaskCompleted"
    schema_version = 2  # v1 outputs had the farm path, no output id or key
    render_id: str
    job_id: str
    task_id: int
    frames: list[int]
    worker: str
    started_at: datetime
    finished_at: datetime
    render_seconds: float
    outputs: list[FrameOutput]
    #: The render's peak memory on the farm (the task's ``RamPeak``); null when the farm
    #: did not measure it, and for tasks recorded before it was read.
    peak_memory_bytes: int | None = None


@EVENTS.upcaster(RenderTaskCompleted.event_type, from_version=1)
def _task_completed_v1(data: JsonDict) -> JsonDict:
    return frames_stored_in_object_storage(data, "outputs")


@EVENTS.register
class RenderTaskFailed(Event):
    """A task errored on the farm. ``will_retry`` says whether the bridge requeues it."""

    event_type = "render.RenderTaskFailed"
    render_id: str
    job_id: str
    task_id: int
    frames: list[int]
    worker: str
    error: str
    failures: int  # failures of this task so far, this one included
    will_retry: bool
    at: datetime


@EVENTS.register
class RenderTaskRequeued(Event):
    event_type = "render.RenderTaskRequeued"
    render_id: str
    job_id: str
    task_id: int
    at: datetime


@EVENTS.register
class RenderCompleted(Event):
    event_type = "render.RenderCompleted"
    render_id: str
    job_id: str
    frames_rendered: int
    at: datetime


@EVENTS.register
class RenderFailed(Event):
    event_type = "render.RenderFailed"
    render_id: str
    job_id: str
    error: str
    at: datetime


@EVENTS.register
class RenderCancelled(Event):
    event_type = "render.RenderCancelled"
    render_id: str
    job_id: str
    reason: str | None
    at: datetime


@EVENTS.register
class RenderSuspended(Event):
    """The farm job was suspended (its tasks stop and wait); ``reason`` is a code."""

    event_type = "render.RenderSuspended"
    render_id: str
    job_id: str
    reason: str
    at: datetime


@EVENTS.register
class RenderResumed(Event):
    event_type = "render.RenderResumed"
    render_id: str
    job_id: str
    at: datetime


# --- commands ----------------------------------------------------------------------------


@COMMANDS.register
class SubmitRender(Command):
    """Order a render on the farm. Ordering the same ``render_id`` again changes nothing.

    ``frames`` picks the frames to render (a test render's few frames, e.g. first, middle
    and last), each a frame of ``frame_range``; null renders every frame of the range.
    """

    command_type = "render.SubmitRender"
    job_id: str
    owner_id: str
    kind: RenderKind
    attempt: int = Field(ge=1)
    name: str
    scene_key: str
    renderer: Renderer
    frame_range: FrameRange
    chunk_size: int = Field(ge=1)
    resolution: Resolution
    render_settings: RenderSettings
    priority: JobPriority
    frames: list[int] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _frames_in_range(self) -> Self:
        if self.frames is None:
            return self
        r = self.frame_range
        outside = [f for f in self.frames if not (r.start <= f <= r.end) or (f - r.start) % r.step]
        if outside or len(set(self.frames)) != len(self.frames):
            raise PydanticCustomError(
                "invalid_frames",
                "frames must be distinct frames of the frame range; {bad} are not",
                {"bad": outside or self.frames},
            )
        return self

    @property
    def render_id(self) -> str:
        return render_id_for(self.job_id, self.kind, self.attempt)

    def frames_to_render(self) -> list[int]:
        """The frames ordered: ``frames`` in frame order, else every frame of the range."""
        return sorted(self.frames) if self.frames is not None else list(self.frame_range.frames())


@COMMANDS.register
class CancelRender(Command):
    """Stop a render: the farm job is deleted. Cancelling a finished render changes nothing."""

    command_type = "render.CancelRender"
    render_id: str
    reason: str | None = None


@COMMANDS.register
class SuspendRender(Command):
    """Suspend the farm job (farm command ``suspend``). A suspended or finished render
    changes nothing."""

    command_type = "render.SuspendRender"
    render_id: str
    reason: str = Field(max_length=100)


@COMMANDS.register
class ResumeRender(Command):
    """Resume a suspended farm job (farm command ``resume``); anything else changes nothing."""

    command_type = "render.ResumeRender"
    render_id: str


class RenderAccepted(_Model):
    render_id: str
    status: RenderStatus
    farm_job_id: str | None
    version: int


#: Every event of a render (each carries ``render_id`` and ``job_id``).
RenderEvent = (
    RenderOrdered
    | RenderSubmitted
    | RenderTaskStarted
    | RenderTaskCompleted
    | RenderTaskFailed
    | RenderTaskRequeued
    | RenderCompleted
    | RenderFailed
    | RenderCancelled
    | RenderSuspended
    | RenderResumed
)
