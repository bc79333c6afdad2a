"""Queries on the job service's read models: ``<schema>.jobs``, ``<schema>.frames`` and the
job streams of its event store ``<schema>.events``.

Owned by the job service (``services/job``). A change to the columns these queries read, in
``services/job/projections.py`` or its migrations, comes with the matching change here in the
same commit; ``tests/contracts/test_job_queries.py`` pins the contract.

Of ``jobs`` only ``job_id, owner_id, status, version, created_at, updated_at, progressed_at,
render_kind, envelope`` are part of the contract; any other column is the job service's own
business.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts.base import EVENTS, EventRegistry, JsonDict, UnknownEventType
from libs.readmodels import check_schema

#: The schema the job service owns (its ``Service.schema``).
SCHEMA = "job"


def stream_id(job_id: str) -> str:
    """The event stream of a job."""
    return f"job-{job_id}"


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """A job's envelope as stored: the exact JSON text clients get (ADR 0004)."""

    job_id: str
    #: The job stream's version the envelope reflects.
    version: int
    envelope: str


#: Statuses a job never leaves.
TERMINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class StuckJob:
    """A job that is not finished and has had no progress event since ``progressed_at``."""

    job_id: str
    owner_id: str
    status: str
    progressed_at: datetime
    envelope: str


