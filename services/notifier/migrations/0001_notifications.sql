-- notifier.notifications: the in-app list, one row per notification (libs/readmodels/notifications.py).
CREATE TABLE {schema}.notifications (
    notification_id text PRIMARY KEY,   -- time-sortable: the list's order
    user_id text NOT NULL,
    kind text NOT NULL,                 -- contracts.notifications.NotificationKind
    api_key_id text,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    read_at timestamptz
);
CREATE INDEX notifications_user ON {schema}.notifications (user_id, notification_id DESC);
CREATE INDEX notifications_unread ON {schema}.notifications (user_id, notification_id)
    WHERE read_at IS NULL;

-- notifier.webhook_endpoints: each user's endpoints, never their secrets.
CREATE TABLE {schema}.webhook_endpoints (
    endpoint_id text PRIMARY KEY,
    user_id text NOT NULL,
    url text NOT NULL,
    kinds jsonb NOT NULL,               -- list of kinds
    api_key_id text,
    created_at timestamptz NOT NULL,
    rotated_at timestamptz
);
CREATE INDEX webhook_endpoints_user ON {schema}.webhook_endpoints (user_id, endpoint_id);

-- notifier.deliveries: one row per (notification, endpoint); the delivery worker finds due
-- ones here, the API lists them per endpoint.
CREATE TABLE {schema}.deliveries (
    delivery_id text PRIMARY KEY,       -- time-sortable
    endpoint_id text NOT NULL,
    user_id text NOT NULL,
    notification_id text NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,               -- contracts.notifications.DeliveryStatus
    attempts integer NOT NULL,
    next_attempt_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX deliveries_endpoint ON {schema}.deliveries (endpoint_id, delivery_id DESC);
CREATE INDEX deliveries_due ON {schema}.deliveries (next_attempt_at) WHERE status = 'pending';

-- notifier.delivery_attempts: every POST of every delivery, with its answer.
CREATE TABLE {schema}.delivery_attempts (
    delivery_id text NOT NULL,
    attempt integer NOT NULL,
    status_code integer,
    error text,
    duration_ms integer NOT NULL,
    succeeded boolean NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
