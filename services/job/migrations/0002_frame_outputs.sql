-- job.frames names each frame's output in the outputs bucket, no longer a farm path.
-- Frames recorded before outputs were stored keep null (a rebuild gives the same).
ALTER TABLE {schema}.frames
    ADD COLUMN output_id text,
    ADD COLUMN object_key text,
    DROP COLUMN path;
