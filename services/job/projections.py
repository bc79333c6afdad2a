"""Read models of the job service (tables: ``services/job/migrations``)."""

from __future__ import annotations

from contracts.base import EVENTS, Event
from contracts.jobs import (
    FrameOutput,
    JobCostCapChanged,
    JobCostRecorded,
    JobFramesRendered,
    JobPriorityChanged,
    JobRenamed,
    JobSlotFreed,
    JobSlotTaken,
    JobStatus,
    JobSubmitted,
    TestRenderStatus,
)
from libs.eventstore.projection import RawJson, ReadModel, Row, on
from libs.eventstore.store import RecordedEvent
from services.job.views import JobView

#: Every event of a job's stream (the owner's slot events are in the owner's stream).
JOB_EVENTS = tuple(
    cls
    for t, cls in EVENTS.types().items()
    if t.startswith("job.") and cls not in (JobSlotTaken, JobSlotFreed)
)

#: Job events that are not progress: billing's cost records and the owner's edits (a job
#: whose cost or name changes but whose steps do not is still stuck).
NOT_PROGRESS = (JobCostRecorded, JobRenamed, JobPriorityChanged, JobCostCapChanged)
#: Where a job waits for, or runs on, the farm's full-render pool.
_ON_FULL_RENDER = frozenset({JobStatus.queued, JobStatus.rendering})


def render_kind(view: JobView) -> str | None:
    """Which render of the job the farm may be busy with: ``test``, ``full`` or None."""
    status = view.status
    if status is JobStatus.paused:
        status = view.paused_from or status
    if status is JobStatus.test_rendering:
        return "test"
    if status in _ON_FULL_RENDER:
        return "full"
    if status is JobStatus.cancelling:
        running = (TestRenderStatus.requested, TestRenderStatus.rendering)
        test = view.test_render
        return "test" if test is not None and test.status in running else "full"
    return None


class JobsProjection(ReadModel):
    """``job.jobs``: one row per job with its envelope as served by the API.

    The envelope is stored as the exact JSON text clients receive, so reads need no
    re-serialisation and the same events always give the same bytes. ``view`` is this read
    model's own state (:class:`JobView`), from which the envelope is rendered.
    """

    name = "jobs"
    table = "jobs"
    key = ("job_id",)
    columns = {
        "job_id": "text",
        "owner_id": "text",
        "status": "text",
        "version": "integer",
        "created_at": "timestamptz",
        "updated_at": "timestamptz",
        "progressed_at": "timestamptz",
        "render_kind": "text",
        "view": "jsonb",
        "envelope": "text",
    }

    @on(*JOB_EVENTS, key=lambda e: (e.job_id,))
    def evolve(self, row: Row | None, e: object, rec: RecordedEvent) -> Row | None:
        if isinstance(e, JobSubmitted):
            view = JobView.submitted(e)
        elif row is None:
            raise LookupError(f"{rec.event_type} for a job with no JobSubmitted")
        elif isinstance(row["view"], JobView):  # folded earlier in this batch
            view = row["view"].fork()
        else:
            view = JobView.model_validate(row["view"])
        assert isinstance(e, Event)  # one of JOB_EVENTS (the rule's types)
        if not isinstance(e, JobSubmitted):
            view.apply(e)
        return {
            "job_id": view.job_id,
            "owner_id": view.owner_id,
            "status": view.status.value,
            "version": rec.version,
            "created_at": view.created_at,
            "updated_at": rec.recorded_at,
            "progressed_at": (
                row["progressed_at"]
                if row is not None and isinstance(e, NOT_PROGRESS)
                else rec.recorded_at
            ),
            "render_kind": render_kind(view),
            "view": view,
            "envelope": None,  # rendered once per batch, in finalize
        }

    def finalize(self, row: Row) -> Row:
        view = row["view"]
        if not isinstance(view, JobView):
            return row
        envelope = view.envelope(row["version"], row["updated_at"]).model_dump_json()
        return {**row, "view": RawJson(view.model_dump_json()), "envelope": envelope}


class FramesProjection(ReadModel):
    """``job.frames``: one row per rendered frame of a job: its output in the outputs bucket
    (id and object key; null for frames recorded before outputs were stored), size, SHA-256.

    A frame rendered again (by a later render of the job) replaces its row.
    """

    name = "frames"
    table = "frames"
    key = ("job_id", "frame")
    columns = {
        "job_id": "text",
        "frame": "integer",
        "render_id": "text",
        "task_id": "integer",
        "output_id": "text",
        "object_key": "text",
        "size_bytes": "bigint",
        "sha256": "text",
        "worker": "text",
        "rendered_at": "timestamptz",
        "render_seconds": "double precision",
        "peak_memory_bytes": "bigint",
    }

    @on(JobFramesRendered, each=lambda e: {(e.job_id, f.frame): f for f in e.frames})
    def rendered(
        self, row: Row | None, e: JobFramesRendered, rec: RecordedEvent, f: FrameOutput
    ) -> Row | None:
        return {
            "job_id": e.job_id,
            "frame": f.frame,
            "render_id": e.render_id,
            "task_id": e.task_id,
            "output_id": f.output_id,
            "object_key": f.object_key,
            "size_bytes": f.size_bytes,
            "sha256": f.sha256,
            "worker": e.worker,
            "rendered_at": e.at,
            "render_seconds": e.render_seconds,
            "peak_memory_bytes": e.peak_memory_bytes,
        }
