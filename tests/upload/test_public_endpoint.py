"""Part URLs name the store as clients reach it (``s3_public_endpoint_url``), which may differ
from the address the service uses: the host is part of the signature."""

from __future__ import annotations

import os

import httpx
import pytest

from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.upload.protocol import MiB, Uploader, cut, put_part


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    internal = env["RF_S3_ENDPOINT_URL"]
    return env.settings(
        UploadSettings,
        upload_min_part_bytes=5 * MiB,
        s3_public_endpoint_url=internal.replace("127.0.0.1", "localhost"),
    )


async def test_part_urls_are_signed_for_the_public_address_and_work_there(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    data = os.urandom(1000)
    session = await me.create("shot.blend", data)
    parts = cut(data, session["part_size_bytes"])
    [url] = (await me.part_urls(session["upload_id"], parts)).values()
    assert url["url"].startswith("http://localhost:")
    assert await put_part(url, parts[1]) == 200
    r = await me.complete(session["upload_id"])
    assert r.status_code == 200 and r.json()["status"] == "completed"
