"""Numbered migrations: applied once, in order, under a lock; an edited one is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from libs.migrations import MigrationError, migrate, plan


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "0001_things.sql").write_text(
        "CREATE TABLE {schema}.things (id text PRIMARY KEY);\n"
        "CREATE INDEX things_id ON {schema}.things (id);\n"
    )
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE {schema}.things ADD COLUMN n int;\n")
    return tmp_path


async def applied(pool: asyncpg.Pool, schema: str) -> list[tuple[str, int, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT track, version, name FROM {schema}.schema_migrations ORDER BY applied_at"
        )
    return [(r["track"], r["version"], r["name"]) for r in rows]


async def test_a_fresh_schema_migrates_in_order_and_a_second_run_applies_nothing(
    pool: asyncpg.Pool, folder: Path
) -> None:
    steps = plan(("svc", folder))
    assert await migrate(pool, "mig", steps) == [
        "eventstore/0001_event_store",
        "eventstore/0002_process_state",
        "svc/0001_things",
        "svc/0002_more",
    ]
    assert await applied(pool, "mig") == [
        ("eventstore", 1, "event_store"),
        ("eventstore", 2, "process_state"),
        ("svc", 1, "things"),
        ("svc", 2, "more"),
    ]
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO mig.things (id, n) VALUES ('a', 1)")
        assert await conn.fetchval("SELECT count(*) FROM mig.quarantine") == 0
    assert await migrate(pool, "mig", plan(("svc", folder))) == []
    (folder / "0003_later.sql").write_text("ALTER TABLE {schema}.things ADD COLUMN m int;\n")
    assert await migrate(pool, "mig", plan(("svc", folder))) == ["svc/0003_later"]


async def test_two_runners_at_once_apply_each_migration_once(
    pool: asyncpg.Pool, folder: Path
) -> None:
    steps = plan(("svc", folder))
    async with pool.acquire() as a, pool.acquire() as b:
        first, second = await asyncio.gather(migrate(a, "twice", steps), migrate(b, "twice", steps))
    assert sorted([*first, *second]) == [m.label for m in steps]
    assert len(await applied(pool, "twice")) == len(steps) == 4


async def test_an_applied_migration_that_was_edited_is_refused(
    pool: asyncpg.Pool, folder: Path
) -> None:
    await migrate(pool, "edited", plan(("svc", folder)))
    (folder / "0001_things.sql").write_text("CREATE TABLE {schema}.things (id int);\n")
    (folder / "0003_later.sql").write_text("CREATE TABLE {schema}.later (id int);\n")
    with pytest.raises(MigrationError, match=r"svc/0001_things was changed after it was applied"):
        await migrate(pool, "edited", plan(("svc", folder)))
    async with pool.acquire() as conn:  # nothing after it ran either
        assert await conn.fetchval("SELECT to_regclass('edited.later')") is None


async def test_migration_files_must_be_numbered(pool: asyncpg.Pool, tmp_path: Path) -> None:
    (tmp_path / "things.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_<what>\.sql"):
        plan(("svc", tmp_path))
