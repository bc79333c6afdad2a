"""The job service's read models as the gateway reads them (libs/readmodels/jobs.py, ADR 0007).

The job service's real projections run over real events in PostgreSQL; everything is read back
only through :class:`JobsQuery` on a read-only pool. A change to ``job.jobs``, ``job.frames`` or
the event store that breaks the query module fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from contracts.base import EventRegistry
from contracts.envelope import JobEnvelope
from contracts.jobs import (
    CancelJob,
    FrameRange,
    JobAccepted,
    JobChanges,
    JobSpec,
    KillJob,
    Resolution,
    SubmitJob,
    UpdateJob,
)
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.readmodels import jobs as job_queries
from libs.readmodels import read_only_pool
from libs.readmodels.jobs import JobsQuery
from libs.runtime import ServiceRuntime
from services.job.service import SERVICE
from tests.contracts.upcasting import NoteAdded, insert_v1_note, register_note, served_note
from tests.fixtures import scene_ref
from tests.job.scheduler import Scheduler, outputs


@pytest.fixture
async def read_pool(job_service: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(job_service.settings.database_url, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def jobs(read_pool: asyncpg.Pool) -> JobsQuery:
    return JobsQuery(read_pool, SERVICE.schema)


async def submit(rt: ServiceRuntime[Any], owner: str, frames: int = 8) -> JobAccepted:
    scene = scene_ref()
    spec = JobSpec(
        name="shot_010",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=frames),
        chunk_size=4,
        resolution=Resolution(width=1920, height=1080),
    )
    cmd = SubmitJob(job_id=new_id("job"), owner_id=owner, spec=spec, scene=scene)
    return await send(rt, cmd, owner)


async def send(
    rt: ServiceRuntime[Any], cmd: SubmitJob | UpdateJob | CancelJob | KillJob, owner: str
) -> JobAccepted:
    return await CommandClient(rt.nc, rt.settings, timeout=10).send(
        cmd, JobAccepted, command_id=uuid.uuid4().hex, actor=Actor(kind="user", id=owner)
    )


def test_the_query_module_reads_the_schema_and_tables_the_job_service_declares() -> None:
    assert SERVICE.schema == job_queries.SCHEMA
    tables = {getattr(p, "table", None) for p in SERVICE.projections}
    assert {"jobs", "frames"} <= tables


async def test_envelopes_are_the_stored_bytes_and_only_the_owners(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    accepted = await submit(job_service, "usr_a")
    found = await jobs.envelope(accepted.job_id, "usr_a")
    assert found is not None and found.job_id == accepted.job_id
    assert found.version == accepted.version == 1
    envelope = JobEnvelope.model_validate_json(found.envelope)
    assert (envelope.job_id, envelope.owner_id, envelope.version) == (accepted.job_id, "usr_a", 1)
    assert found.envelope == envelope.model_dump_json()  # served as stored, byte for byte
    assert await jobs.envelope(accepted.job_id, "usr_b") is None
    assert await jobs.envelope(accepted.job_id) == found  # no owner: an administrator's read
    assert await jobs.envelope("job_missing") is None


async def test_waiting_for_a_version_returns_once_the_projection_shows_it(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    accepted = await submit(job_service, "usr_a")
    renamed = await send(
        job_service,
        UpdateJob(job_id=accepted.job_id, owner_id="usr_a", changes=JobChanges(name="v2")),
        "usr_a",
    )
    found = await jobs.wait_for_envelope(accepted.job_id, "usr_a", renamed.version, 1.0)
    assert found is not None and found.version == renamed.version == 2
    assert JobEnvelope.model_validate_json(found.envelope).name == "v2"
    # A version the view never reaches: the last one seen, after the wait.
    behind = await jobs.wait_for_envelope(accepted.job_id, "usr_a", 99, 0.05)
    assert behind is not None and behind.version == 2
    assert await jobs.wait_for_envelope(accepted.job_id, "usr_b", 1, 0.05) is None


async def test_lists_are_newest_first_by_owner_and_status_with_a_cursor(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    a = [(await submit(job_service, "usr_a")).job_id for _ in range(3)]
    await submit(job_service, "usr_b")
    await send(job_service, CancelJob(job_id=a[1], owner_id="usr_a"), "usr_a")
    page = await jobs.list_envelopes("usr_a", None, None, 2)
    assert [e.job_id for e in page] == [a[2], a[1]]
    rest = await jobs.list_envelopes("usr_a", None, page[-1].job_id, 2)
    assert [e.job_id for e in rest] == [a[0]]
    cancelled = await jobs.list_envelopes("usr_a", "cancelled", None, 10)
    assert [e.job_id for e in cancelled] == [a[1]]
    assert JobEnvelope.model_validate_json(cancelled[0].envelope).status == "cancelled"
    assert len(await jobs.list_envelopes(None, None, None, 10)) == 4


async def test_admin_lists_filter_every_users_jobs_by_owner_status_render_and_age(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    scheduler = Scheduler(job_service)
    a = [(await submit(job_service, "usr_a")).job_id for _ in range(2)]
    b = (await submit(job_service, "usr_b")).job_id
    await scheduler.prepare(a[0])
    await scheduler.queue(a[0])
    await scheduler.start(a[0])  # rendering: on the full-render pool
    await send(job_service, KillJob(job_id=b, reason="abuse"), "usr_admin")

    def ids(rows: list[job_queries.StoredEnvelope]) -> list[str]:
        return [e.job_id for e in rows]

    args: dict[str, Any] = {
        "owner_id": None,
        "status": None,
        "render_kinds": None,
        "created_before": None,
        "before_job_id": None,
        "limit": 10,
    }
    everyone = await jobs.admin_envelopes(**args)
    assert [e.job_id for e in everyone] == [b, a[1], a[0]]
    page = await jobs.admin_envelopes(**{**args, "limit": 2})
    rest = await jobs.admin_envelopes(**{**args, "before_job_id": page[-1].job_id})
    assert ids(page + rest) == [b, a[1], a[0]]
    assert ids(await jobs.admin_envelopes(**{**args, "owner_id": "usr_a"})) == a[::-1]
    assert ids(await jobs.admin_envelopes(**{**args, "status": "cancelled"})) == [b]
    full = await jobs.admin_envelopes(**{**args, "render_kinds": ["full"]})
    assert ids(full) == [a[0]]
    assert await jobs.admin_envelopes(**{**args, "render_kinds": ["test"]}) == []
    assert await jobs.admin_envelopes(**{**args, "render_kinds": []}) == []
    past = datetime.now(UTC) - timedelta(hours=1)
    assert await jobs.admin_envelopes(**{**args, "created_before": past}) == []
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert len(await jobs.admin_envelopes(**{**args, "created_before": later})) == 3


async def test_stuck_jobs_are_the_unfinished_ones_without_progress_since_a_time(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    scheduler = Scheduler(job_service)
    idle = (await submit(job_service, "usr_a")).job_id
    moving = (await submit(job_service, "usr_a")).job_id
    done = (await submit(job_service, "usr_a")).job_id
    await send(job_service, CancelJob(job_id=done, owner_id="usr_a"), "usr_a")
    between = datetime.now(UTC)
    await scheduler.prepare(moving)  # progress after `between`
    renamed = UpdateJob(job_id=idle, owner_id="usr_a", changes=JobChanges(name="renamed"))
    await send(job_service, renamed, "usr_a")  # an edit, not progress
    [stuck] = await jobs.stuck(between, 10)
    assert (stuck.job_id, stuck.owner_id, stuck.status) == (idle, "usr_a", "submitted")
    assert stuck.progressed_at < between
    assert JobEnvelope.model_validate_json(stuck.envelope).name == "renamed"
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert [j.job_id for j in await jobs.stuck(now, 10)] == [idle, moving]
    assert [j.job_id for j in await jobs.stuck(now, 1)] == [idle]


async def test_frames_are_the_rendered_files_by_frame_number(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    scheduler = Scheduler(job_service)
    job_id = (await submit(job_service, "usr_a", frames=8)).job_id
    await scheduler.prepare(job_id)
    await scheduler.queue(job_id)
    await scheduler.start(job_id)
    await scheduler.send(scheduler.task(job_id, 1, [5, 6, 7, 8], worker="w2"))
    await scheduler.send(scheduler.task(job_id, 0, [1, 2, 3, 4]))
    frames = await jobs.frames(job_id, 0, 5)
    assert [f.frame for f in frames] == [1, 2, 3, 4, 5]
    want = outputs(job_id, [1])[0]
    first = frames[0]
    assert (first.output_id, first.object_key, first.size_bytes, first.sha256) == (
        want.output_id,
        want.object_key,
        want.size_bytes,
        want.sha256,
    )
    assert first.worker == "worker-1" and frames[4].worker == "w2"
    assert first.rendered_at.tzinfo is not None
    assert [f.frame for f in await jobs.frames(job_id, 5, 10)] == [6, 7, 8]


async def test_events_are_the_jobs_history_in_the_current_schema(
    job_service: ServiceRuntime[Any], jobs: JobsQuery
) -> None:
    accepted = await submit(job_service, "usr_a")
    await send(job_service, CancelJob(job_id=accepted.job_id, owner_id="usr_a"), "usr_a")
    events = await jobs.events(accepted.job_id, 0, 10)
    assert [e.type for e in events] == [
        "job.JobSubmitted",
        "job.JobCancellationRequested",
        "job.JobCancelled",
    ]
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.schema_version for e in events] == [2, 1, 1]  # JobSubmitted is at schema 2
    assert all(e.actor_id == "usr_a" for e in events)
    assert events[0].data["job_id"] == accepted.job_id
    assert events[0].data["frame_range"] == {"start": 1, "end": 8, "step": 1}
    assert [e.version for e in await jobs.events(accepted.job_id, 1, 1)] == [2]


async def test_events_of_an_older_schema_are_upcast_and_secrets_masked(
    job_service: ServiceRuntime[Any], read_pool: asyncpg.Pool
) -> None:
    registry = EventRegistry()
    register_note(registry)
    accepted = await submit(job_service, "usr_a")
    await insert_v1_note(job_service.pool, accepted.job_id, 2, "usr_a")
    [note] = await JobsQuery(read_pool, SERVICE.schema, registry).events(accepted.job_id, 1, 10)
    assert (note.type, note.version, note.schema_version) == (NoteAdded.event_type, 2, 2)
    assert note.data == served_note(accepted.job_id)
    assert note.actor_id == "usr_a"


async def test_the_query_pool_refuses_writes(read_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await read_pool.execute("CREATE TABLE job.not_allowed (x int)")
