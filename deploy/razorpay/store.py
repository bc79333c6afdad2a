"""The stand-in's state in SQLite: orders, payments, refunds and disputes as Razorpay shapes
them (one JSON document per entity), so it survives restarts."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    parent TEXT,
    created_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entities_by_kind ON entities (entity, created_at, seq);
CREATE INDEX IF NOT EXISTS entities_by_parent ON entities (parent, entity, seq);
"""


def razorpay_id(prefix: str) -> str:
    """An id shaped like Razorpay's: ``<prefix>_`` and 14 base62 characters."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def now() -> int:
    return int(time.time())


class Store:
    """Entities by id, with the order they were made in; thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def put(self, body: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
        """Insert or replace an entity (its ``id``, ``entity`` and ``created_at``)."""
        with self._lock:
            found = self._db.execute("SELECT seq FROM entities WHERE id = ?", (body["id"],))
            row = found.fetchone()
            seq = row[0] if row else self._next_seq()
            self._db.execute(
                "INSERT OR REPLACE INTO entities (id, entity, parent, created_at, seq, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (body["id"], body["entity"], parent, body["created_at"], seq, json.dumps(body)),
            )
        return body

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM entities").fetchone()
        return int(row[0])

    def get(self, entity: str, entity_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM entities WHERE id = ? AND entity = ?", (entity_id, entity)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def children(self, entity: str, parent: str) -> list[dict[str, Any]]:
        """Entities of one kind under ``parent`` (an order's payments), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM entities WHERE entity = ? AND parent = ? ORDER BY seq",
                (entity, parent),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def window(
        self, entity: str, start: int | None, end: int | None, count: int, skip: int
    ) -> list[dict[str, Any]]:
        """Entities created in [start, end], newest first (as Razorpay lists them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM entities WHERE entity = ? AND created_at >= ? AND created_at <= ?"
                " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                (entity, start or 0, end if end is not None else 2**62, count, skip),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]
