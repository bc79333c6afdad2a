"""Queries on every service's quarantine table (``<schema>.quarantine``, the event store's
own, ``libs/eventstore/migrations``): the streams a projection could not apply.

Owned by the event store kit (``libs/eventstore/projection.py`` writes the table); a change
to its columns changes this module in the same commit
(``tests/contracts/test_quarantine_queries.py``). Retrying a stream is the owning service's
(``libs/operations.py``): only it runs the projection's rules.
"""

from __future__ import annotations

import asyncpg

from contracts.operations import QuarantinedStream
from libs.readmodels import check_schema

_SCHEMAS_SQL = (
    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'quarantine'"
    " ORDER BY table_schema"
)


class QuarantineQuery:
    """Read-only access to the services' quarantine tables, every schema that has one."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def _streams_sql(self, schema: str) -> str:
        s = check_schema(schema)
        # Per stream: how many events are held, and the failing one (error not null; the
        # rest wait behind it with a null error).
        return (
            f"SELECT '{s}' AS schema_name, q.projection, q.stream_id, q.events,"
            " f.event_type, f.version, f.error, f.quarantined_at"
            f" FROM (SELECT projection, stream_id, count(*) AS events FROM {s}.quarantine"
            "       GROUP BY projection, stream_id) q"
            " CROSS JOIN LATERAL (SELECT event_type, version, coalesce(error, '') AS error,"
            f"       quarantined_at FROM {s}.quarantine f WHERE f.projection = q.projection"
            "       AND f.stream_id = q.stream_id ORDER BY (f.error IS NULL), f.version LIMIT 1) f"
        )

    async def streams(self, schema: str | None = None) -> list[QuarantinedStream]:
        """Every quarantined stream (optionally of one schema), by schema, projection and
        stream."""
        async with self.pool.acquire() as conn:
            schemas = [r[0] for r in await conn.fetch(_SCHEMAS_SQL)]
            if schema is not None:
                schemas = [s for s in schemas if s == schema]
            if not schemas:
                return []
            sql = " UNION ALL ".join(f"({self._streams_sql(s)})" for s in schemas)
            rows = await conn.fetch(sql + " ORDER BY 1, 2, 3")
        return [QuarantinedStream.model_validate(dict(r)) for r in rows]
