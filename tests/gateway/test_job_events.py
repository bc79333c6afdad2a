"""A job's history is served in the current schema of each event type, secrets masked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from contracts.base import EVENTS
from libs.runtime import ServiceRuntime, build
from services.gateway.service import SERVICE
from services.gateway.settings import GatewaySettings
from tests.contracts.upcasting import insert_v1_note, register_note, served_note
from tests.fixtures import Scenes, Users


@pytest.fixture
async def client(
    gateway_settings: GatewaySettings, job_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway that knows job.NoteAdded, which exists only in these tests: at version 2,
    with an upcaster from version 1."""
    registry = EVENTS.copy()
    register_note(registry)
    rt = await build(SERVICE, gateway_settings, registry)
    await rt.launch()
    transport = httpx.ASGITransport(app=rt.wired.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
    await rt.stop()


async def test_an_event_stored_in_an_older_schema_is_served_upcast_and_masked(
    client: httpx.AsyncClient, users: Users, scenes: Scenes, job_service: ServiceRuntime[Any]
) -> None:
    me = users.new()
    r = await client.post("/v1/jobs", json=await scenes.spec(me), headers=me)
    assert r.status_code == 201, r.text
    job = r.json()
    await insert_v1_note(job_service.pool, job["job_id"], job["version"] + 1, "usr_x")

    r = await client.get(f"/v1/jobs/{job['job_id']}/events", headers=me)
    assert r.status_code == 200, r.text
    submitted, note = r.json()["items"]
    assert (submitted["type"], submitted["schema_version"]) == ("job.JobSubmitted", 2)
    assert note["type"] == "job.NoteAdded" and note["version"] == job["version"] + 1
    assert note["schema_version"] == 2  # the current version, not the stored 1
    assert note["data"] == served_note(job["job_id"])  # v2 shape, token_hash masked
    assert note["actor_id"] == "usr_x"
