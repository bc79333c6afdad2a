"""Queries on the notifier's read models: each user's notifications, webhook endpoints (never
their secrets), deliveries and their attempts, preferences and live feed.

Owned by the notifier (``services/notifier``). A change to the columns read here, in
``services/notifier/projections.py`` or its migrations, comes with the matching change here
in the same commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from contracts.notifications import (
    DeliveryStatus,
    KindChannels,
    NotificationKind,
    WebhookEndpoint,
    all_channels_on,
)
from libs.readmodels import check_schema

#: The schema the notifier owns (its ``Service.schema``).
SCHEMA = "notifier"


@dataclass(frozen=True, slots=True)
class NotificationRow:
    notification_id: str
    kind: NotificationKind
    api_key_id: str | None
    payload: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    succeeded: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    delivery_id: str
    endpoint_id: str
    notification_id: str
    kind: NotificationKind
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FeedRow:
    """One item of a user's live feed: ``seq`` 1, 2, 3, ... per user; ``tx_id, position``
    its place among every user's items, in the order they became visible."""

    user_id: str
    seq: int
    item_type: str
    data: dict[str, Any]
    at: datetime
    tx_id: int
    position: int


def _endpoint(r: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(
        endpoint_id=r["endpoint_id"],
        url=r["url"],
        kinds=[NotificationKind(k) for k in r["kinds"]],
        api_key_id=r["api_key_id"],
        created_at=r["created_at"],
        rotated_at=r["rotated_at"],
        disabled_at=r["disabled_at"],
        disabled_reason=r["disabled_reason"],
    )


class NotificationsQuery:
    """Read-only access to the notifier's read models."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        self._page_sql = (
            "SELECT notification_id, kind, api_key_id, payload, created_at, read_at"
            f" FROM {s}.notifications WHERE user_id = $1"
            " AND ($2::text IS NULL OR notification_id < $2)"
            " AND (NOT $3 OR read_at IS NULL)"
            " ORDER BY notification_id DESC LIMIT $4"
        )
        self._unread_sql = (
            f"SELECT count(*) FROM {s}.notifications WHERE user_id = $1 AND read_at IS NULL"
        )
        self._unread_ids_sql = (
            f"SELECT notification_id FROM {s}.notifications WHERE user_id = $1"
            " AND read_at IS NULL ORDER BY notification_id LIMIT $2"
        )
        self._endpoints_sql = (
            "SELECT endpoint_id, url, kinds, api_key_id, created_at, rotated_at, disabled_at,"
            " disabled_reason"
            f" FROM {s}.webhook_endpoints WHERE user_id = $1 ORDER BY endpoint_id"
        )
        self._endpoint_sql = (
            "SELECT endpoint_id, url, kinds, api_key_id, created_at, rotated_at, disabled_at,"
            " disabled_reason"
            f" FROM {s}.webhook_endpoints WHERE user_id = $1 AND endpoint_id = $2"
        )
        self._deliveries_sql = (
            "SELECT delivery_id, endpoint_id, notification_id, kind, status, attempts,"
            f" next_attempt_at, created_at, updated_at FROM {s}.deliveries"
            " WHERE user_id = $1 AND endpoint_id = $2"
            " AND ($3::text IS NULL OR delivery_id < $3)"
            " ORDER BY delivery_id DESC LIMIT $4"
        )
        feed_cols = "user_id, seq, item_type, data, at, tx_id, position"
        self._feed_user_sql = (
            f"SELECT {feed_cols} FROM {s}.feed WHERE user_id = $1 AND seq > $2"
            " ORDER BY seq LIMIT $3"
        )
        self._feed_head_sql = f"SELECT coalesce(max(seq), 0) FROM {s}.feed WHERE user_id = $1"
        self._feed_since_sql = (
            f"SELECT {feed_cols} FROM {s}.feed WHERE (tx_id, position) > ($1, $2)"
            " ORDER BY tx_id, position LIMIT $3"
        )
        self._feed_end_sql = (
            f"SELECT tx_id, position FROM {s}.feed ORDER BY tx_id DESC, position DESC LIMIT 1"
        )
        self._preferences_sql = f"SELECT kinds FROM {s}.preferences WHERE user_id = $1"
        self._attempts_sql = (
            "SELECT delivery_id, attempt, status_code, error, duration_ms, succeeded, at"
            f" FROM {s}.delivery_attempts WHERE delivery_id = ANY($1)"
            " ORDER BY delivery_id, attempt"
        )

    async def notifications(
        self, user_id: str, before: str | None, unread_only: bool, limit: int
    ) -> list[NotificationRow]:
        """The user's notifications, newest first, older than the cursor ``before``."""
        rows = await self.pool.fetch(self._page_sql, user_id, before, unread_only, limit)
        return [NotificationRow(**{**dict(r), "kind": NotificationKind(r["kind"])}) for r in rows]

    async def unread_count(self, user_id: str) -> int:
        count: int = await self.pool.fetchval(self._unread_sql, user_id)
        return count

    async def unread_ids(self, user_id: str, limit: int) -> list[str]:
        return [r[0] for r in await self.pool.fetch(self._unread_ids_sql, user_id, limit)]

    async def endpoints(self, user_id: str) -> list[WebhookEndpoint]:
        return [_endpoint(r) for r in await self.pool.fetch(self._endpoints_sql, user_id)]

    async def endpoint(self, user_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        row = await self.pool.fetchrow(self._endpoint_sql, user_id, endpoint_id)
        return None if row is None else _endpoint(row)

    async def deliveries(
        self, user_id: str, endpoint_id: str, before: str | None, limit: int
    ) -> list[tuple[DeliveryRow, list[AttemptRow]]]:
        """The endpoint's deliveries, newest first, each with its attempts in order."""
        rows = await self.pool.fetch(self._deliveries_sql, user_id, endpoint_id, before, limit)
        found = [
            DeliveryRow(
                **{
                    **dict(r),
                    "kind": NotificationKind(r["kind"]),
                    "status": DeliveryStatus(r["status"]),
                }
            )
            for r in rows
        ]
        attempts: dict[str, list[AttemptRow]] = {d.delivery_id: [] for d in found}
        for a in await self.pool.fetch(self._attempts_sql, list(attempts)):
            attempts[a["delivery_id"]].append(
                AttemptRow(**{k: v for k, v in dict(a).items() if k != "delivery_id"})
            )
        return [(d, attempts[d.delivery_id]) for d in found]

    async def preferences(self, user_id: str) -> dict[NotificationKind, KindChannels]:
        """Every kind's channels (on unless the user turned them off)."""
        kinds: dict[str, Any] | None = await self.pool.fetchval(self._preferences_sql, user_id)
        stored = {NotificationKind(k): KindChannels(**v) for k, v in (kinds or {}).items()}
        return {**all_channels_on(), **stored}

    async def feed_after(self, user_id: str, after: int, limit: int) -> list[FeedRow]:
        """The user's feed items after sequence ``after``, in order."""
        rows = await self.pool.fetch(self._feed_user_sql, user_id, after, limit)
        return [FeedRow(**dict(r)) for r in rows]

    async def feed_head(self, user_id: str) -> int:
        """The sequence of the user's latest feed item (0: none yet)."""
        head: int = await self.pool.fetchval(self._feed_head_sql, user_id)
        return head

    async def feed_since(self, tx_id: int, position: int, limit: int) -> list[FeedRow]:
        """Every user's feed items after ``(tx_id, position)``, in the order they were
        committed (the notifier's one projector writes them in feed order)."""
        rows = await self.pool.fetch(self._feed_since_sql, tx_id, position, limit)
        return [FeedRow(**dict(r)) for r in rows]

    async def feed_end(self) -> tuple[int, int]:
        """The place of the latest feed item of any user ((0, 0): none)."""
        row = await self.pool.fetchrow(self._feed_end_sql)
        return (0, 0) if row is None else (row["tx_id"], row["position"])
