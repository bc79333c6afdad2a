"""A multi-GB upload with the production part plan (64 MiB parts), interrupted half-way,
resumed from what the store holds, completed. The file is sparse and read part by part."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.s3 import S3Client, S3Settings
from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.upload.protocol import MiB, Uploader, put_part

SIZE = 2 * 1024 * MiB
PART = 64 * MiB


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    return env.settings(UploadSettings)  # the production plan: parts of 64 MiB


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 2 GiB sparse file whose parts differ (a few random bytes at the start of each)."""
    path = tmp_path / "city_block.blend"
    with path.open("wb") as f:
        f.truncate(SIZE)
        for offset in range(0, SIZE, PART):
            f.seek(offset)
            f.write(os.urandom(4096))
    return path


def read_part(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek((n - 1) * PART)
        return f.read(PART)


def part_sha256(path: Path, n: int) -> str:
    return hashlib.sha256(read_part(path, n)).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def send_parts(urls: dict[int, Any], path: Path, numbers: list[int]) -> list[int]:
    """PUT these parts, a few at a time (as a client does); the numbers sent."""
    gate, sent = asyncio.Semaphore(3), []

    async def send(n: int) -> None:
        async with gate:
            assert await put_part(urls[n], await asyncio.to_thread(read_part, path, n)) == 200
            sent.append(n)

    await asyncio.gather(*(send(n) for n in numbers))
    return sorted(sent)


class Interrupted(Exception):
    pass


async def half_then_fail(body: bytes) -> AsyncIterator[bytes]:
    """A part's body that stops half-way, as when the network or the client dies."""
    yield body[: len(body) // 2]
    raise Interrupted


@pytest.mark.large
async def test_a_2_gib_upload_interrupted_half_way_resumes_from_the_store_and_completes(
    upload_api: httpx.AsyncClient,
    users: Users,
    scene: Path,
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    whole, *hashes = await asyncio.gather(
        asyncio.to_thread(file_sha256, scene),
        *(asyncio.to_thread(part_sha256, scene, n) for n in range(1, SIZE // PART + 1)),
    )
    part_sha = dict(enumerate(hashes, start=1))
    me = Uploader(upload_api, users.new())
    r = await upload_api.post(
        "/v1/uploads",
        json={"file_name": scene.name, "size_bytes": SIZE, "sha256": whole},
        headers=me.headers,
    )
    assert r.status_code == 201, r.text
    session = r.json()
    upload_id = session["upload_id"]
    assert (session["part_size_bytes"], session["part_count"]) == (PART, 32)

    async def urls(numbers: list[int]) -> dict[int, Any]:
        r = await upload_api.post(
            f"/v1/uploads/{upload_id}/part-urls",
            json={"parts": [{"part_number": n, "sha256": part_sha[n]} for n in numbers]},
            headers=me.headers,
        )
        assert r.status_code == 200, r.text
        return {u["part_number"]: u for u in r.json()["urls"]}

    # The first half goes through; part 17 is cut off mid-body; then the client stops.
    first = await urls(list(range(1, 18)))
    assert await send_parts(first, scene, list(range(1, 17))) == list(range(1, 17))
    async with httpx.AsyncClient(timeout=60) as store:
        with pytest.raises(Interrupted):
            await store.put(
                first[17]["url"],
                content=half_then_fail(read_part(scene, 17)),
                headers=first[17]["headers"],
            )

    # Resuming: ask the store (through the API) what it holds, send only the rest.
    held = await me.stored_parts(upload_id, limit=10)  # paginated
    assert [p["part_number"] for p in held] == list(range(1, 17))
    assert all(p["size_bytes"] == PART and p["sha256"] == part_sha[p["part_number"]] for p in held)
    progress = await me.get(upload_id)
    assert (progress["parts_confirmed"], progress["bytes_confirmed"]) == (16, 16 * PART)
    assert progress["progress_percent"] == 50
    missing = [n for n in range(1, 33) if n not in {p["part_number"] for p in held}]
    assert missing == list(range(17, 33))
    sent = await send_parts(await urls(missing), scene, missing)
    assert sent == list(range(17, 33))  # nothing sent twice

    r = await me.complete(upload_id)
    assert r.status_code == 200, r.text
    # Joining 2 GiB takes the store a while: the answer may come before it is done.
    assert r.json()["status"] in ("completing", "completed")
    assert r.json()["bytes_confirmed"] == SIZE and r.json()["allowed_actions"] == []
    deadline = time.monotonic() + 120
    while (await me.get(upload_id))["status"] == "completing":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    assert (await me.get(upload_id))["status"] == "completed"
    listed = await s3.list_objects_v2(Bucket=s3_settings.s3_scenes_bucket, Prefix="uploads/")
    [obj] = listed["Contents"]
    assert obj["Size"] == SIZE and obj["Key"].endswith(f"/{upload_id}/city_block.blend")
