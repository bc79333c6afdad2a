"""Queries on the upload service's outputs read model, ``<schema>.outputs``: every rendered
frame and archive of a job in the outputs bucket, with its size, SHA-256 and retention.

Owned by the upload service (``services/upload``). A change to the columns these queries
read, in ``services/upload/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/contracts/test_output_queries.py`` pins the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts.outputs import OutputKind, OutputStatus
from libs.readmodels import check_schema

#: The schema the upload service owns (its ``Service.schema``).
SCHEMA = "upload"

_COLUMNS = (
    "output_id, job_id, owner_id, kind, frame, status, object_key, file_name, size_bytes,"
    " sha256, stored_at, expires_at, deleted_at"
)


@dataclass(frozen=True, slots=True)
class JobOutput:
    output_id: str
    job_id: str
    owner_id: str
    kind: OutputKind
    #: None for the archive.
    frame: int | None
    status: OutputStatus
    object_key: str
    file_name: str
    #: None while an archive is being built (or if building it failed).
    size_bytes: int | None
    sha256: str | None
    stored_at: datetime | None
    #: None while the job runs.
    expires_at: datetime | None
    deleted_at: datetime | None


def _output(r: asyncpg.Record) -> JobOutput:
    return JobOutput(
        **{**dict(r), "kind": OutputKind(r["kind"]), "status": OutputStatus(r["status"])}
    )


class OutputsQuery:
    """Read-only access to the upload service's outputs."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        # One statement, so the frames and the archive are of one moment.
        self._page_sql = (
            f"SELECT * FROM ((SELECT {_COLUMNS} FROM {s}.outputs WHERE job_id = $1"
            " AND kind = 'frame' AND output_id > $2 ORDER BY output_id LIMIT $3)"
            f" UNION ALL (SELECT {_COLUMNS} FROM {s}.outputs"
            " WHERE job_id = $1 AND kind = 'archive')) page ORDER BY kind = 'archive', output_id"
        )
        self._output_sql = f"SELECT {_COLUMNS} FROM {s}.outputs WHERE output_id = $1"
        self._own_output_sql = self._output_sql + " AND owner_id = $2"

    async def page(
        self, job_id: str, after_output_id: str, limit: int
    ) -> tuple[list[JobOutput], JobOutput | None]:
        """The job's frame outputs with ids above ``after_output_id`` (``""`` for the first
        page), by output id (render kind, then frame number), and its archive if any."""
        rows = [
            _output(r)
            for r in await self.pool.fetch(self._page_sql, job_id, after_output_id, limit)
        ]
        frames = [o for o in rows if o.kind is OutputKind.frame]
        archive = next((o for o in rows if o.kind is OutputKind.archive), None)
        return frames, archive

    async def output(self, output_id: str, owner_id: str | None = None) -> JobOutput | None:
        """One output; with ``owner_id``, only if it is that user's."""
        if owner_id is None:
            row = await self.pool.fetchrow(self._output_sql, output_id)
        else:
            row = await self.pool.fetchrow(self._own_output_sql, output_id, owner_id)
        return None if row is None else _output(row)
