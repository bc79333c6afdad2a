"""The upload service's outputs as the gateway reads them (libs/readmodels/outputs.py, ADR
0007): the service's real projection over real job events, read back only through
:class:`OutputsQuery` on a read-only pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from contracts.outputs import OutputKind, OutputStatus
from libs.readmodels import outputs as output_queries
from libs.readmodels import read_only_pool
from libs.readmodels.outputs import OutputsQuery
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.upload.service import SERVICE
from tests.fixtures import StartUpload
from tests.upload.rendering import frame_bytes, render
from tests.waiting import until


@pytest.fixture
async def read_pool(job_service: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(job_service.settings.database_url, max_size=2)
    yield pool
    await pool.close()


def test_the_module_reads_the_schema_the_upload_service_owns() -> None:
    assert SERVICE.schema == output_queries.SCHEMA


async def test_outputs_are_read_by_page_with_the_archive_and_by_owner(
    job_service: ServiceRuntime[Any],
    start_upload: StartUpload,
    s3: S3Client,
    s3_settings: S3Settings,
    read_pool: asyncpg.Pool,
) -> None:
    await start_upload()
    outputs = OutputsQuery(read_pool, SERVICE.schema)
    frames = {n: frame_bytes(n) for n in range(1, 6)}
    job_id = await render(job_service, s3, s3_settings.s3_outputs_bucket, "usr_a", frames)

    async def archived() -> bool:
        _, archive = await outputs.page(job_id, "", 1)
        return archive is not None and archive.status is OutputStatus.ready

    await until(archived, "the archive")
    first, archive = await outputs.page(job_id, "", 3)
    rest, _ = await outputs.page(job_id, first[-1].output_id, 3)
    assert [o.frame for o in first + rest] == [1, 2, 3, 4, 5]
    one = first[0]
    assert (one.output_id, one.job_id, one.owner_id, one.kind) == (
        f"{job_id}-full-0000001",
        job_id,
        "usr_a",
        OutputKind.frame,
    )
    assert (one.file_name, one.object_key) == (
        "frame_0001.png",
        f"jobs/usr_a/{job_id}/full/frame_0001.png",
    )
    assert one.size_bytes == len(frames[1]) and one.status is OutputStatus.ready
    assert one.stored_at is not None and one.expires_at is not None and one.deleted_at is None
    assert archive is not None and archive.frame is None and archive.kind is OutputKind.archive
    assert await outputs.output(one.output_id, "usr_a") == one
    assert await outputs.output(one.output_id) == one  # an admin
    assert await outputs.output(one.output_id, "usr_b") is None
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await read_pool.execute("DELETE FROM upload.outputs")
