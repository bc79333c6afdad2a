"""Publishes committed events to JetStream in feed order, ``Nats-Msg-Id`` = event id.

No database transaction is open while publishing. A crash between publishing and moving the
checkpoint re-sends the batch; JetStream drops the repeats inside its duplicate window, and
consumers also de-duplicate by event id (the inbox), so repeats are harmless past it too.
"""

from __future__ import annotations

import asyncio

import orjson
from nats.js import JetStreamContext

from contracts.base import EVENTS, JsonDict
from libs.bus.nats import event_subject
from libs.config import BaseServiceSettings
from libs.eventstore.processor import Tailer
from libs.eventstore.store import EventStore, RecordedEvent


def public_data(e: RecordedEvent) -> JsonDict:
    """The event's data with its private fields masked (they stay in the owner's store)."""
    return EVENTS.public_data(e.event_type, e.data)


def wire_body(e: RecordedEvent) -> bytes:
    return orjson.dumps(
        {
            "event_id": str(e.event_id),
            "stream_id": e.stream_id,
            "version": e.version,
            "type": e.event_type,
            "schema_version": e.schema_version,
            "position": e.position,
            "recorded_at": e.recorded_at.isoformat(),
            "data": public_data(e),
            "metadata": e.metadata,
        }
    )


def wire_headers(e: RecordedEvent) -> dict[str, str]:
    headers = {
        "Nats-Msg-Id": str(e.event_id),
        "Es-Stream": e.stream_id,
        "Es-Version": str(e.version),
        "Es-Position": str(e.position),
        "Es-Type": e.event_type,
    }
    traceparent = e.metadata.get("traceparent")
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


class Relay(Tailer):
    """The outbox relay of one service's event store."""

    def __init__(
        self, store: EventStore, js: JetStreamContext, settings: BaseServiceSettings, **kw: object
    ) -> None:
        super().__init__(store, "nats-relay", poll_interval=0.05, **kw)  # type: ignore[arg-type]
        self.js = js
        self.settings = settings
        self.published = 0
        self.duplicates = 0

    async def process_batch(self, events: list[RecordedEvent]) -> bool:
        futures = [
            await self.js.publish_async(
                event_subject(self.settings, e.event_type),
                wire_body(e),
                headers=wire_headers(e),
            )
            for e in events
        ]
        acks = await asyncio.gather(*futures)
        self.published += len(acks)
        self.duplicates += sum(1 for a in acks if a.duplicate)
        async with self.store.pool.acquire() as conn:
            return await self.store.advance_checkpoint(
                conn, self.name, self.position, events[-1].cursor
            )
