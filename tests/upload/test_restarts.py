"""The upload service killed mid-upload loses nothing: the parts are in the store, the
session in the event store; after a restart the upload resumes and completes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.servers import free_port
from services.gateway.service import Gateway
from tests.conftest import Env
from tests.fixtures import Users
from tests.processes import Process, service
from tests.upload.protocol import MiB, Uploader, cut, put_part

FILE = os.urandom(10 * MiB + 4096)


@pytest.fixture
def upload_process(env: Env, tmp_path: Path) -> Iterator[Process]:
    process = service(
        "upload",
        {
            **os.environ,
            **env,
            "RF_HEALTH_PORT": str(free_port()),
            "RF_UPLOAD_MIN_PART_BYTES": str(5 * MiB),
        },
        tmp_path,
    )
    yield process
    process.kill()


async def test_a_killed_upload_service_loses_nothing_and_the_upload_completes_after_restart(
    gateway: Gateway, users: Users, upload_process: Process
) -> None:
    upload_process.start()
    await upload_process.ready()
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as api:
        me = Uploader(api, users.new())
        session = await me.create("shot.blend", FILE)
        upload_id = session["upload_id"]
        parts = cut(FILE, session["part_size_bytes"])
        urls = await me.part_urls(upload_id, parts)
        for n in (1, 2):
            assert await put_part(urls[n], parts[n]) == 200

        assert upload_process.stop(signal.SIGKILL) == -signal.SIGKILL
        down = await api.get(f"/v1/uploads/{upload_id}", headers=me.headers)
        assert down.status_code == 503 and down.json()["retryable"] is True
        # The store does not need the service: a part URL handed out before still works.
        assert await put_part(urls[3], parts[3]) == 200

        upload_process.start()
        await upload_process.ready()
        held = await me.stored_parts(upload_id)
        assert [p["part_number"] for p in held] == [1, 2, 3]
        r = await me.complete(upload_id)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed" and r.json()["bytes_confirmed"] == len(FILE)
