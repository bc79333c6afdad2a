-- Administrators' job views (libs/readmodels/jobs.py, the gateway's /v1/admin/jobs):
-- `progressed_at`, when the job's last progress event was recorded (every event of its
-- stream but billing's cost records and the owner's edits), for the stuck-job view; and
-- `render_kind`, which render of the job the farm may be busy with (`test`, `full`; null:
-- none), for the pool filter. Rows from before are filled as a rebuild would fill them,
-- near enough (a rebuild gives the exact values).
ALTER TABLE {schema}.jobs
    ADD COLUMN progressed_at timestamptz,
    ADD COLUMN render_kind text;

UPDATE {schema}.jobs
SET progressed_at = updated_at,
    render_kind = CASE
        WHEN status = 'test_rendering' THEN 'test'
        WHEN status IN ('queued', 'rendering', 'cancelling') THEN 'full'
        WHEN status = 'paused' AND view->>'paused_from' IN ('queued', 'rendering') THEN 'full'
    END;

CREATE INDEX jobs_not_progressing ON {schema}.jobs (progressed_at)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX jobs_render_kind ON {schema}.jobs (render_kind, job_id DESC)
    WHERE render_kind IS NOT NULL;
