"""Numbered SQL migrations per service schema.

Each folder holds ``NNNN_<what>.sql`` files; ``{schema}`` in them is replaced by the schema
they are applied to (no file names a schema itself). A schema gets the event store's own
migrations (:data:`EVENT_STORE`, track ``eventstore``) and then its service's (track = the
service's name). :func:`migrate` applies those not yet applied, in order, each in its own
transaction, under a PostgreSQL advisory lock per schema (replicas that start together wait
for each other), and records them in ``<schema>.schema_migrations``. An applied migration
whose file has changed since is refused: add a new file instead of editing an old one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from libs.logging import get_logger

if TYPE_CHECKING:
    from libs.service import Service

log = get_logger(__name__)

#: The event store's tables (events, snapshots, checkpoints, processed_commands, inbox,
#: quarantine), applied to every schema first.
EVENT_STORE = Path(__file__).parent / "eventstore" / "migrations"

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk do not match what the database has applied."""


@dataclass(frozen=True)
class Migration:
    track: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.track}/{self.version:04d}_{self.name}"

    def for_schema(self, schema: str) -> str:
        return self.sql.replace("{schema}", schema)


def load(track: str, folder: Path) -> list[Migration]:
    """The migrations of one folder, in order; refuses stray or duplicate numbers."""
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: migration files are named NNNN_<what>.sql")
        found.append(Migration(track, int(m[1]), m[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a number")
    return found


def plan(service: tuple[str, Path] | None = None) -> list[Migration]:
    """The event store's migrations, then the service's (``(track, folder)``)."""
    out = load("eventstore", EVENT_STORE)
    if service is not None:
        out += load(*service)
    return out


def service_plan(service: Service) -> list[Migration]:
    """What a declared service's schema needs: the event store's migrations, then its own."""
    return plan((service.name, service.migrations) if service.migrations else None)


def declared_plan(schema: str) -> list[Migration]:
    """The plan of the service declared with ``schema`` (:func:`libs.service.declared`);
    just the event store's for a schema no service declares."""
    from libs.service import by_schema, declared

    service = by_schema(declared()).get(schema)
    return plan() if service is None else service_plan(service)


def lock_key(schema: str) -> str:
    return f"migrate:{schema}"


async def migrate(
    pool: asyncpg.Pool | asyncpg.Connection, schema: str, migrations: Sequence[Migration]
) -> list[str]:
    """Apply what is not yet applied; returns the labels applied now."""
    if not schema.isidentifier():
        raise ValueError(f"bad schema name {schema!r}")
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await migrate(conn, schema, migrations)
    conn = pool
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key(schema))
    try:
        await conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {schema};"
            f" CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " track text NOT NULL, version integer NOT NULL, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (track, version))"
        )
        rows = await conn.fetch(
            f"SELECT track, version, name, checksum FROM {schema}.schema_migrations"
        )
        applied = {(r["track"], r["version"]): r for r in rows}
        for m in migrations:
            done = applied.get((m.track, m.version))
            if done is not None and done["checksum"] != m.checksum:
                raise MigrationError(
                    f"{schema}: migration {m.label} was changed after it was applied"
                    f" (checksum {done['checksum'][:12]} in the database, {m.checksum[:12]}"
                    " on disk); restore it and add a new migration instead"
                )
        ran: list[str] = []
        for m in migrations:
            if (m.track, m.version) in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.for_schema(schema))
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (track, version, name, checksum)"
                    " VALUES ($1, $2, $3, $4)",
                    m.track,
                    m.version,
                    m.name,
                    m.checksum,
                )
            log.info("migration_applied", schema=schema, migration=m.label)
            ran.append(m.label)
        return ran
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key(schema))
