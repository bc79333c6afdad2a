-- upload.uploads: the media type declared for the object (null: binary/octet-stream).
ALTER TABLE {schema}.uploads ADD COLUMN content_type text;
-- The open asset session of a content, per owner (a manifest's missing files).
CREATE INDEX uploads_open_assets ON {schema}.uploads (owner_id, sha256)
    WHERE kind = 'asset' AND status IN ('uploading', 'completing');
-- Sessions whose parts the store is joining (the completer's work list).
CREATE INDEX uploads_completing ON {schema}.uploads (updated_at) WHERE status = 'completing';
COMMENT ON COLUMN {schema}.uploads.status IS
    'uploading | completing (the store joins the parts) | completed | aborted | expired';
COMMENT ON COLUMN {schema}.manifests.files IS
    '[{"path", "size_bytes", "sha256", "upload_id"}] sorted by path; upload_id: the asset session given to the content at submission, null if its owner held it';
