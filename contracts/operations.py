"""What the administrators' operations views show (``/v1/admin/queues``, ``/quarantine``,
``/dead-letters``): the scene work queue, the bus's durable consumers and dead letters, and
the read models' quarantined streams. Views, not events: nothing here is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkQueueDepth(_Model):
    """One priority of a Redis work queue (``libs/workqueue.py``)."""

    priority: str = Field(description="Priority, highest first (test, then full).")
    waiting: int = Field(description="Queued, not yet taken by a worker.")
    in_flight: int = Field(description="Held by a worker now.")
    retrying: int = Field(description="Released by a worker, waiting for its retry.")
    dead: int = Field(description="Given up on after the last delivery (dead letters).")


class ConsumerLag(_Model):
    """A durable JetStream consumer of the EVENTS stream."""

    durable: str = Field(description="Its name (a service's process manager or consumer).")
    pending: int = Field(description="Events not yet delivered to it: its lag.")
    ack_pending: int = Field(description="Delivered, not yet acknowledged.")
    redelivered: int = Field(description="Delivered more than once and not acknowledged.")
    last_delivered_seq: int = Field(description="Stream sequence last delivered to it.")


class QueuesView(_Model):
    """``GET /v1/admin/queues``."""

    at: datetime
    scene_queue: list[WorkQueueDepth] = Field(description="The scene workers' queue.")
    scene_queue_dead_letters: int = Field(description="The scene queue's dead letters.")
    events_stream_last_seq: int = Field(description="Last sequence of the EVENTS stream.")
    consumers: list[ConsumerLag] = Field(description="Every durable consumer, by name.")
    bus_dead_letters: int = Field(
        description="Messages consumers gave up on (the DLQ stream), every consumer."
    )


class QuarantinedStream(_Model):
    """A stream a projection could not apply: its events are held until retried."""

    schema_name: str = Field(description="The owning service's schema.")
    projection: str = Field(description="The projection (read model) that failed.")
    stream_id: str = Field(description="The event stream, e.g. job-<id>.")
    events: int = Field(description="Events held, the failing one included.")
    event_type: str = Field(description="Type of the failing event.")
    version: int = Field(description="Its version in the stream.")
    error: str = Field(description="What the projection raised.")
    quarantined_at: datetime = Field(description="When the failing event was quarantined.")


class QuarantineView(_Model):
    """``GET /v1/admin/quarantine``."""

    items: list[QuarantinedStream]


class QuarantineRetried(_Model):
    """``POST /v1/admin/quarantine/{schema}/{projection}/{stream}/retry``."""

    schema_name: str
    projection: str
    stream_id: str
    applied: int = Field(description="Events applied and released from the quarantine.")
    error: str | None = Field(description="The error of an event that failed again; null: ok.")


class DeadLetterView(_Model):
    """A scene-queue item the workers gave up on."""

    item_id: str = Field(description="The queue item (the job's preparation).")
    priority: str
    payload: dict[str, Any] = Field(description="What was queued.")
    error: str = Field(description="The last delivery's error.")
    deliveries: int
    consumer: str = Field(description="The worker of the last delivery.")
    dead_at: datetime


class DeadLetterPage(_Model):
    """``GET /v1/admin/dead-letters``: oldest first."""

    items: list[DeadLetterView]
