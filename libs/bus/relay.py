"""Publishes committed events to JetStream in feed order, ``Nats-Msg-Id`` = event id.

No database transaction is open while publishing. A crash between publishing and moving the
checkpoint re-sends the batch; JetStream drops the repeats inside its duplicate window, and
consumers also de-duplicate by event id (the inbox), so repeats are harmless past it too.

Redaction fails closed. A known event goes out with its private fields masked
(:attr:`Event.private_fields`). An event whose type the relay's registry does not know could
carry private fields nobody can name, so its data is **withheld**: it is published with
``data`` = ``{}``, ``metadata.data_withheld`` = :data:`WITHHELD_UNKNOWN_TYPE` and the header
``Es-Data-Withheld``, and logged as an error. Publishing it (rather than holding the relay)
keeps the feed moving and the event's id, stream and version visible on the bus; a consumer
that decodes it fails validation and dead-letters it, where it can be seen. The data itself
stays in the owner's store, from where it can be re-published once the type is registered.
"""

from __future__ import annotations

import asyncio

import orjson
from nats.js import JetStreamContext

from contracts.base import EventRegistry, JsonDict
from libs.bus.nats import event_subject
from libs.config import BaseServiceSettings
from libs.eventstore.processor import Tailer
from libs.eventstore.store import EventStore, RecordedEvent
from libs.logging import get_logger

log = get_logger(__name__)

#: Why an event's data was withheld (``metadata.data_withheld``, header ``Es-Data-Withheld``).
WITHHELD_UNKNOWN_TYPE = "unknown_event_type"
WITHHELD_HEADER = "Es-Data-Withheld"


def public_data(e: RecordedEvent, registry: EventRegistry) -> JsonDict | None:
    """The event's data with its private fields masked; None if its type is unknown."""
    return registry.public_data(e.event_type, e.data)


def wire_body(e: RecordedEvent, data: JsonDict | None) -> bytes:
    """The message body; ``data`` None withholds the event's data (see the module docstring)."""
    metadata = (
        e.metadata if data is not None else {**e.metadata, "data_withheld": WITHHELD_UNKNOWN_TYPE}
    )
    return orjson.dumps(
        {
            "event_id": str(e.event_id),
            "stream_id": e.stream_id,
            "version": e.version,
            "type": e.event_type,
            "schema_version": e.schema_version,
            "position": e.position,
            "recorded_at": e.recorded_at.isoformat(),
            "data": data if data is not None else {},
            "metadata": metadata,
        }
    )


def wire_headers(e: RecordedEvent, withheld: bool = False) -> dict[str, str]:
    headers = {
        "Nats-Msg-Id": str(e.event_id),
        "Es-Stream": e.stream_id,
        "Es-Version": str(e.version),
        "Es-Position": str(e.position),
        "Es-Type": e.event_type,
    }
    if withheld:
        headers[WITHHELD_HEADER] = WITHHELD_UNKNOWN_TYPE
    traceparent = e.metadata.get("traceparent")
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


class Relay(Tailer):
    """The outbox relay of one service's event store.

    ``registry`` names the event types whose data may be published (private fields masked);
    it defaults to the store's.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        settings: BaseServiceSettings,
        *,
        registry: EventRegistry | None = None,
        **kw: object,
    ) -> None:
        super().__init__(store, "nats-relay", poll_interval=0.05, **kw)  # type: ignore[arg-type]
        self.js = js
        self.settings = settings
        self.registry = registry if registry is not None else store.registry
        self.published = 0
        self.duplicates = 0
        #: Events published with their data withheld (unknown type).
        self.withheld = 0

    def message(self, e: RecordedEvent) -> tuple[bytes, dict[str, str]]:
        """Body and headers of ``e`` on the bus, redacted (see the module docstring)."""
        data = public_data(e, self.registry)
        if data is None:
            self.withheld += 1
            log.error(
                "relay_unknown_event_type_withheld",
                event_type=e.event_type,
                event_id=str(e.event_id),
                stream_id=e.stream_id,
                version=e.version,
                schema=self.store.schema,
            )
        return wire_body(e, data), wire_headers(e, withheld=data is None)

    async def process_batch(self, events: list[RecordedEvent]) -> bool:
        futures = []
        for e in events:
            body, headers = self.message(e)
            futures.append(
                await self.js.publish_async(
                    event_subject(self.settings, e.event_type), body, headers=headers
                )
            )
        acks = await asyncio.gather(*futures)
        self.published += len(acks)
        self.duplicates += sum(1 for a in acks if a.duplicate)
        async with self.store.pool.acquire() as conn:
            return await self.store.advance_checkpoint(
                conn, self.name, self.position, events[-1].cursor
            )
