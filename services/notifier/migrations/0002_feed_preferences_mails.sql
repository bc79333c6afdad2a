-- notifier.feed: each user's live feed (libs/readmodels/notifications.py). seq is the
-- feed-<user> stream's version: 1, 2, 3, ... per user, the SSE id a client resumes from.
CREATE TABLE {schema}.feed (
    user_id text NOT NULL,
    seq bigint NOT NULL,
    item_type text NOT NULL,            -- job.JobCompleted, wallet.CreditsHeld, notification.created, ...
    data jsonb NOT NULL,
    at timestamptz NOT NULL,
    tx_id bigint NOT NULL,              -- the event's place in the feed: every gateway process
    position bigint NOT NULL,           -- follows new items of all users in this order
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX feed_order ON {schema}.feed (tx_id, position);

-- notifier.preferences: each user's channels per kind (no row: every channel on).
CREATE TABLE {schema}.preferences (
    user_id text PRIMARY KEY,
    kinds jsonb NOT NULL,               -- {kind: {in_app, webhook, email}}
    updated_at timestamptz NOT NULL
);

-- notifier.mails: one row per notification e-mailed; the mailer finds due ones here.
CREATE TABLE {schema}.mails (
    email_id text PRIMARY KEY,
    user_id text NOT NULL,
    notification_id text NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,               -- contracts.notifications.DeliveryStatus
    attempts integer NOT NULL,
    next_attempt_at timestamptz,
    last_error text,
    updated_at timestamptz NOT NULL
);
CREATE INDEX mails_due ON {schema}.mails (next_attempt_at) WHERE status = 'pending';
