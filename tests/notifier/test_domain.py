"""The notifier's rules without I/O: triggers, notifications, endpoints, retries, signatures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.errors import NotificationNotFound, WebhookDeliveryNotFound, WebhookLimitReached
from contracts.notifications import (
    CATALOGUE,
    MAX_ENDPOINTS_PER_USER,
    DeliveryStatus,
    NotificationKind,
    SealedSecret,
    WebhookDeliveryDeadLettered,
    WebhookDeliverySucceeded,
)
from contracts.wallet import CauseKind, CreditsDebited, HoldCaptured
from services.notifier.domain import (
    Delivery,
    Notification,
    Outcome,
    RetryPolicy,
    Webhooks,
    derived_id,
    notification_id,
    trigger_of,
)
from services.notifier.sealing import SecretBox, new_key
from services.notifier.signing import new_secret, sign, webhook_headers
from tests.notifier.events import AT, triggers

LOW = Decimal("10")
POLICY = RetryPolicy(base_seconds=5, max_delay_seconds=3600, window_seconds=86400)
DOWN = Outcome(None, "connection refused", 3)
OK = Outcome(204, None, 12)


def test_every_kind_of_the_catalogue_has_its_trigger() -> None:
    made = triggers("usr_1", "job_1", "ord_1")
    assert set(made) == set(NotificationKind) == set(CATALOGUE)
    for kind, event in made.items():
        trigger = trigger_of(event, LOW)
        assert trigger is not None and trigger.kind is kind
        assert event.event_type in CATALOGUE[kind].triggers
        assert isinstance(trigger.payload, CATALOGUE[kind].payload)


def test_low_balance_is_told_once_when_available_credits_fall_below_the_threshold() -> None:
    def debit(balance: str, amount: str) -> CreditsDebited:
        return CreditsDebited(
            user_id="usr_1",
            transfer_id=f"adj:{balance}",
            at=AT,
            balance_after=Decimal(balance),
            held_after=Decimal(0),
            amount=Decimal(amount),
            cause=CauseKind.adjustment,
            cause_id="x",
        )

    assert trigger_of(debit("9.99", "0.01"), LOW) is not None  # 10.00 -> 9.99
    assert trigger_of(debit("8.00", "1.00"), LOW) is None  # below before already
    assert trigger_of(debit("10.00", "5.00"), LOW) is None  # not below after
    capture = HoldCaptured(
        user_id="usr_1",
        transfer_id="capture:job",
        at=AT,
        balance_after=Decimal(1),
        held_after=Decimal(0),
        hold_id="h",
        job_id="job_1",
        captured=Decimal(5),
        released=Decimal(0),
    )
    assert trigger_of(capture, LOW) is None  # not a trigger at all


def test_ids_derive_from_their_seed_and_sort_by_time() -> None:
    event_id = uuid.uuid4()
    assert notification_id(event_id, "usr_1", AT) == notification_id(event_id, "usr_1", AT)
    assert notification_id(event_id, "usr_1", AT) != notification_id(event_id, "usr_2", AT)
    later = derived_id("ntf", AT + timedelta(milliseconds=1), "a")
    assert derived_id("ntf", AT, "z") < later


def test_a_notification_is_made_once_and_read_once_by_its_owner() -> None:
    trigger = trigger_of(triggers("usr_1", "job_1", "ord_1")[NotificationKind.upload_expired], LOW)
    assert trigger is not None
    n = Notification.rehydrate("ntf_1", [])
    event_id = uuid.uuid4()
    assert len(n.create("usr_1", trigger, None, event_id, "upload.UploadExpired", True, AT)) == 1
    assert n.create("usr_1", trigger, None, event_id, "upload.UploadExpired", True, AT) == []
    with pytest.raises(NotificationNotFound):
        n.mark_read("usr_2", AT)
    assert len(n.mark_read("usr_1", AT)) == 1
    assert n.mark_read("usr_1", AT) == []


BOX = SecretBox.from_settings(new_key(), "")


def sealed(endpoint_id: str, secret: str | None = None) -> SealedSecret:
    """A fresh secret (or ``secret``) of ``usr_1``'s endpoint, sealed as the notifier does."""
    return BOX.seal(secret or new_secret(), "usr_1", endpoint_id)


def test_endpoints_take_their_kinds_and_their_keys_jobs() -> None:
    hooks = Webhooks.rehydrate("usr_1", [])
    every = list(NotificationKind)
    hooks.register("whk_all", "https://a.example/h", every, None, sealed("whk_all"), AT)
    hooks.register("whk_key", "https://b.example/h", every, "key_1", sealed("whk_key"), AT)
    pay = [NotificationKind.payment_failed]
    hooks.register("whk_pay", "https://c.example/h", pay, None, sealed("whk_pay"), AT)

    def ids(kind: NotificationKind, key: str | None, about_job: bool = True) -> list[str]:
        return [e.endpoint_id for e in hooks.targets(kind, key, about_job)]

    assert ids(NotificationKind.render_completed, None) == ["whk_all"]
    assert ids(NotificationKind.render_completed, "key_1") == ["whk_all", "whk_key"]
    assert ids(NotificationKind.render_completed, "key_2") == ["whk_all"]
    assert ids(NotificationKind.payment_failed, None, False) == ["whk_all", "whk_key", "whk_pay"]
    hooks.delete("whk_all", AT)
    assert ids(NotificationKind.render_completed, "key_1") == ["whk_key"]


