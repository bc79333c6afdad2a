"""Per-user quotas: open sessions, open asset sessions, bytes in flight, the largest file."""

from __future__ import annotations

import os

import httpx
import pytest

from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.upload.protocol import MiB, Uploader


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    return env.settings(
        UploadSettings,
        upload_min_part_bytes=5 * MiB,
        upload_max_open_sessions=2,
        upload_max_open_asset_sessions=3,
        upload_max_bytes=20 * MiB,
        upload_max_bytes_in_flight=30 * MiB,
    )


def declared(size: int, name: str = "shot.blend") -> dict[str, object]:
    return {"file_name": name, "size_bytes": size, "sha256": "0" * 64}


async def test_open_sessions_are_limited_per_user_and_freed_by_completing_or_aborting(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    first = await me.create("a.blend", os.urandom(1024))
    await me.create("b.blend", os.urandom(1024))
    r = await upload_api.post("/v1/uploads", json=declared(1024), headers=me.headers)
    assert r.status_code == 409
    assert r.json()["code"] == "upload_session_limit_reached"
    assert r.json()["details"] == {"kind": "scene", "current": 2, "limit": 2}
    other = await upload_api.post("/v1/uploads", json=declared(1024), headers=users.new())
    assert other.status_code == 201  # the limit is per user

    assert (await me.abort(first["upload_id"])).status_code == 200
    assert (await me.upload("c.blend", os.urandom(1024)))["status"] == "completed"
    assert (
        await upload_api.post("/v1/uploads", json=declared(1), headers=me.headers)
    ).status_code == 201


async def test_bytes_in_flight_are_limited_and_a_file_over_the_limit_is_refused(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    assert (
        await upload_api.post("/v1/uploads", json=declared(20 * MiB), headers=me)
    ).status_code == 201
    r = await upload_api.post("/v1/uploads", json=declared(10 * MiB + 1), headers=me)
    assert r.status_code == 409
    assert r.json()["code"] == "upload_bytes_limit_reached"
    assert r.json()["details"] == {
        "current_bytes": 20 * MiB,
        "requested_bytes": 10 * MiB + 1,
        "limit_bytes": 30 * MiB,
    }
    assert (
        await upload_api.post("/v1/uploads", json=declared(10 * MiB), headers=me)
    ).status_code == 201
    too_big = await upload_api.post("/v1/uploads", json=declared(20 * MiB + 1), headers=users.new())
    assert too_big.status_code == 422
    assert too_big.json()["code"] == "upload_too_large"
    assert too_big.json()["details"] == {"size_bytes": 20 * MiB + 1, "max_bytes": 20 * MiB}


async def test_a_manifest_lacking_more_files_than_the_asset_quota_is_refused_whole(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    files = [{"path": f"tex/{i}.png", "size_bytes": 10, "sha256": f"{i:064x}"} for i in range(4)]
    r = await upload_api.post(
        "/v1/manifests", json={"main_file": "tex/0.png", "files": files}, headers=me
    )
    assert r.status_code == 409
    assert r.json()["code"] == "upload_session_limit_reached"
    assert r.json()["details"] == {"kind": "asset", "current": 0, "limit": 3}
    listed = (await upload_api.get("/v1/uploads", headers=me)).json()
    assert listed["items"] == []  # nothing was opened
    ok = await upload_api.post(
        "/v1/manifests", json={"main_file": "tex/0.png", "files": files[:3]}, headers=me
    )
    assert ok.status_code == 201 and len(ok.json()["missing"]) == 3
