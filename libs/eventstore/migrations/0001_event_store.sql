-- The event store's own tables, in every service schema.
CREATE TABLE {schema}.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id uuid NOT NULL UNIQUE,
    stream_id text NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    type text NOT NULL,
    schema_version integer NOT NULL,
    data jsonb NOT NULL,
    metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_feed ON {schema}.events (tx_id, global_position);

CREATE TABLE {schema}.snapshots (
    stream_id text PRIMARY KEY,
    version integer NOT NULL,
    schema_version integer NOT NULL,
    state jsonb NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.checkpoints (
    name text PRIMARY KEY,
    tx_id xid8 NOT NULL DEFAULT '0',
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.processed_commands (
    command_id text PRIMARY KEY,
    command_type text NOT NULL,
    reply jsonb NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.inbox (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events a projection could not apply (error set), and the later events of the same stream
-- it holds back until the stream is retried (error NULL).
CREATE TABLE {schema}.quarantine (
    projection text NOT NULL,
    stream_id text NOT NULL,
    event_id uuid NOT NULL,
    version integer NOT NULL,
    global_position bigint NOT NULL,
    event_type text NOT NULL,
    error text,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, event_id)
);
CREATE INDEX quarantine_stream ON {schema}.quarantine (projection, stream_id, version);
