-- The test-render deadline watch (services/job/deadlines.py) looks only at jobs whose test
-- render has not ended.
CREATE INDEX jobs_test_render_open ON {schema}.jobs (job_id)
    WHERE view->'test_render'->>'status' IN ('requested', 'rendering');
