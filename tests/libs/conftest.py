from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client

from contracts.base import Event, EventRegistry
from libs.bus.nats import connect, ensure_streams
from libs.config import BaseServiceSettings
from libs.eventstore.store import EventStore, create_pool
from tests.conftest import Env

registry = EventRegistry()


@registry.register
class FrameRendered(Event):
    event_type = "test.FrameRendered"
    frame: int


@registry.register
class ChunkRequeued(Event):
    """Version 2 added ``reason``; version 1 events are upcast with a default."""

    event_type = "test.ChunkRequeued"
    schema_version = 2
    chunk: int
    reason: str


@registry.upcaster("test.ChunkRequeued", from_version=1)
def _chunk_requeued_v1_to_v2(data: dict[str, object]) -> dict[str, object]:
    return {**data, "reason": "unknown (recorded before v2)"}


@pytest.fixture
def settings(env: Env) -> BaseServiceSettings:
    return env.settings(BaseServiceSettings, service_name="test")


@pytest.fixture
async def pool(settings: BaseServiceSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> EventStore:
    store = EventStore(pool, "es", registry)
    await store.setup()
    return store


@pytest.fixture
async def nc(settings: BaseServiceSettings) -> AsyncIterator[Client]:
    nc = await connect(settings, "test")
    await ensure_streams(nc.jetstream(), settings)
    yield nc
    await nc.close()
