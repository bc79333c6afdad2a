-- job.jobs: one row per job, for the gateway (filter columns and the envelope it serves as
-- is); `view` is the projection's own state (JobView), not the aggregate's.
CREATE TABLE {schema}.jobs (
    job_id text PRIMARY KEY,
    owner_id text NOT NULL,
    status text NOT NULL,
    version integer NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    view jsonb NOT NULL,
    envelope text NOT NULL
);
CREATE INDEX jobs_owner ON {schema}.jobs (owner_id, job_id DESC);
CREATE INDEX jobs_by_state ON {schema}.jobs (owner_id, status, job_id DESC);
CREATE INDEX jobs_status ON {schema}.jobs (status, job_id DESC);

-- job.frames: one row per rendered frame of a job, the file the farm wrote for it.
CREATE TABLE {schema}.frames (
    job_id text NOT NULL,
    frame integer NOT NULL,
    render_id text NOT NULL,
    task_id integer NOT NULL,
    path text NOT NULL,
    size_bytes bigint NOT NULL,
    sha256 text NOT NULL,
    worker text NOT NULL,
    rendered_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, frame)
);
