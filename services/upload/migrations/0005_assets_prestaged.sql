-- Staging as uploaded: each asset's content copied to the farm as soon as its upload
-- completed (the pre-stager's to-do list and its retention sweep). Assets stored before
-- this are pending too; the pre-stager takes only those stored within its retention.
ALTER TABLE {schema}.assets
    ADD COLUMN prestage_status text NOT NULL DEFAULT 'pending',  -- pending | staged | failed | removed
    ADD COLUMN staged_at timestamptz,
    ADD COLUMN prestage_failure_code text;
CREATE INDEX assets_prestage_pending ON {schema}.assets (stored_at)
    WHERE prestage_status = 'pending';
CREATE INDEX assets_prestaged ON {schema}.assets (staged_at) WHERE prestage_status = 'staged';
