-- upload.prestaged: each asset's content staged on the farm as soon as its upload completed
-- (the pre-stager's to-do list and its retention sweep). Not read by the gateway.
CREATE TABLE {schema}.prestaged (
    owner_id text NOT NULL,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    bucket text NOT NULL,
    object_key text NOT NULL,
    status text NOT NULL,            -- pending | staged | failed | removed
    stored_at timestamptz NOT NULL,
    staged_at timestamptz,
    failure_code text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (owner_id, sha256)
);
CREATE INDEX prestaged_pending ON {schema}.prestaged (stored_at) WHERE status = 'pending';
CREATE INDEX prestaged_staged ON {schema}.prestaged (staged_at) WHERE status = 'staged';