def test_a_user_has_a_bounded_number_of_endpoints() -> None:
    hooks = Webhooks.rehydrate("usr_1", [])
    for n in range(MAX_ENDPOINTS_PER_USER):
        hooks.register(
            f"whk_{n}", "https://a.example", [NotificationKind.balance_low], None, sealed("w"), AT
        )
    low = [NotificationKind.balance_low]
    with pytest.raises(WebhookLimitReached):
        hooks.register("whk_x", "https://a.example", low, None, sealed("whk_x"), AT)


def test_after_a_rotation_both_secrets_sign_until_the_grace_ends() -> None:
    hooks = Webhooks.rehydrate("usr_1", [])
    old, new = new_secret(), new_secret()
    first = hooks.register(
        "whk_1", "https://a.example", list(NotificationKind), None, sealed("whk_1", old), AT
    )
    rotated = hooks.rotate("whk_1", sealed("whk_1", new), timedelta(hours=24), AT)
    assert rotated.secrets(AT + timedelta(hours=1)) == [rotated.secret, first.secret]
    assert rotated.secrets(AT + timedelta(hours=24)) == [rotated.secret]
    body = b'{"type":"balance.low"}'
    signing = [BOX.open(s, "usr_1", "whk_1") for s in rotated.secrets(AT)]
    assert signing == [new, old]
    headers = webhook_headers(signing, "ntf_1", int(datetime.now(UTC).timestamp()), body)
    for secret in (old, new):  # a receiver holding either one accepts it
        Webhook(secret).verify(body, headers)


def test_our_signature_is_the_standard_one_and_a_forgery_is_refused() -> None:
    secret, now = new_secret(), datetime.now(UTC)
    body = b'{"data":{}}'
    theirs = Webhook(secret).sign("msg_1", now, body.decode())
    assert sign(secret, "msg_1", int(now.timestamp()), body) == theirs
    headers = webhook_headers([secret], "msg_1", int(now.timestamp()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"data":{"x":1}}', headers)
    stale = webhook_headers([secret], "msg_1", int(now.timestamp()) - 600, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


def _delivery() -> Delivery:
    hooks = Webhooks.rehydrate("usr_1", [])
    endpoint = hooks.register(
        "whk_1", "https://a.example", list(NotificationKind), None, sealed("whk_1"), AT
    )
    trigger = trigger_of(triggers("usr_1", "job_1", "ord_1")[NotificationKind.balance_low], LOW)
    assert trigger is not None
    n = Notification.rehydrate("ntf_1", [])
    n.create("usr_1", trigger, None, uuid.uuid4(), "wallet.CreditsHeld", True, AT)
    d = Delivery.rehydrate("dlv_1", [])
    assert len(d.schedule(endpoint, n, AT)) == 1
    assert d.schedule(endpoint, n, AT) == []
    return d


def test_failures_back_off_exponentially_with_jitter_and_success_ends_it() -> None:
    d, at = _delivery(), AT
    for attempt in range(1, 5):
        d.attempted(DOWN, POLICY, 0.5, at)
        assert d.next_attempt_at is not None
        step = 5 * 2 ** (attempt - 1)
        assert d.next_attempt_at - at == timedelta(seconds=step * 0.75)
        at = d.next_attempt_at
    [_, done] = d.attempted(OK, POLICY, 0.5, at)
    assert isinstance(done, WebhookDeliverySucceeded) and done.attempts == 5
    assert d.status is DeliveryStatus.succeeded and d.next_attempt_at is None
    assert d.attempted(OK, POLICY, 0.5, at) == []


def test_a_delivery_failing_for_the_whole_window_is_dead_lettered_and_can_be_replayed() -> None:
    d, at = _delivery(), AT
    events = []
    while d.status is DeliveryStatus.pending:
        events = d.attempted(DOWN, POLICY, 0.99, at)
        at = d.next_attempt_at or at
    assert isinstance(events[-1], WebhookDeliveryDeadLettered)
    assert events[-1].last_error == "connection refused"
    assert at - AT <= timedelta(days=1)
    tried = d.attempts
    with pytest.raises(WebhookDeliveryNotFound):
        d.replay("usr_2", at)
    later = at + timedelta(days=3)
    d.replay("usr_1", later)
    assert d.status.value == "pending" and d.next_attempt_at == later
    d.attempted(OK, POLICY, 0.0, later)
    assert d.status is DeliveryStatus.succeeded and d.attempts == tried + 1
