"""A test job event with two schema versions, for serving stored history upcast.

``job.NoteAdded`` v1 was ``{job_id, note, token_hash}``; v2 renamed ``note`` to ``text`` and
added ``author``. ``token_hash`` is private: kept in the store, masked when served.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from contracts.base import Event, EventRegistry, JsonDict


class NoteAdded(Event):
    event_type = "job.NoteAdded"
    schema_version = 2
    private_fields = frozenset({"token_hash"})
    job_id: str
    text: str
    author: str | None = None
    token_hash: str


def note_v1_to_v2(data: JsonDict) -> JsonDict:
    data = dict(data)
    data["text"] = data.pop("note")
    return data


def register_note(registry: EventRegistry) -> None:
    registry.register(NoteAdded)
    registry.upcaster(NoteAdded.event_type, 1)(note_v1_to_v2)


async def insert_v1_note(pool: asyncpg.Pool, job_id: str, version: int, actor: str) -> None:
    """Store a ``job.NoteAdded`` in its first schema straight into the job's stream."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO job.events (event_id, stream_id, version, type, schema_version, data,"
            " metadata, recorded_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $7)",
            uuid.uuid4(),
            f"job-{job_id}",
            version,
            NoteAdded.event_type,
            {"job_id": job_id, "note": "hello", "token_hash": "s3cr3t"},
            {"actor": {"kind": "user", "id": actor}},
            datetime.now(UTC),
        )


def served_note(job_id: str) -> JsonDict:
    """What the v1 note is served as: the v2 shape, with the hash masked."""
    return {"job_id": job_id, "text": "hello", "author": None, "token_hash": "redacted"}
