"""Operators' views and actions across services, for the gateway's admin routes: the scene
work queue and the bus's consumers (:class:`Operations`), and retrying a quarantined stream,
which only the owning service can do (it runs the projection's rules): every service with
read models answers ``ops.<schema>.quarantine.retry`` (:func:`serve_quarantine_retry`, from
the runtime) and the gateway asks with :func:`retry_quarantined`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from contracts.operations import ConsumerLag, DeadLetterView, QueuesView, WorkQueueDepth
from contracts.preparation import SCENE_QUEUE
from libs.config import BaseServiceSettings
from libs.eventstore.projection import ReadModel
from libs.eventstore.store import EventStore
from libs.logging import get_logger
from libs.workqueue import WorkQueue

log = get_logger(__name__)


class RetryRequest(BaseModel):
    projection: str
    stream_id: str


class RetryReply(BaseModel):
    #: The service has no such projection.
    found: bool
    applied: int = 0
    error: str | None = None


def retry_subject(settings: BaseServiceSettings, schema: str) -> str:
    return settings.subject(f"ops.{schema}.quarantine.retry")


async def serve_quarantine_retry(
    nc: Client, settings: BaseServiceSettings, store: EventStore, models: Sequence[ReadModel]
) -> Subscription:
    """Answer retries of this service's quarantined streams (one replica takes each)."""
    by_name = {m.name: m for m in models}

    async def handle(msg: Msg) -> None:
        try:
            req = RetryRequest.model_validate_json(msg.data)
        except ValidationError:
            await msg.respond(
                RetryReply(found=False, error="bad request").model_dump_json().encode()
            )
            return
        model = by_name.get(req.projection)
        if model is None:
            reply = RetryReply(found=False)
        else:
            applied, error = await model.retry(store, req.stream_id)
            log.info(
                "quarantine_retried",
                projection=req.projection,
                stream_id=req.stream_id,
                applied=applied,
                error=error,
            )
            reply = RetryReply(found=True, applied=applied, error=error)
        await msg.respond(reply.model_dump_json().encode())

    return await nc.subscribe(
        retry_subject(settings, store.schema), queue=settings.service_name, cb=handle
    )


async def retry_quarantined(
    nc: Client,
    settings: BaseServiceSettings,
    schema: str,
    projection: str,
    stream_id: str,
    wait_seconds: float,
) -> RetryReply | None:
    """Ask the service owning ``schema`` to retry the stream; None if no service answers."""
    body = RetryRequest(projection=projection, stream_id=stream_id).model_dump_json().encode()
    try:
        msg = await nc.request(retry_subject(settings, schema), body, timeout=wait_seconds)
    except (NoRespondersError, NatsTimeout):
        return None
    return RetryReply.model_validate_json(msg.data)


class Operations:
    """The scene work queue (Redis) and the bus (JetStream) as operators see them."""

    def __init__(
        self,
        redis: aioredis.Redis,
        redis_prefix: str,
        js: JetStreamContext,
        events_stream: str,
        dlq_stream: str,
    ) -> None:
        self.scenes = WorkQueue(redis, SCENE_QUEUE, prefix=redis_prefix)
        self.js = js
        self.events_stream = events_stream
        self.dlq_stream = dlq_stream

    async def queues(self, now: datetime) -> QueuesView:
        depth = await self.scenes.depth()
        events = await self.js.stream_info(self.events_stream)
        dlq = await self.js.stream_info(self.dlq_stream)
        consumers = sorted(
            await self.js.consumers_info(self.events_stream), key=lambda c: c.name or ""
        )
        return QueuesView(
            at=now,
            scene_queue=[
                WorkQueueDepth(
                    priority=p,
                    waiting=d.waiting,
                    in_flight=d.in_flight,
                    retrying=d.retrying,
                    dead=d.dead,
                )
                for p, d in depth.items()
            ],
            scene_queue_dead_letters=sum(d.dead for d in depth.values()),
            events_stream_last_seq=events.state.last_seq,
            consumers=[
                ConsumerLag(
                    durable=c.name or "",
                    pending=c.num_pending or 0,
                    ack_pending=c.num_ack_pending or 0,
                    redelivered=c.num_redelivered or 0,
                    last_delivered_seq=(c.delivered.stream_seq or 0) if c.delivered else 0,
                )
                for c in consumers
                if c.name
            ],
            bus_dead_letters=dlq.state.messages,
        )

    async def dead_letters(self, limit: int) -> list[DeadLetterView]:
        """The scene queue's dead letters, oldest first."""
        return [
            DeadLetterView(
                item_id=d.item_id,
                priority=d.priority,
                payload=d.payload,
                error=d.error,
                deliveries=d.deliveries,
                consumer=d.consumer,
                dead_at=d.dead_at,
            )
            for d in await self.scenes.dead_letters(limit)
        ]