@dataclass(frozen=True, slots=True)
class RenderedFrame:
    frame: int
    #: The frame's output (``contracts/outputs.py``); None for frames recorded before
    #: outputs were stored in object storage.
    output_id: str | None
    object_key: str | None
    size_bytes: int
    sha256: str
    worker: str
    rendered_at: datetime
    #: Of the farm task that rendered it (a task renders ``chunk_size`` frames); seconds and
    #: memory are null for frames recorded before they were kept.
    task_id: int
    render_seconds: float | None
    peak_memory_bytes: int | None


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job's history in the **current** schema of its type, private fields
    masked (as on the bus)."""

    version: int
    type: str
    #: The current schema version of ``type`` (the stored one, for a type we do not know).
    schema_version: int
    recorded_at: datetime
    #: Who caused it (``metadata.actor.id``), if recorded.
    actor_id: str | None
    data: JsonDict


class JobsQuery:
    """Read-only access to the job service's read models."""

    def __init__(
        self, pool: asyncpg.Pool, schema: str = SCHEMA, registry: EventRegistry = EVENTS
    ) -> None:
        s = check_schema(schema)
        self.pool = pool
        self.schema = s
        self.registry = registry
        self._envelope_sql = f"SELECT job_id, version, envelope FROM {s}.jobs WHERE job_id = $1"
        self._own_envelope_sql = self._envelope_sql + " AND owner_id = $2"
        self._list_sql = (
            f"SELECT job_id, version, envelope FROM {s}.jobs"
            " WHERE ($1::text IS NULL OR owner_id = $1) AND ($2::text IS NULL OR status = $2)"
            " AND ($3::text IS NULL OR job_id < $3) ORDER BY job_id DESC LIMIT $4"
        )
        self._admin_list_sql = (
            f"SELECT job_id, version, envelope FROM {s}.jobs"
            " WHERE ($1::text IS NULL OR owner_id = $1) AND ($2::text IS NULL OR status = $2)"
            " AND ($3::text[] IS NULL OR render_kind = ANY($3))"
            " AND ($4::timestamptz IS NULL OR created_at < $4)"
            " AND ($5::text IS NULL OR job_id < $5) ORDER BY job_id DESC LIMIT $6"
        )
        self._stuck_sql = (
            f"SELECT job_id, owner_id, status, progressed_at, envelope FROM {s}.jobs"
            f" WHERE status <> ALL($1::text[]) AND progressed_at < $2"
            " ORDER BY progressed_at, job_id LIMIT $3"
        )
        self._frames_sql = (
            "SELECT frame, task_id, output_id, object_key, size_bytes, sha256, worker,"
            " rendered_at, render_seconds, peak_memory_bytes"
            f" FROM {s}.frames"
            " WHERE job_id = $1 AND frame > $2 ORDER BY frame LIMIT $3"
        )
        self._events_sql = (
            f"SELECT version, type, schema_version, data, metadata, recorded_at FROM {s}.events"
            " WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3"
        )

    async def envelope(self, job_id: str, owner_id: str | None = None) -> StoredEnvelope | None:
        """The job's stored envelope; with ``owner_id``, only if the job is that user's."""
        if owner_id is None:
            row = await self.pool.fetchrow(self._envelope_sql, job_id)
        else:
            row = await self.pool.fetchrow(self._own_envelope_sql, job_id, owner_id)
        return None if row is None else StoredEnvelope(row[0], row[1], row[2])

    async def wait_for_envelope(
        self, job_id: str, owner_id: str | None, min_version: int, wait_seconds: float
    ) -> StoredEnvelope | None:
        """The envelope once it reflects at least ``min_version`` (read-your-writes), polling
        for up to ``wait_seconds``; then the last one seen, which may be older (or None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            found = await self.envelope(job_id, owner_id)
            if (found is not None and found.version >= min_version) or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.01)

    async def list_envelopes(
        self,
        owner_id: str | None,
        status: str | None,
        before_job_id: str | None,
        limit: int,
    ) -> list[StoredEnvelope]:
        """Envelopes newest first (job ids sort by creation time), optionally of one owner and
        one status, starting after ``before_job_id``."""
        rows = await self.pool.fetch(self._list_sql, owner_id, status, before_job_id, limit)
        return [StoredEnvelope(r[0], r[1], r[2]) for r in rows]

    async def admin_envelopes(
        self,
        *,
        owner_id: str | None,
        status: str | None,
        render_kinds: list[str] | None,
        created_before: datetime | None,
        before_job_id: str | None,
        limit: int,
    ) -> list[StoredEnvelope]:
        """Every user's envelopes newest first, optionally of one owner, one status, a render
        kind the farm may be busy with (``test``, ``full``; an empty list matches none) and
        created before a time, starting after ``before_job_id``."""
        rows = await self.pool.fetch(
            self._admin_list_sql,
            owner_id,
            status,
            render_kinds,
            created_before,
            before_job_id,
            limit,
        )
        return [StoredEnvelope(r[0], r[1], r[2]) for r in rows]

    async def stuck(self, progressed_before: datetime, limit: int) -> list[StuckJob]:
        """Jobs not finished whose last progress event is older than ``progressed_before``,
        the longest still first."""
        rows = await self.pool.fetch(self._stuck_sql, list(TERMINAL), progressed_before, limit)
        return [StuckJob(**dict(r)) for r in rows]

    async def frames(self, job_id: str, after_frame: int, limit: int) -> list[RenderedFrame]:
        """The job's rendered frames numbered above ``after_frame``, ascending."""
        rows = await self.pool.fetch(self._frames_sql, job_id, after_frame, limit)
        return [RenderedFrame(**dict(r)) for r in rows]

    async def events(self, job_id: str, after_version: int, limit: int) -> list[JobEvent]:
        """The job's events after ``after_version``, oldest first, upcast to the current schema
        of their type through the registry and with private fields masked."""
        rows = await self.pool.fetch(self._events_sql, stream_id(job_id), after_version, limit)
        return [self._current(r) for r in rows]

    def _current(self, r: asyncpg.Record) -> JobEvent:
        event_type, version, data = r["type"], r["schema_version"], r["data"]
        try:
            event = self.registry.decode(event_type, version, data)
        except UnknownEventType:
            pass  # not ours to interpret: its data is withheld below
        else:
            data, version = event.model_dump(mode="json"), event.schema_version
        actor = (r["metadata"] or {}).get("actor") or {}
        return JobEvent(
            version=r["version"],
            type=event_type,
            schema_version=version,
            recorded_at=r["recorded_at"],
            actor_id=actor.get("id"),
            data=self.registry.public_data(event_type, data) or {},
        )
