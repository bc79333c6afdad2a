-- scheduler.renders: which render each job has and how it stands. Not a projection: the
-- scheduler writes it in the transaction that claims each event in its inbox.
CREATE TABLE {schema}.renders (
    job_id text PRIMARY KEY,
    render_id text NOT NULL,
    status text NOT NULL,
    farm_job_id text,
    updated_at timestamptz NOT NULL
);
CREATE INDEX renders_by_status ON {schema}.renders (status, job_id);
