-- job.frames shows what the farm measured of the task that rendered each frame: its render
-- seconds and peak memory. Rows from before are filled from their events, as a rebuild
-- would fill them (peak memory was not kept on the job's events before: null).
ALTER TABLE {schema}.frames
    ADD COLUMN render_seconds double precision,
    ADD COLUMN peak_memory_bytes bigint;

UPDATE {schema}.frames f
SET render_seconds = (e.data->>'render_seconds')::double precision
FROM {schema}.events e
WHERE e.type = 'job.JobFramesRendered'
  AND e.data->>'job_id' = f.job_id
  AND e.data->>'render_id' = f.render_id
  AND (e.data->>'task_id')::integer = f.task_id;
