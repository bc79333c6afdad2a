"""Read models of the job service."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import asyncpg

from contracts.base import EVENTS
from contracts.jobs import JobFramesRendered, JobSlotFreed, JobSlotTaken
from libs.eventstore.processor import Projection
from libs.eventstore.store import RecordedEvent
from services.job.domain import Job


class JobsProjection(Projection):
    """``job.jobs``: one row per job with its state and its envelope as served by the API.

    The envelope is stored as the exact JSON text clients receive, so reads need no
    re-serialisation and the same state always gives the same bytes.
    """

    name = "jobs"
    tables = ("jobs",)
    types = tuple(
        t
        for t in EVENTS.types()
        if t.startswith("job.") and t not in (JobSlotTaken.event_type, JobSlotFreed.event_type)
    )

    async def setup(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS job.jobs (
                job_id text PRIMARY KEY,
                owner_id text NOT NULL,
                status text NOT NULL,
                version integer NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                state jsonb NOT NULL,
                envelope text NOT NULL
            );
            CREATE INDEX IF NOT EXISTS jobs_owner ON job.jobs (owner_id, job_id DESC);
            CREATE INDEX IF NOT EXISTS jobs_by_state ON job.jobs (owner_id, status, job_id DESC);
            CREATE INDEX IF NOT EXISTS jobs_status ON job.jobs (status, job_id DESC);
            """
        )

    async def apply(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        by_job: dict[str, list[RecordedEvent]] = defaultdict(list)
        for e in events:
            by_job[e.stream_id.removeprefix("job-")].append(e)
        rows = await conn.fetch(
            "SELECT job_id, state FROM job.jobs WHERE job_id = ANY($1)", list(by_job)
        )
        states = {r["job_id"]: Job.model_validate(r["state"]) for r in rows}
        out: list[tuple[str, str, str, int, datetime, datetime, dict[str, object], str]] = []
        for job_id, recs in by_job.items():
            job = states.get(job_id) or Job()
            for rec in recs:
                job.apply(rec.decode())
            last = recs[-1]
            assert job.status is not None and job.created_at is not None
            out.append(
                (
                    job_id,
                    job.owner_id,
                    job.status.value,
                    last.version,
                    job.created_at,
                    last.recorded_at,
                    job.model_dump(mode="json"),
                    job.envelope(last.version, last.recorded_at).model_dump_json(),
                )
            )
        await conn.executemany(
            """
            INSERT INTO job.jobs (job_id, owner_id, status, version, created_at, updated_at,
                                  state, envelope)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (job_id) DO UPDATE SET status = EXCLUDED.status,
                version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
                state = EXCLUDED.state, envelope = EXCLUDED.envelope
            """,
            out,
        )


class FramesProjection(Projection):
    """``job.frames``: one row per rendered frame of a job, the file the farm wrote for it.

    A frame rendered again (by a later render of the job) replaces its row.
    """

    name = "frames"
    tables = ("frames",)
    types = (JobFramesRendered.event_type,)

    async def setup(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS job.frames (
                job_id text NOT NULL,
                frame integer NOT NULL,
                render_id text NOT NULL,
                task_id integer NOT NULL,
                path text NOT NULL,
                size_bytes bigint NOT NULL,
                sha256 text NOT NULL,
                worker text NOT NULL,
                rendered_at timestamptz NOT NULL,
                PRIMARY KEY (job_id, frame)
            );
            """
        )

    async def apply(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        # One row per (job, frame), the latest event's: one statement may not touch a row twice.
        rows: dict[tuple[str, int], tuple[str, int, str, int, str, int, str, str, datetime]] = {}
        for rec in events:
            e = rec.decode()
            assert isinstance(e, JobFramesRendered)
            for f in e.frames:
                rows[(e.job_id, f.frame)] = (
                    e.job_id,
                    f.frame,
                    e.render_id,
                    e.task_id,
                    f.path,
                    f.size_bytes,
                    f.sha256,
                    e.worker,
                    e.at,
                )
        if not rows:
            return
        columns = list(zip(*rows.values(), strict=True))
        await conn.execute(
            """
            INSERT INTO job.frames (job_id, frame, render_id, task_id, path, size_bytes, sha256,
                                    worker, rendered_at)
            SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[],
                                 $6::bigint[], $7::text[], $8::text[], $9::timestamptz[])
            ON CONFLICT (job_id, frame) DO UPDATE SET render_id = EXCLUDED.render_id,
                task_id = EXCLUDED.task_id, path = EXCLUDED.path,
                size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256,
                worker = EXCLUDED.worker, rendered_at = EXCLUDED.rendered_at
            """,
            *columns,
        )
