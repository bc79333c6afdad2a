-- The action log: one row per API call, appended in batches, partitioned by day (UTC).
-- Partitions (action_log_pYYYYMMDD) are created ahead and dropped after the retention by
-- the gateway's flusher (services/gateway/actionlog.py). Rows are never updated.
CREATE TABLE {schema}.action_log (
    at timestamptz NOT NULL,
    request_id text NOT NULL,
    operation_id text,
    method text NOT NULL,
    path text NOT NULL,
    user_id text,
    api_key_id text,
    target_ids jsonb NOT NULL DEFAULT '{}',
    status_code integer NOT NULL,
    outcome text NOT NULL,
    error_code text,
    latency_ms double precision NOT NULL,
    trace_id text,
    client_ip text,
    -- A retried flush whose first attempt did commit stores nothing twice.
    UNIQUE (request_id, at)
) PARTITION BY RANGE (at);

CREATE INDEX action_log_user_at ON {schema}.action_log (user_id, at);
