-- upload.uploads: one row per upload session (a scene file, or one asset of a manifest).
-- Read by the gateway (libs/readmodels/uploads.py, libs/readmodels/scenes.py).
CREATE TABLE {schema}.uploads (
    upload_id text PRIMARY KEY,
    owner_id text NOT NULL,
    kind text NOT NULL,              -- scene | asset
    status text NOT NULL,            -- uploading | completed | aborted | expired
    file_name text NOT NULL,
    size_bytes bigint NOT NULL,
    sha256 text NOT NULL,            -- lowercase hex, as the client declared it
    bucket text NOT NULL,
    object_key text NOT NULL,
    part_size_bytes bigint NOT NULL,
    part_count integer NOT NULL,
    parts_confirmed integer NOT NULL,
    bytes_confirmed bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    completed_at timestamptz,
    version integer NOT NULL
);
CREATE INDEX uploads_owner ON {schema}.uploads (owner_id, upload_id DESC);
CREATE INDEX uploads_open ON {schema}.uploads (expires_at) WHERE status = 'uploading';

-- upload.manifests: one row per scene sent as a manifest of files.
CREATE TABLE {schema}.manifests (
    manifest_id text PRIMARY KEY,
    owner_id text NOT NULL,
    status text NOT NULL,            -- waiting_for_files | complete
    main_file text NOT NULL,         -- relative path of the file to render
    file_count integer NOT NULL,
    total_bytes bigint NOT NULL,
    content_sha256 text NOT NULL,    -- hash of the sorted (path, size, sha256) list
    files jsonb NOT NULL,            -- [{"path", "size_bytes", "sha256"}], sorted by path
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    completed_at timestamptz,
    version integer NOT NULL
);
CREATE INDEX manifests_owner ON {schema}.manifests (owner_id, manifest_id DESC);

-- upload.assets: the content-addressed files each user holds (per user: no cross-tenant
-- dedup, so nobody learns what another user has).
CREATE TABLE {schema}.assets (
    owner_id text NOT NULL,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    bucket text NOT NULL,
    object_key text NOT NULL,
    upload_id text NOT NULL,
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (owner_id, sha256)
);
