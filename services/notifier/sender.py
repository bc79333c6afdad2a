"""The webhook delivery worker (one replica at a time, under an advisory lock).

It finds due deliveries in ``notifier.deliveries`` and puts each in its endpoint's queue.
Each endpoint is drained by at most ``webhook_endpoint_concurrency`` tasks, and all of them
share ``webhook_concurrency`` slots, so a receiver that is slow or down holds only its own
tasks: every other endpoint's queue moves on. Each POST is bounded by
``webhook_timeout_seconds`` as a whole. Each attempt is recorded on the delivery
(``WebhookDeliveryAttempted``, then ``Succeeded``, the next attempt's time or
``DeadLettered``); the delivery is not taken again before the read model shows that, while
its endpoint's queue moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from contracts.notifications import DeliveryStatus
from libs.eventstore.processor import Tailer
from libs.eventstore.store import ConcurrencyError, EventStore, Position
from libs.eventstore.uow import UnitOfWork
from libs.leader import leadership, lock_key, wake_or_stop
from libs.logging import get_logger
from services.notifier.addresses import AddressNotAllowed
from services.notifier.domain import Delivery, Notification, Outcome, RetryPolicy, Webhooks
from services.notifier.settings import NotifierSettings
from services.notifier.signing import webhook_headers

log = get_logger(__name__)

#: Longest wait for the read model to show what was just recorded.
CATCH_UP_SECONDS = 5.0
#: Due deliveries taken per look.
BATCH = 500


@dataclass(frozen=True, slots=True)
class Due:
    """A due delivery as the read model shows it: what its attempt loads."""

    delivery_id: str
    user_id: str
    notification_id: str


def message_body(notification: Notification) -> bytes:
    """The webhook body (Standard Webhooks' ``type``, ``timestamp``, ``data``): the same bytes
    on every attempt."""
    assert notification.kind is not None and notification.created_at is not None
    return orjson.dumps(
        {
            "type": notification.kind.value,
            "timestamp": notification.created_at.isoformat(),
            "data": {"notification_id": notification.key, **notification.payload},
        },
        option=orjson.OPT_SORT_KEYS,
    )


class DeliveryWorker:
    def __init__(
        self,
        settings: NotifierSettings,
        store: EventStore,
        deliveries: Tailer,
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deliveries = deliveries
        self.client = client
        self.box = settings.secret_box()
        self.policy = RetryPolicy(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_delay_seconds,
            settings.webhook_retry_window_seconds,
        )
        self.wake = asyncio.Event()
        self.last_error: str | None = None
        self._wanted: Position | None = None
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._queues: dict[str, deque[Due]] = {}
        self._drainers: dict[str, set[asyncio.Task[None]]] = {}
        self._queued: set[str] = set()
        self._settling: set[asyncio.Task[None]] = set()
        s = store.schema
        # Due ones, and at once every pending one of a disabled endpoint (to dead-letter it).
        self._due_sql = (
            f"(SELECT delivery_id, endpoint_id, user_id, notification_id FROM {s}.deliveries"
            " WHERE status = 'pending'"
            " AND next_attempt_at <= $1 AND NOT (delivery_id = ANY($2))"
            " ORDER BY next_attempt_at LIMIT $3)"
            " UNION (SELECT d.delivery_id, d.endpoint_id, d.user_id, d.notification_id"
            f" FROM {s}.deliveries d"
            f" JOIN {s}.webhook_endpoints e ON e.endpoint_id = d.endpoint_id"
            " WHERE e.disabled_at IS NOT NULL AND d.status = 'pending'"
            " AND NOT (d.delivery_id = ANY($2)) LIMIT $3)"
        )
        self._next_sql = (
            f"SELECT min(next_attempt_at) FROM {s}.deliveries WHERE status = 'pending'"
            " AND NOT (delivery_id = ANY($1))"
        )

    def scheduled(self, position: Position) -> None:
        """Deliveries were recorded up to ``position``: look once the read model has them."""
        if self._wanted is None or position > self._wanted:
            self._wanted = position
        self.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        key = lock_key(self.store.schema, "webhook-sender")
        async with leadership(self.store.pool, key, stopping) as held:
            if not held:
                return
            try:
                while not stopping.is_set():
                    self.wake.clear()
                    wanted, self._wanted = self._wanted, None
                    if wanted is not None:
                        await self._caught_up(wanted)
                    wait = await self.dispatch()
                    await wake_or_stop(self.wake, stopping, wait)
            finally:
                tasks = [t for ts in self._drainers.values() for t in ts] + [*self._settling]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _caught_up(self, position: Position) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await self.deliveries.wait_for(position)

    async def dispatch(self) -> float:
        """Queue every due delivery; the seconds until the next one is due (at most the poll)."""
        for endpoint_id in [e for e, q in self._queues.items() if not q]:
            if not any(not t.done() for t in self._drainers.get(endpoint_id, ())):
                del self._queues[endpoint_id]
                self._drainers.pop(endpoint_id, None)
        now = datetime.now(UTC)
        busy = list(self._queued)
        async with self.store.session() as conn:
            due = await conn.fetch(self._due_sql, now, busy, BATCH)
            for delivery_id, endpoint_id, user_id, notification_id in due:
                self._enqueue(endpoint_id, Due(delivery_id, user_id, notification_id))
            nxt: datetime | None = await conn.fetchval(self._next_sql, list(self._queued))
        poll = self.settings.webhook_poll_seconds
        if nxt is None:
            return poll
        return min(poll, max(0.01, (nxt - datetime.now(UTC)).total_seconds()))

    def _enqueue(self, endpoint_id: str, delivery: Due) -> None:
        self._queued.add(delivery.delivery_id)
        self._queues.setdefault(endpoint_id, deque()).append(delivery)
        drainers = self._drainers.setdefault(endpoint_id, set())
        # A drainer that has returned is done at once (its set removal comes a step later).
        if sum(not t.done() for t in drainers) < self.settings.webhook_endpoint_concurrency:
            task = asyncio.create_task(self._drain(endpoint_id), name=f"webhooks:{endpoint_id}")
            drainers.add(task)
            task.add_done_callback(drainers.discard)

    async def _drain(self, endpoint_id: str) -> None:
        while queue := self._queues.get(endpoint_id):
            delivery = queue.popleft()
            recorded: Position | None = None
            try:
                async with self._slots:
                    recorded = await self.attempt(delivery)
                self.last_error = None
            except Exception as e:  # the delivery stays due: it is taken again
                self.last_error = f"{delivery.delivery_id}: {e!r}"
                log.error("webhook_attempt_failed", delivery_id=delivery.delivery_id, error=repr(e))
            finally:
                if recorded is None:
                    self._queued.discard(delivery.delivery_id)
                else:  # not due again until the read model shows the attempt
                    task = asyncio.create_task(self._settle(delivery.delivery_id, recorded))
                    self._settling.add(task)
                    task.add_done_callback(self._settling.discard)

    async def _settle(self, delivery_id: str, recorded: Position) -> None:
        """Keep a delivery out of the due ones until the read model shows its attempt, while
        its endpoint's queue moves on."""
        try:
            await self._caught_up(recorded)
        finally:
            self._queued.discard(delivery_id)

    async def attempt(self, due_delivery: Due) -> Position | None:
        """Send one delivery if it is due, and record what happened; the position of what
        was recorded."""
        key = due_delivery.delivery_id
        metadata = {
            "actor": {"kind": "service", "id": self.settings.service_name},
            "correlation_id": f"delivery:{key}",
        }
        uow = UnitOfWork(self.store, metadata=metadata)
        # The delivery, its user's endpoints and its notification in one query.
        await uow.prefetch(
            (Delivery, key),
            (Webhooks, due_delivery.user_id),
            (Notification, due_delivery.notification_id),
        )
        delivery = await uow.get(Delivery, key)
        now = datetime.now(UTC)
        due = delivery.next_attempt_at
        if not delivery.exists or due is None or delivery.status is not DeliveryStatus.pending:
            return None
        endpoint = (await uow.get(Webhooks, delivery.user_id)).endpoints.get(delivery.endpoint_id)
        disabled = endpoint is not None and endpoint.disabled_at is not None
        if due > now and not disabled:
            return None
        notification = await uow.get(Notification, delivery.notification_id)
        if endpoint is None or disabled:
            # Never sent: dead-lettered at once, with the reason.
            why = "deleted" if endpoint is None else f"disabled ({endpoint.disabled_reason})"
            outcome = Outcome(None, f"the endpoint was {why}", 0)
            delivery.attempted(outcome, self.policy, 0.0, now, final=True)
        else:
            body = message_body(notification)
            # Opened here only, to sign; a key not configured raises (the delivery stays due
            # and readiness reports it).
            signing = [
                self.box.open(s, delivery.user_id, endpoint.endpoint_id)
                for s in endpoint.secrets(now)
            ]
            headers = webhook_headers(signing, notification.key, int(time.time()), body)
            outcome, final = await self.post(endpoint.url, headers, body)
            at = datetime.now(UTC)
            delivery.attempted(outcome, self.policy, random.random(), at, final=final)
        try:
            recorded = await uow.commit()
        except ConcurrencyError:  # replayed meanwhile: the replay's attempt is next
            return None
        self.store.notify_appended()
        return recorded[-1].cursor if recorded else None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[Outcome, bool]:
        """What the receiver answered, and whether that is final: a host resolving to an
        address that is not public is not retried (``services/notifier/addresses.py``)."""
        timeout = self.settings.webhook_timeout_seconds
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with asyncio.timeout(timeout):
                r = await self.client.post(url, content=body, headers=headers, timeout=timeout)
        except TimeoutError:
            return Outcome(None, f"no answer within {timeout:g} s", took()), False
        except AddressNotAllowed as e:
            return Outcome(None, str(e)[:500], took()), True
        except httpx.HTTPError as e:
            return Outcome(None, f"{type(e).__name__}: {e}"[:500], took()), False
        return Outcome(r.status_code, None, took()), False
