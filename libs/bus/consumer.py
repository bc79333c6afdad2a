"""Durable pull consumers with bounded redelivery and a dead-letter stream.

A handler that raises is retried with back-off up to ``max_deliver`` times. On the last
failed delivery, or at once for :class:`Poison`, the message is copied to the DLQ stream
(subject ``dlq.<durable>``) with the reason and then terminated. If the process dies during
the last delivery, JetStream's max-deliveries advisory triggers the same copy.
Handlers must be idempotent (see :func:`claim_event`): delivery is at least once.

A consumer may also have a batch handler: each fetched batch is offered to it whole (one
transaction for many events, say); if it raises, nothing of it may have stayed, and every
message of the batch is delivered to the one-event handler as above, so retries, back-off
and dead letters stay per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError as JetStreamAPIError
from opentelemetry import context as otel_context
from opentelemetry import trace

from contracts.base import EVENTS, Event, EventRegistry, JsonDict
from libs.config import BaseServiceSettings
from libs.logging import get_logger
from libs.tracing import extract_context, tracer

log = get_logger(__name__)
_tracer = tracer(__name__)


class Retry(Exception):
    """A transient failure: deliver again after the back-off."""


class Poison(Exception):
    """A message that can never be handled: dead-letter it now."""


@dataclass(frozen=True, slots=True)
class BusEvent:
    event_id: uuid.UUID
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    position: int
    recorded_at: datetime
    data: JsonDict
    metadata: JsonDict
    deliveries: int

    def decode(self, registry: EventRegistry = EVENTS) -> Event:
        return registry.decode(self.event_type, self.schema_version, self.data)

    @classmethod
    def from_msg(cls, msg: Msg) -> BusEvent:
        return cls.parse(msg.data, msg.metadata.num_delivered)

    @classmethod
    def parse(cls, data: bytes, deliveries: int = 0) -> BusEvent:
        """Decode a relayed event; :class:`Poison` if it is not one."""
        try:
            body: dict[str, Any] = orjson.loads(data)
            return cls(
                event_id=uuid.UUID(body["event_id"]),
                stream_id=body["stream_id"],
                version=int(body["version"]),
                event_type=body["type"],
                schema_version=int(body["schema_version"]),
                position=int(body["position"]),
                recorded_at=datetime.fromisoformat(body["recorded_at"]),
                data=body["data"],
                metadata=body["metadata"],
                deliveries=deliveries,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise Poison(f"undecodable event: {e!r}") from e


Handler = Callable[[BusEvent], Awaitable[None]]
#: Handles a whole batch, in order, all or nothing.
BatchHandler = Callable[[Sequence[BusEvent]], Awaitable[None]]


async def claim_event(
    conn: asyncpg.Connection, schema: str, consumer: str, event_id: uuid.UUID
) -> bool:
    """Record that ``consumer`` handled ``event_id``, in the caller's transaction.

    Returns False if it was handled before: skip the effect, the transaction stays harmless.
    """
    return await claim_events(conn, schema, consumer, [event_id])


async def handled_events(
    conn: asyncpg.Connection, schema: str, consumer: str, event_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of ``event_ids`` ``consumer`` has handled (a batch's read before its writes)."""
    rows = await conn.fetch(
        f"SELECT event_id FROM {schema}.inbox WHERE consumer = $1 AND event_id = ANY($2)",
        consumer,
        list(event_ids),
    )
    return {r["event_id"] for r in rows}


async def claim_events(
    conn: asyncpg.Connection, schema: str, consumer: str, event_ids: Sequence[uuid.UUID]
) -> bool:
    """:func:`claim_event` for many at once: False if any was handled before."""
    status: str = await conn.execute(
        f"INSERT INTO {schema}.inbox (consumer, event_id) SELECT $1, unnest($2::uuid[])"
        " ON CONFLICT DO NOTHING",
        consumer,
        list(event_ids),
    )
    return status == f"INSERT 0 {len(event_ids)}"


