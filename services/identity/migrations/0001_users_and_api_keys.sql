-- identity.users and identity.api_keys: the gateway reads them (column names are an
-- interface).
CREATE TABLE {schema}.users (
    user_id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    display_name text NOT NULL,
    role text NOT NULL,
    status text NOT NULL,
    registered_at timestamptz NOT NULL,
    approved_at timestamptz,
    password_hash text NOT NULL
);
CREATE UNIQUE INDEX users_email_lower ON {schema}.users (lower(email));
CREATE INDEX users_status ON {schema}.users (status, user_id);

CREATE TABLE {schema}.api_keys (
    key_id text PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    scopes text[] NOT NULL,
    key_hash text NOT NULL,
    spend_cap_credits numeric,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON {schema}.api_keys (user_id, key_id);
