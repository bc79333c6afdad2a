"""The notifier's read models: the in-app list, endpoints (no secrets), deliveries and their
attempts, preferences and the live feed, for the API (``libs/readmodels/notifications.py``);
deliveries and e-mails for the workers that send them."""

from __future__ import annotations

from contracts.notifications import (
    DeliveryStatus,
    EmailAttempted,
    EmailDeadLettered,
    EmailDelivered,
    EmailScheduled,
    FeedItemAppended,
    NotificationCreated,
    NotificationPreferencesSet,
    NotificationRead,
    WebhookDeliveryAttempted,
    WebhookDeliveryDeadLettered,
    WebhookDeliveryReplayed,
    WebhookDeliveryScheduled,
    WebhookDeliverySucceeded,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookEndpointRegistered,
    WebhookSecretRotated,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent


class NotificationsProjection(ReadModel):
    name, table, key = "notifications", "notifications", ("notification_id",)
    columns = {
        "notification_id": "text",
        "user_id": "text",
        "kind": "text",
        "api_key_id": "text",
        "payload": "jsonb",
        "created_at": "timestamptz",
        "read_at": "timestamptz",
    }

    @on(NotificationCreated, key=lambda e: (e.notification_id,))
    def created(self, row: Row | None, e: NotificationCreated, rec: RecordedEvent) -> Row | None:
        if not e.in_app:  # the user turned this kind off in the app
            return None
        return {
            "notification_id": e.notification_id,
            "user_id": e.user_id,
            "kind": e.kind.value,
            "api_key_id": e.api_key_id,
            "payload": e.payload,
            "created_at": e.at,
            "read_at": None,
        }

    @on(NotificationRead, key=lambda e: (e.notification_id,))
    def read(self, row: Row | None, e: NotificationRead, rec: RecordedEvent) -> Row | None:
        return None if row is None else {**row, "read_at": e.at}


class EndpointsProjection(ReadModel):
    name, table, key = "webhook_endpoints", "webhook_endpoints", ("endpoint_id",)
    columns = {
        "endpoint_id": "text",
        "user_id": "text",
        "url": "text",
        "kinds": "jsonb",
        "api_key_id": "text",
        "created_at": "timestamptz",
        "rotated_at": "timestamptz",
        "disabled_at": "timestamptz",
        "disabled_reason": "text",
    }

    @on(WebhookEndpointRegistered, key=lambda e: (e.endpoint_id,))
    def registered(
        self, row: Row | None, e: WebhookEndpointRegistered, rec: RecordedEvent
    ) -> Row | None:
        return {
            "endpoint_id": e.endpoint_id,
            "user_id": e.user_id,
            "url": e.url,
            "kinds": [k.value for k in e.kinds],
            "api_key_id": e.api_key_id,
            "created_at": e.at,
            "rotated_at": None,
            "disabled_at": None,
            "disabled_reason": None,
        }

    @on(WebhookSecretRotated, key=lambda e: (e.endpoint_id,))
    def rotated(self, row: Row | None, e: WebhookSecretRotated, rec: RecordedEvent) -> Row | None:
        return None if row is None else {**row, "rotated_at": e.at}

    @on(WebhookEndpointDisabled, key=lambda e: (e.endpoint_id,))
    def disabled(
        self, row: Row | None, e: WebhookEndpointDisabled, rec: RecordedEvent
    ) -> Row | None:
        if row is None:
            return None
        return {**row, "disabled_at": e.at, "disabled_reason": e.reason.value}

    @on(WebhookEndpointDeleted, key=lambda e: (e.endpoint_id,))
    def deleted(self, row: Row | None, e: WebhookEndpointDeleted, rec: RecordedEvent) -> Row | None:
        return None


class DeliveriesProjection(ReadModel):
    name, table, key = "deliveries", "deliveries", ("delivery_id",)
    columns = {
        "delivery_id": "text",
        "endpoint_id": "text",
        "user_id": "text",
        "notification_id": "text",
        "kind": "text",
        "status": "text",
        "attempts": "integer",
        "next_attempt_at": "timestamptz",
        "created_at": "timestamptz",
        "updated_at": "timestamptz",
    }

    @on(WebhookDeliveryScheduled, key=lambda e: (e.delivery_id,))
    def scheduled(
        self, row: Row | None, e: WebhookDeliveryScheduled, rec: RecordedEvent
    ) -> Row | None:
        return {
            "delivery_id": e.delivery_id,
            "endpoint_id": e.endpoint_id,
            "user_id": e.user_id,
            "notification_id": e.notification_id,
            "kind": e.kind.value,
            "status": DeliveryStatus.pending.value,
            "attempts": 0,
            "next_attempt_at": e.due_at,
            "created_at": e.at,
            "updated_at": e.at,
        }

    @on(WebhookDeliveryAttempted, key=lambda e: (e.delivery_id,))
    def attempted(
        self, row: Row | None, e: WebhookDeliveryAttempted, rec: RecordedEvent
    ) -> Row | None:
        if row is None:
            return None
        return {
            **row,
            "attempts": e.attempt,
            "next_attempt_at": e.next_attempt_at,
            "updated_at": e.at,
        }

    @on(WebhookDeliverySucceeded, key=lambda e: (e.delivery_id,))
    def succeeded(
        self, row: Row | None, e: WebhookDeliverySucceeded, rec: RecordedEvent
    ) -> Row | None:
        return None if row is None else {**row, "status": DeliveryStatus.succeeded.value}

    @on(WebhookDeliveryDeadLettered, key=lambda e: (e.delivery_id,))
    def dead_lettered(
        self, row: Row | None, e: WebhookDeliveryDeadLettered, rec: RecordedEvent
    ) -> Row | None:
        return None if row is None else {**row, "status": DeliveryStatus.dead_lettered.value}

    @on(WebhookDeliveryReplayed, key=lambda e: (e.delivery_id,))
    def replayed(
        self, row: Row | None, e: WebhookDeliveryReplayed, rec: RecordedEvent
    ) -> Row | None:
        if row is None:
            return None
        status = DeliveryStatus.pending.value
        return {**row, "status": status, "next_attempt_at": e.due_at, "updated_at": e.at}


class AttemptsProjection(ReadModel):
    name, table, key = "delivery_attempts", "delivery_attempts", ("delivery_id", "attempt")
    columns = {
        "delivery_id": "text",
        "attempt": "integer",
        "status_code": "integer",
        "error": "text",
        "duration_ms": "integer",
        "succeeded": "boolean",
        "at": "timestamptz",
    }

    @on(WebhookDeliveryAttempted, key=lambda e: (e.delivery_id, e.attempt))
    def attempted(
        self, row: Row | None, e: WebhookDeliveryAttempted, rec: RecordedEvent
    ) -> Row | None:
        return {
            "delivery_id": e.delivery_id,
            "attempt": e.attempt,
            "status_code": e.status_code,
            "error": e.error,
            "duration_ms": e.duration_ms,
            "succeeded": e.succeeded,
            "at": e.at,
        }


class PreferencesProjection(ReadModel):
    name, table, key = "preferences", "preferences", ("user_id",)
    columns = {"user_id": "text", "kinds": "jsonb", "updated_at": "timestamptz"}

    @on(NotificationPreferencesSet, key=lambda e: (e.user_id,))
    def set(self, row: Row | None, e: NotificationPreferencesSet, rec: RecordedEvent) -> Row | None:
        kinds = {k.value: v.model_dump() for k, v in e.kinds.items()}
        return {"user_id": e.user_id, "kinds": kinds, "updated_at": e.at}


class FeedProjection(ReadModel):
    """Each user's live feed. ``tx_id, position`` (the event's place in the feed) order every
    user's items as they are committed here: one projector writes them, in feed order."""

    name, table, key = "feed", "feed", ("user_id", "seq")
    columns = {
        "user_id": "text",
        "seq": "bigint",
        "item_type": "text",
        "data": "jsonb",
        "at": "timestamptz",
        "tx_id": "bigint",
        "position": "bigint",
    }

    @on(FeedItemAppended, key=lambda e: (e.user_id, e.seq))
    def appended(self, row: Row | None, e: FeedItemAppended, rec: RecordedEvent) -> Row | None:
        return {
            "user_id": e.user_id,
            "seq": e.seq,
            "item_type": e.item_type,
            "data": e.data,
            "at": e.at,
            "tx_id": rec.tx_id,
            "position": rec.position,
        }


class MailsProjection(ReadModel):
    """E-mails of notifications: the mailer finds the due ones here."""

    name, table, key = "mails", "mails", ("email_id",)
    columns = {
        "email_id": "text",
        "user_id": "text",
        "notification_id": "text",
        "kind": "text",
        "status": "text",
        "attempts": "integer",
        "next_attempt_at": "timestamptz",
        "last_error": "text",
        "updated_at": "timestamptz",
    }

    @on(EmailScheduled, key=lambda e: (e.email_id,))
    def scheduled(self, row: Row | None, e: EmailScheduled, rec: RecordedEvent) -> Row | None:
        return {
            "email_id": e.email_id,
            "user_id": e.user_id,
            "notification_id": e.notification_id,
            "kind": e.kind.value,
            "status": DeliveryStatus.pending.value,
            "attempts": 0,
            "next_attempt_at": e.due_at,
            "last_error": None,
            "updated_at": e.at,
        }

    @on(EmailAttempted, key=lambda e: (e.email_id,))
    def attempted(self, row: Row | None, e: EmailAttempted, rec: RecordedEvent) -> Row | None:
        if row is None:
            return None
        return {
            **row,
            "attempts": e.attempt,
            "next_attempt_at": e.next_attempt_at,
            "last_error": e.error,
            "updated_at": e.at,
        }

    @on(EmailDelivered, key=lambda e: (e.email_id,))
    def sent(self, row: Row | None, e: EmailDelivered, rec: RecordedEvent) -> Row | None:
        return None if row is None else {**row, "status": DeliveryStatus.succeeded.value}

    @on(EmailDeadLettered, key=lambda e: (e.email_id,))
    def dead_lettered(
        self, row: Row | None, e: EmailDeadLettered, rec: RecordedEvent
    ) -> Row | None:
        return None if row is None else {**row, "status": DeliveryStatus.dead_lettered.value}
