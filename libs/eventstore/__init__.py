"""An event store on PostgreSQL (asyncpg): one schema per service, gap-safe global feed."""

from libs.eventstore.store import (
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    NewEvent,
    Position,
    RecordedEvent,
    StreamWrite,
    create_pool,
)

__all__ = [
    "ConcurrencyError",
    "DuplicateEventError",
    "EventStore",
    "NewEvent",
    "Position",
    "RecordedEvent",
    "StreamWrite",
    "create_pool",
]
