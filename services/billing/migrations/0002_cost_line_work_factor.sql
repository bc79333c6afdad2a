-- A cost line's work factor: a frame's work at the job's settings over its task's (above 1
-- for a test render at reduced quality). Every line before it was at the job's settings.
ALTER TABLE {schema}.cost_lines ADD COLUMN work_factor numeric NOT NULL DEFAULT 1;
