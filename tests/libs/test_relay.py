"""The relay's redaction fails closed: private fields are masked, unknown types' data withheld."""

from __future__ import annotations

import uuid

import orjson
from nats.aio.client import Client

from contracts.base import REDACTED, Event, EventRegistry
from libs.bus.nats import event_subject
from libs.bus.relay import WITHHELD_HEADER, WITHHELD_UNKNOWN_TYPE, Relay
from libs.config import BaseServiceSettings
from libs.eventstore.store import EventStore, NewEvent
from tests.libs.conftest import FrameRendered

SECRET = "argon2id$v=19$m=65536$c2VjcmV0LXNhbHQ$the-private-hash"


class KeyIssued(Event):
    """An event with a private field, known to the writer's registry only."""

    event_type = "test.KeyIssued"
    private_fields = frozenset({"key_hash"})
    owner: str
    key_hash: str


class KeyRotated(Event):
    event_type = "test.KeyRotated"
    private_fields = frozenset({"key_hash"})
    owner: str
    key_hash: str


writer = EventRegistry()
writer.register(KeyIssued)
writer.register(KeyRotated)
writer.register(FrameRendered)
#: What the relay knows: KeyRotated and FrameRendered, not KeyIssued.
relay_registry = EventRegistry()
relay_registry.register(KeyRotated)
relay_registry.register(FrameRendered)


async def last_message(
    nc: Client, settings: BaseServiceSettings, event_type: str
) -> tuple[bytes, dict[str, str]]:
    msg = await nc.jetstream().get_last_msg(
        settings.events_stream, event_subject(settings, event_type)
    )
    return msg.data or b"", dict(msg.headers or {})


async def test_an_unknown_event_type_is_published_without_its_data(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    own = EventStore(store.pool, store.schema, writer)
    await own.append("key-1", [NewEvent(KeyIssued(owner="usr_1", key_hash=SECRET))], 0)
    # Also a row that no registry knows, written straight into the table.
    await own.append("key-2", [NewEvent(KeyRotated(owner="usr_2", key_hash=SECRET))], 0)
    async with store.pool.acquire() as conn:
        await conn.execute(
            f"UPDATE {store.schema}.events SET type = 'test.NobodyKnows' WHERE stream_id = 'key-2'"
        )
    relay = Relay(own, nc.jetstream(), settings, registry=relay_registry)
    await relay.catch_up()
    assert (relay.published, relay.withheld) == (2, 2)

    for event_type, stream in (("test.KeyIssued", "key-1"), ("test.NobodyKnows", "key-2")):
        data, headers = await last_message(nc, settings, event_type)
        assert SECRET.encode() not in data and b"usr_" not in data  # no field at all
        body = orjson.loads(data)
        assert body["data"] == {}
        assert body["metadata"]["data_withheld"] == WITHHELD_UNKNOWN_TYPE
        assert headers[WITHHELD_HEADER] == WITHHELD_UNKNOWN_TYPE
        assert (body["type"], body["stream_id"], body["version"]) == (event_type, stream, 1)
        uuid.UUID(body["event_id"])


async def test_a_known_event_is_published_with_its_private_fields_masked(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    own = EventStore(store.pool, store.schema, writer)
    await own.append("key-3", [NewEvent(KeyRotated(owner="usr_3", key_hash=SECRET))], 0)
    await own.append("job-3", [NewEvent(FrameRendered(frame=7))], 0)
    relay = Relay(own, nc.jetstream(), settings, registry=relay_registry)
    await relay.catch_up()
    assert (relay.published, relay.withheld) == (2, 0)

    data, headers = await last_message(nc, settings, "test.KeyRotated")
    assert SECRET.encode() not in data
    body = orjson.loads(data)
    assert body["data"] == {"owner": "usr_3", "key_hash": REDACTED}
    assert "data_withheld" not in body["metadata"] and WITHHELD_HEADER not in headers
    data, _ = await last_message(nc, settings, "test.FrameRendered")
    assert orjson.loads(data)["data"] == {"frame": 7}


async def test_the_relay_uses_the_stores_registry_by_default(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    own = EventStore(store.pool, store.schema, writer)
    await own.append("key-4", [NewEvent(KeyIssued(owner="usr_4", key_hash=SECRET))], 0)
    relay = Relay(own, nc.jetstream(), settings)
    await relay.catch_up()
    assert relay.withheld == 0
    data, _ = await last_message(nc, settings, "test.KeyIssued")
    assert orjson.loads(data)["data"] == {"owner": "usr_4", "key_hash": REDACTED}
