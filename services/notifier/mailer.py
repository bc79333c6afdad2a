"""The mailer: e-mails notifications over SMTP (one replica at a time, under an advisory lock).

It finds due e-mails in ``notifier.mails`` and hands each to the SMTP server, at most
``email_concurrency`` at once, each hand-over bounded by ``email_timeout_seconds``. Every
attempt is recorded on the e-mail (``EmailAttempted``, then ``EmailDelivered``, the next attempt's
time with back-off and jitter, or ``EmailDeadLettered`` past the retry window). An e-mail is
scheduled once per notification; the message's ``Message-ID`` is derived from the
notification's id, so the one case that can send it twice (the server took it and this
process died before recording so) shows the receiver the same message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import smtplib
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from contracts.notifications import CATALOGUE, DeliveryStatus
from libs.eventstore.processor import Tailer
from libs.eventstore.store import ConcurrencyError, EventStore, Position
from libs.eventstore.uow import UnitOfWork
from libs.leader import leadership, lock_key, wake_or_stop
from libs.logging import get_logger
from services.notifier.domain import Mail, Notification, Outcome, Recipient, RetryPolicy
from services.notifier.settings import NotifierSettings

log = get_logger(__name__)

#: Longest wait for the read model to show what was just recorded.
CATCH_UP_SECONDS = 5.0
#: Due e-mails taken per look.
BATCH = 200


def message_of(notification: Notification, to: str, sender: str) -> EmailMessage:
    """The e-mail of a notification: a plain-text summary of its payload."""
    assert notification.kind is not None and notification.created_at is not None
    spec = CATALOGUE[notification.kind]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"[render farm] {notification.kind.value}: {spec.when}"
    msg["Date"] = format_datetime(notification.created_at)
    msg["Message-ID"] = f"<{notification.key}@notifications.renderfarm>"
    msg["X-Renderfarm-Notification"] = notification.key
    msg["X-Renderfarm-Kind"] = notification.kind.value
    lines = [f"{spec.when.capitalize()}.", ""]
    lines += [f"{k}: {v}" for k, v in sorted(notification.payload.items())]
    lines += ["", f"Notification {notification.key}. Change what you get by e-mail with"]
    lines += ["PUT /v1/notification-preferences."]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class Mailer:
    def __init__(self, settings: NotifierSettings, store: EventStore, mails: Tailer) -> None:
        self.settings = settings
        self.store = store
        self.mails = mails
        self.policy = RetryPolicy(
            settings.email_retry_base_seconds,
            settings.email_retry_max_delay_seconds,
            settings.email_retry_window_seconds,
        )
        self.wake = asyncio.Event()
        self.last_error: str | None = None
        self._wanted: Position | None = None
        self._slots = asyncio.Semaphore(settings.email_concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        s = store.schema
        self._due_sql = (
            f"SELECT email_id FROM {s}.mails WHERE status = 'pending'"
            " AND next_attempt_at <= $1 AND NOT (email_id = ANY($2))"
            " ORDER BY next_attempt_at LIMIT $3"
        )
        self._next_sql = (
            f"SELECT min(next_attempt_at) FROM {s}.mails WHERE status = 'pending'"
            " AND NOT (email_id = ANY($1))"
        )

    def scheduled(self, position: Position) -> None:
        """E-mails were scheduled up to ``position``: look once the read model has them."""
        if self._wanted is None or position > self._wanted:
            self._wanted = position
        self.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        key = lock_key(self.store.schema, "mailer")
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
                tasks = list(self._in_flight.values())
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _caught_up(self, position: Position) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await self.mails.wait_for(position)

    async def dispatch(self) -> float:
        """Start every due e-mail; the seconds until the next one is due (at most the poll)."""
        async with self.store.pool.acquire() as conn:
            due = await conn.fetch(self._due_sql, datetime.now(UTC), list(self._in_flight), BATCH)
            for row in due:
                self._start(row["email_id"])
            nxt: datetime | None = await conn.fetchval(self._next_sql, list(self._in_flight))
        poll = self.settings.email_poll_seconds
        if nxt is None:
            return poll
        return min(poll, max(0.01, (nxt - datetime.now(UTC)).total_seconds()))

    def _start(self, email_id: str) -> None:
        task = asyncio.create_task(self._send_one(email_id), name=f"mail:{email_id}")
        self._in_flight[email_id] = task
        task.add_done_callback(lambda _: self._in_flight.pop(email_id, None))

    async def _send_one(self, email_id: str) -> None:
        try:
            async with self._slots:
                await self.attempt(email_id)
            self.last_error = None
        except Exception as e:  # the e-mail stays due: it is taken again
            self.last_error = f"{email_id}: {e!r}"
            log.error("email_attempt_failed", email_id=email_id, error=repr(e))
        finally:
            self.wake.set()  # look again: the read model shows the attempt by now

    async def attempt(self, email_id: str) -> None:
        """Send one e-mail if it is due, and record what happened."""
        metadata = {
            "actor": {"kind": "service", "id": self.settings.service_name},
            "correlation_id": f"mail:{email_id}",
        }
        uow = UnitOfWork(self.store, metadata=metadata)
        mail = await uow.get(Mail, email_id)
        now = datetime.now(UTC)
        due = mail.next_attempt_at
        if not mail.exists or mail.status is not DeliveryStatus.pending or due is None or due > now:
            return
        notification = await uow.get(Notification, mail.notification_id)
        recipient = await uow.get(Recipient, mail.user_id)
        address = recipient.email
        if address is None:
            why = (
                "the user was erased: no e-mail address is kept"
                if recipient.erased
                else "no e-mail address is known for the user"
            )
            outcome = Outcome(None, why, 0)
            mail.attempted(outcome, self.policy, 0.0, now, final=True)
        else:
            message = message_of(notification, address, self.settings.email_from)
            outcome = await self.send(message)
            mail.attempted(outcome, self.policy, random.random(), datetime.now(UTC))
        try:
            recorded = await uow.commit()
        except ConcurrencyError:  # another attempt recorded meanwhile
            return
        self.store.notify_appended()
        if recorded:
            last = recorded[-1]
            await self._caught_up(Position(last.tx_id, last.position))

    async def send(self, message: EmailMessage) -> Outcome:
        timeout = self.settings.email_timeout_seconds
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(self._send_blocking, message, timeout)
        except TimeoutError:
            return Outcome(None, f"no answer within {timeout:g} s", took())
        except (smtplib.SMTPException, OSError) as e:
            return Outcome(None, f"{type(e).__name__}: {e}"[:500], took())
        return Outcome(250, None, took())

    def _send_blocking(self, message: EmailMessage, timeout: float) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=timeout) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(message)
