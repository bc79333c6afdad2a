"""E-mail on real servers with a real SMTP sink (aiosmtpd): every kind, its events delivered
twice, is e-mailed once to the address identity registered; a kind turned off by e-mail is
not sent (and one turned off in the app is not listed); a sink that is down for a while gets
every message once it is back; an erased user's address is shredded and mailed no more."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.identity import Role, UserErased, UserRegistered
from contracts.notifications import (
    KindChannelsChange,
    NotificationKind,
    NotificationPreferences,
    RecipientErased,
    SetNotificationPreferences,
)
from contracts.uploads import UploadExpired
from deploy.local import servers as local
from libs.bus.commands import CommandClient
from libs.readmodels.notifications import NotificationsQuery
from libs.runtime import ServiceRuntime
from services.notifier.settings import NotifierSettings
from tests.conftest import Env
from tests.notifier.conftest import ACTOR, Publisher
from tests.notifier.events import owners, triggers
from tests.notifier.test_service import tables_holding
from tests.waiting import until

USER = "usr_mail"
ADDRESS = "ada@example.com"


class Sink:
    """The local SMTP sink on a port of its own, storing messages in a Maildir."""

    def __init__(self, root: Path) -> None:
        self.maildir = root / "mail"
        self.port = local.free_port()
        self.handle: local.ServerHandle | None = None

    def start(self) -> None:
        self.handle = local.start_smtp(self.maildir, self.port)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None

    def messages(self) -> list[Any]:
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(self.maildir))


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def notifier_settings(env: Env, sink: Sink) -> NotifierSettings:
    return env.settings(
        NotifierSettings,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_timeout_seconds=3,
        email_retry_base_seconds=0.1,
        email_retry_max_delay_seconds=0.4,
        email_poll_seconds=0.1,
    )


def registered(user: str, email: str) -> UserRegistered:
    return UserRegistered(
        user_id=user,
        email=email,
        display_name="Ada",
        role=Role.user,
        password_hash="redacted",
        registered_at=datetime.now(UTC),
    )


async def publish_every_kind(publisher: Publisher, user: str) -> None:
    await publisher.publish(registered(user, ADDRESS))
    for event in owners(user, f"job_{user}", f"ord_{user}"):
        await publisher.publish(event)
    for event in triggers(user, f"job_{user}", f"ord_{user}").values():
        await publisher.publish(event)  # each twice


def kinds_of(messages: list[Any]) -> list[str]:
    return sorted(m["X-Renderfarm-Kind"] for m in messages)


async def test_every_kind_is_mailed_once_to_a_sink_that_was_down_for_a_while(
    notifier: ServiceRuntime[Any], publisher: Publisher, sink: Sink
) -> None:
    await publish_every_kind(publisher, USER)
    pool, schema = notifier.pool, notifier.schema

    async def failed_twice() -> bool:
        attempts = await pool.fetch(f"SELECT attempts FROM {schema}.mails WHERE user_id = $1", USER)
        return len(attempts) == len(NotificationKind) and all(a[0] >= 2 for a in attempts)

    await until(failed_twice, "every e-mail to fail twice while the sink is down", timeout=60)
    sink.start()

    async def all_sent() -> list[Any] | None:
        found = sink.messages()
        return found if len(found) >= len(NotificationKind) else None

    await until(all_sent, "every e-mail at the sink once it is up", timeout=60)

    async def recorded() -> bool:
        rows = await pool.fetch(f"SELECT status FROM {schema}.mails WHERE user_id = $1", USER)
        return all(r[0] == "succeeded" for r in rows)

    await until(recorded, "every e-mail recorded as sent", timeout=30)
    found = sink.messages()
    assert kinds_of(found) == sorted(k.value for k in NotificationKind)  # once each
    assert {m["To"] for m in found} == {ADDRESS}
    ids = {m["X-Renderfarm-Notification"] for m in found}
    notifications = await NotificationsQuery(pool, schema).notifications(USER, None, False, 100)
    assert ids == {n.notification_id for n in notifications}


@pytest.fixture
def commands(notifier: ServiceRuntime[Any]) -> CommandClient:
    return CommandClient(notifier.nc, notifier.settings, timeout=15)


async def test_kinds_turned_off_are_not_mailed_or_listed(
    notifier: ServiceRuntime[Any], publisher: Publisher, sink: Sink, commands: CommandClient
) -> None:
    sink.start()
    user = "usr_prefs"
    off_by_mail = NotificationKind.balance_low
    off_in_app = NotificationKind.upload_expired
    prefs = await commands.send(
        SetNotificationPreferences(
            user_id=user,
            changes={
                off_by_mail: KindChannelsChange(email=False),
                off_in_app: KindChannelsChange(in_app=False),
            },
        ),
        NotificationPreferences,
        command_id="prefs:1",
        actor=ACTOR,
    )
    assert prefs.kinds[off_by_mail].email is False and prefs.kinds[off_by_mail].in_app is True
    assert prefs.kinds[off_in_app].in_app is False and prefs.kinds[off_in_app].email is True
    q = NotificationsQuery(notifier.pool, notifier.schema)
    assert (await q.preferences(user))[off_by_mail].email is False
    await publish_every_kind(publisher, user)
    wanted = sorted(k.value for k in NotificationKind if k is not off_by_mail)

    async def mailed() -> list[Any] | None:
        found = sink.messages()
        return found if len(found) >= len(wanted) else None

    await until(mailed, "the e-mails of the kinds left on", timeout=60)

    async def everything_made() -> bool:
        rows = await q.notifications(user, None, False, 100)
        head = await q.feed_head(user)
        return len(rows) == len(NotificationKind) - 1 and head > 0

    await until(everything_made, "the notifications listed", timeout=30)
    assert kinds_of(sink.messages()) == wanted
    listed = await q.notifications(user, None, False, 100)
    assert off_in_app not in {n.kind for n in listed}
    feed = await q.feed_after(user, 0, 100)
    made = [r.data["kind"] for r in feed if r.item_type == "notification.created"]
    assert off_in_app.value not in made and off_by_mail.value in made


async def test_an_erased_users_address_is_shredded_once_and_never_recorded_again(
    notifier: ServiceRuntime[Any], publisher: Publisher, sink: Sink
) -> None:
    sink.start()
    user, address = "usr_erased", "Grace.Hopper@Example.com"
    kind = NotificationKind.upload_expired
    await publisher.publish(registered(user, address))
    await publisher.publish(triggers(user, "j", "o")[kind])

    async def mailed() -> list[Any] | None:
        return sink.messages() or None

    [message] = await until(mailed, "the e-mail to the registered address", timeout=30)
    assert message["To"] == address
    assert await tables_holding(notifier, address) != []  # the scan finds it
    erased = UserErased(user_id=user, erased_by="usr_admin", erased_at=datetime.now(UTC))
    await publisher.publish(erased)  # twice under one event id
    await publisher.publish(erased)  # and again under another
    await publisher.publish(registered(user, address))  # its old registration, redelivered
    later = UploadExpired(upload_id="upl_after", owner_id=user, at=datetime.now(UTC))
    await publisher.publish(later)
    pool, schema = notifier.pool, notifier.schema

    async def dead_lettered() -> Any:
        return await pool.fetchval(
            f"SELECT last_error FROM {schema}.mails WHERE user_id = $1 AND status = $2",
            user,
            "dead_lettered",
        )

    reason = await until(dead_lettered, "the e-mail after the erasure to be dead-lettered")
    assert reason == "the user was erased: no e-mail address is kept"
    assert await tables_holding(notifier, address) == []
    tombstones = await pool.fetchval(
        f"SELECT count(*) FROM {schema}.events WHERE type = $1", RecipientErased.event_type
    )
    assert tombstones == 1
    assert len(sink.messages()) == 1  # nothing sent after the erasure
