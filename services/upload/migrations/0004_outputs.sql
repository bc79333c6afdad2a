-- upload.outputs: one row per output of a job in the outputs bucket (a rendered frame, or
-- the zip of a job's frames). Read by the gateway (libs/readmodels/outputs.py) and by the
-- service's archive builder and retention sweeper.
CREATE TABLE {schema}.outputs (
    output_id text PRIMARY KEY,
    job_id text NOT NULL,
    owner_id text NOT NULL,
    kind text NOT NULL,              -- frame | archive
    frame integer,                   -- null for the archive
    render_kind text,                -- full | test; null for the archive
    status text NOT NULL,            -- building | ready | failed | deleted
    bucket text NOT NULL,
    object_key text NOT NULL,
    file_name text NOT NULL,
    size_bytes bigint,               -- null while an archive is built (or if that failed)
    sha256 text,                     -- lowercase hex; null as size_bytes
    stored_at timestamptz,
    expires_at timestamptz,          -- null while the job runs
    deleted_at timestamptz
);
CREATE INDEX outputs_job ON {schema}.outputs (job_id, output_id);
CREATE INDEX outputs_expiring ON {schema}.outputs (expires_at) WHERE status <> 'deleted';
CREATE INDEX outputs_building ON {schema}.outputs (job_id) WHERE status = 'building';
