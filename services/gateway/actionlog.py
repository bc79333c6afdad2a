"""The action log: a row per API call in ``<schema>.action_log``, written in batches.

Calls are queued in memory and inserted every ``flush_interval`` seconds (or sooner when
``batch_size`` are waiting), one multi-row ``INSERT ... SELECT FROM unnest(...)`` per batch,
into a table partitioned by day (migration ``0001_action_log.sql``). The flusher creates the
partitions of today and the next two days ahead (and of any day a record names), and drops
those older than ``retention_days``. A graceful stop flushes everything (the runtime stops
the HTTP server first, then this task); a crash loses at most the calls of the last flush
interval plus a batch being written (0.2 s of calls by default). While the database is
unreachable, up to ``max_pending`` calls wait in memory; beyond that the oldest are dropped
(and counted in ``dropped``, logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg
import orjson

from contracts.gateway import ApiCall
from libs.logging import get_logger
from libs.readmodels import check_schema

log = get_logger(__name__)

_COLUMNS = (
    "at, request_id, operation_id, method, path, user_id, api_key_id, target_ids,"
    " status_code, outcome, error_code, latency_ms, trace_id, client_ip"
)
_TYPES = (
    "timestamptz[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "int4[]",
    "text[]",
    "text[]",
    "float8[]",
    "text[]",
    "text[]",
)
#: How often partitions are created ahead and old ones dropped.
MAINTENANCE_SECONDS = 3600.0
DAYS_AHEAD = 2


def partition_name(day: date) -> str:
    return f"action_log_p{day:%Y%m%d}"


class ActionLog:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        flush_interval: float = 0.2,
        batch_size: int = 1000,
        retention_days: int = 90,
        max_pending: int = 100_000,
    ) -> None:
        self.pool = pool
        self.schema = s = check_schema(schema)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention_days = retention_days
        self.max_pending = max_pending
        self._pending: list[ApiCall] = []
        self._full = asyncio.Event()
        # One flush at a time: a flush that returns has seen every earlier record stored,
        # even one a concurrent flush had already taken.
        self._flushing = asyncio.Lock()
        self._days: set[date] = set()
        self._maintained = 0.0
        self.written = 0
        self.dropped = 0
        args = ", ".join(f"${i + 1}::{t}" for i, t in enumerate(_TYPES))
        self._insert_sql = (
            f"INSERT INTO {s}.action_log ({_COLUMNS})"
            f" SELECT at, request_id, operation_id, method, path, user_id, api_key_id,"
            f" target_ids::jsonb, status_code, outcome, error_code, latency_ms, trace_id,"
            f" client_ip FROM unnest({args}) AS u({_COLUMNS}) ON CONFLICT DO NOTHING"
        )
        self._select_sql = (
            f"SELECT {_COLUMNS} FROM {s}.action_log"
            " WHERE ($1::text IS NULL OR user_id = $1)"
            " AND ($2::timestamptz IS NULL OR (at, request_id) < ($2, $3))"
            " ORDER BY at DESC, request_id DESC LIMIT $4"
        )

    # -- writing ------------------------------------------------------------------------

    def record(self, call: ApiCall) -> None:
        self._pending.append(call)
        n = len(self._pending)
        if n >= self.batch_size:
            self._full.set()
            if n > self.max_pending:
                over = n - self.max_pending
                del self._pending[:over]
                self.dropped += over
                log.error("action_log_overflow", dropped=over, kept=self.max_pending)

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self.batch_size],
                self._pending[self.batch_size :],
            )
            try:
                await self._ensure_days({c.at.date() for c in batch})
                self.written += await self._insert(batch)
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as e:
                # Keep serving; the records are retried on the next flush.
                log.error("action_log_flush_failed", error=repr(e), pending=len(batch))
                self._pending[:0] = batch
                return
            except asyncpg.PostgresError as e:  # a record the table refuses: store the rest
                log.error("action_log_batch_refused", error=repr(e), pending=len(batch))
                await self._one_by_one(batch)

    async def _insert(self, batch: list[ApiCall]) -> int:
        rows = [
            (
                c.at,
                c.request_id,
                c.operation_id,
                c.method,
                c.path,
                c.user_id,
                c.api_key_id,
                orjson.dumps(c.target_ids).decode(),
                c.status_code,
                c.outcome.value,
                c.error_code,
                c.latency_ms,
                c.trace_id,
                c.client_ip,
            )
            for c in batch
        ]
        columns = [list(col) for col in zip(*rows, strict=True)]
        status = await self.pool.execute(self._insert_sql, *columns)
        return int(status.rsplit(" ", 1)[1])

    async def _one_by_one(self, batch: list[ApiCall]) -> None:
        for call in batch:
            try:
                self.written += await self._insert([call])
            except asyncpg.PostgresError as e:
                self.dropped += 1
                log.error("action_log_record_dropped", request_id=call.request_id, error=repr(e))

    # -- partitions ---------------------------------------------------------------------

    async def _ensure_days(self, days: set[date]) -> None:
        missing = days - self._days
        if not missing:
            return
        s = self.schema
        async with self.pool.acquire() as conn, conn.transaction():
            # Replicas create the same partitions: one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{s}.action_log")
            for day in sorted(missing):
                nxt = day + timedelta(days=1)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {s}.{partition_name(day)} PARTITION OF"
                    f" {s}.action_log FOR VALUES FROM ('{day.isoformat()} 00:00+00')"
                    f" TO ('{nxt.isoformat()} 00:00+00')"
                )
        self._days |= missing

    async def partitions(self) -> list[date]:
        """The days that have a partition, oldest first."""
        rows = await self.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " JOIN pg_namespace n ON n.oid = p.relnamespace"
            " WHERE n.nspname = $1 AND p.relname = 'action_log'",
            self.schema,
        )
        days = []
        for r in rows:
            with contextlib.suppress(ValueError):
                days.append(datetime.strptime(r["relname"][-8:], "%Y%m%d").date())
        return sorted(days)

    async def maintain(self, today: date | None = None) -> None:
        """Create today's partition and those ahead; drop those past the retention."""
        today = today or datetime.now(UTC).date()
        await self._ensure_days({today + timedelta(days=i) for i in range(DAYS_AHEAD + 1)})
        oldest_kept = today - timedelta(days=self.retention_days)
        for day in await self.partitions():
            if day < oldest_kept:
                await self.pool.execute(f"DROP TABLE IF EXISTS {self.schema}.{partition_name(day)}")
                self._days.discard(day)
                log.info("action_log_partition_dropped", day=day.isoformat())
        self._maintained = time.monotonic()

    async def run(self, stopping: asyncio.Event) -> None:
        await self.maintain()
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_interval)
            self._full.clear()
            await self.flush()
            if time.monotonic() - self._maintained > MAINTENANCE_SECONDS:
                await self.maintain()
        await self.flush()

    # -- reading (admins) ---------------------------------------------------------------

    async def calls(
        self,
        user_id: str | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[ApiCall]:
        """Newest first, optionally one user's, before the ``(at, request_id)`` cursor."""
        rows = await self.pool.fetch(
            self._select_sql,
            user_id,
            before[0] if before else None,
            before[1] if before else None,
            limit,
        )
        return [ApiCall.model_validate(dict(r)) for r in rows]
