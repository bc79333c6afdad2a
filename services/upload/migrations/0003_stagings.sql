-- upload.stagings: one row per job whose scene is staged to the farm (the stager's to-do
-- list and what operators look at). Not read by the gateway.
CREATE TABLE {schema}.stagings (
    job_id text PRIMARY KEY,
    owner_id text NOT NULL,
    scene_id text NOT NULL,
    content_sha256 text NOT NULL,
    staged_key text NOT NULL,
    status text NOT NULL,            -- requested | copying | staged | failed | cancelled
    bytes_total bigint NOT NULL,
    bytes_done bigint NOT NULL,
    reused boolean,
    failure_code text,
    requested_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX stagings_pending ON {schema}.stagings (requested_at)
    WHERE status IN ('requested', 'copying');