class DurableConsumer:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        settings: BaseServiceSettings,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler,
        *,
        max_deliver: int = 5,
        backoff: Sequence[float] = (0.5, 2, 10, 30),
        ack_wait: float = 30,
        batch: int = 50,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.settings = settings
        self.durable = durable
        self.filter_subjects = [settings.subject(s) for s in filter_subjects]
        self.handler = handler
        self.max_deliver = max_deliver
        self.backoff = list(backoff)
        self.ack_wait = ack_wait
        self.batch = batch
        self.batch_handler = batch_handler
        self.handled = 0
        #: Batches the batch handler took, and those it refused (handled event by event).
        self.batches = 0
        self.batches_split = 0
        self.dead_lettered = 0

    async def ensure(self) -> None:
        # JetStream requires ack_wait to exceed every back-off step except the last.
        backoff = self.backoff[: self.max_deliver]
        cfg = ConsumerConfig(
            durable_name=self.durable,
            filter_subjects=self.filter_subjects,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            backoff=backoff if len(backoff) == self.max_deliver else None,
            max_ack_pending=1000,
        )
        await self.js.add_consumer(self.settings.events_stream, cfg)

    async def run(self, stopping: asyncio.Event) -> None:
        await self.ensure()
        advisories = await self._watch_advisories()
        sub = await self.js.pull_subscribe_bind(
            durable=self.durable, stream=self.settings.events_stream
        )
        # With a batch handler and a backlog (a full batch came), the next batch is asked for
        # while this one is handled, so the fetch's round trip is not on the handling's path.
        # Not for event-by-event handlers: a batch handled one event at a time can take long
        # enough that the batch waiting behind it would pass its ack wait.
        ahead: asyncio.Task[list[Msg]] | None = None
        try:
            while not stopping.is_set():
                try:
                    msgs = await (ahead or self._fetch(sub))
                except TimeoutError:
                    # Nothing to fetch. nats-py raises its own TimeoutError or, from deeper
                    # down, a plain asyncio one: both are this builtin (the plain one once
                    # ended the scheduler's consumer and left every job ``submitted``).
                    continue
                except (NatsError, JetStreamAPIError) as e:  # a hiccup must not end the consumer
                    log.warning("consumer_fetch_failed", consumer=self.durable, error=repr(e))
                    await asyncio.sleep(0.5)
                    continue
                finally:
                    ahead = None
                if self.batch_handler and len(msgs) >= self.batch and not stopping.is_set():
                    ahead = asyncio.create_task(self._fetch(sub))
                await self._handle(msgs)
            if ahead is not None:  # stopping: what it brings is handled, not left unacked
                with contextlib.suppress(TimeoutError, NatsError, JetStreamAPIError):
                    await self._handle(await ahead)
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for a in advisories:
                with contextlib.suppress(Exception):
                    await a.unsubscribe()

    async def _handle(self, msgs: Sequence[Msg]) -> None:
        if len(msgs) > 1 and await self._deliver_batch(msgs):
            return
        for msg in msgs:
            await self._deliver(msg)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        # No idle heartbeat: nats-py asks for the rest of a batch with the time left, and
        # the server refuses a heartbeat above half of that (400).
        msgs: list[Msg] = await sub.fetch(self.batch, timeout=1)
        return msgs

    async def _deliver(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered
        token = otel_context.attach(extract_context(msg.headers))
        try:
            with _tracer.start_as_current_span(f"consume {self.durable}"):
                event = BusEvent.from_msg(msg)
                await self.handler(event)
        except Poison as e:
            await self._dead_letter(msg, f"poison: {e}")
            await msg.term()
        except Exception as e:
            if attempt >= self.max_deliver:
                await self._dead_letter(msg, f"failed {attempt} deliveries: {e!r}")
                await msg.term()
            else:
                delay = self.backoff[min(attempt - 1, len(self.backoff) - 1)] if self.backoff else 1
                log.warning("consumer_retry", consumer=self.durable, attempt=attempt, error=repr(e))
                await msg.nak(delay=delay)
        else:
            self.handled += 1
            await msg.ack()
        finally:
            otel_context.detach(token)

    async def _deliver_batch(self, msgs: Sequence[Msg]) -> bool:
        """Offer the batch to the batch handler: True if it handled every message."""
        if self.batch_handler is None:
            return False
        try:
            events = [BusEvent.from_msg(m) for m in msgs]
        except Poison:
            return False
        # The batch's span is linked to every message's trace.
        contexts = [trace.get_current_span(extract_context(m.headers)) for m in msgs]
        links = [
            trace.Link(s.get_span_context()) for s in contexts if s.get_span_context().is_valid
        ]
        try:
            with _tracer.start_as_current_span(f"consume {self.durable} batch", links=links):
                await self.batch_handler(events)
        except Exception as e:
            self.batches_split += 1
            log.info("consumer_batch_split", consumer=self.durable, size=len(msgs), error=repr(e))
            return False
        for m in msgs:
            await m.ack()
        self.batches += 1
        self.handled += len(msgs)
        return True

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        seq = msg.metadata.sequence.stream
        await self._publish_dlq(msg.subject, msg.data, dict(msg.headers or {}), seq, reason)

    async def _publish_dlq(
        self, subject: str, data: bytes, headers: dict[str, str], seq: int, reason: str
    ) -> None:
        headers = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
        headers.update(
            {
                "Nats-Msg-Id": f"dlq:{self.durable}:{seq}",
                "Dlq-Consumer": self.durable,
                "Dlq-Original-Subject": subject,
                "Dlq-Stream-Seq": str(seq),
                "Dlq-Reason": reason[:500],
            }
        )
        await self.js.publish(self.settings.subject(f"dlq.{self.durable}"), data, headers=headers)
        self.dead_lettered += 1
        log.error("dead_lettered", consumer=self.durable, stream_seq=seq, reason=reason)

    async def _watch_advisories(self) -> list[Any]:
        stream = self.settings.events_stream

        async def on_max_deliveries(msg: Msg) -> None:
            adv = orjson.loads(msg.data)
            seq = int(adv["stream_seq"])
            try:
                orig = await self.js.get_msg(stream, seq)
            except Exception as e:  # the message may have aged out of the stream
                log.error("dlq_copy_failed", stream_seq=seq, error=repr(e))
                return
            await self._publish_dlq(
                orig.subject or "",
                orig.data or b"",
                dict(orig.headers or {}),
                seq,
                f"max deliveries ({adv.get('deliveries')}) reached",
            )

        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{self.durable}"
        return [await self.nc.subscribe(subject, cb=on_max_deliveries)]
