-- upload.uploads: the media type declared for the object (null: binary/octet-stream).
ALTER TABLE {schema}.uploads ADD COLUMN content_type text;
-- The open asset session of a content, per owner (a manifest's missing files).
CREATE INDEX uploads_open_assets ON {schema}.uploads (owner_id, sha256)
    WHERE kind = 'asset' AND status IN ('uploading', 'completing');
-- Sessions whose parts the store is joining (the completer's work list).
CREATE INDEX uploads_completing ON {schema}.uploads (updated_at) WHERE status = 'completing';
