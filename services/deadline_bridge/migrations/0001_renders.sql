-- bridge.renders: one row per render, for the poller and for operators.
CREATE TABLE {schema}.renders (
    render_id text PRIMARY KEY,
    job_id text NOT NULL,
    status text NOT NULL,
    farm_job_id text,
    task_count integer NOT NULL DEFAULT 0,
    tasks_completed integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);
CREATE INDEX renders_by_status ON {schema}.renders (status, render_id);
CREATE INDEX renders_by_job ON {schema}.renders (job_id);
