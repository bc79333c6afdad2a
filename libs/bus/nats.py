"""Connection and stream set-up."""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from libs.config import BaseServiceSettings
from libs.logging import get_logger

log = get_logger(__name__)


async def connect(settings: BaseServiceSettings, name: str) -> Client:
    async def on_error(e: Exception) -> None:
        log.warning("nats_error", error=repr(e))

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    return await nats.connect(
        settings.nats_url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        reconnected_cb=on_reconnect,
    )


def event_subject(settings: BaseServiceSettings, event_type: str) -> str:
    """``job.JobSubmitted`` -> ``events.job.JobSubmitted`` (with the environment prefix)."""
    return settings.subject(f"events.{event_type}")


async def ensure_streams(js: JetStreamContext, settings: BaseServiceSettings) -> None:
    """Create (or keep) the EVENTS stream and the DLQ stream."""
    wanted = [
        StreamConfig(
            name=settings.events_stream,
            subjects=[settings.subject("events.>")],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            allow_direct=True,
            num_replicas=settings.events_stream_replicas,
            # PostgreSQL keeps every event for ever; the bus only needs enough to let a
            # stopped consumer catch up.
            max_age=settings.events_max_age_days * 86400,
        ),
        StreamConfig(
            name=settings.dlq_stream,
            subjects=[settings.subject("dlq.>")],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=120.0,
        ),
    ]
    for cfg in wanted:
        try:
            await js.stream_info(cfg.name)  # type: ignore[arg-type]
        except NotFoundError:
            await js.add_stream(cfg)
