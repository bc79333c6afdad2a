-- Erased users (identity.UserErased) all read email 'erased': the address stays unique
-- among the others only.
ALTER TABLE {schema}.users DROP CONSTRAINT users_email_key;
DROP INDEX {schema}.users_email_lower;
CREATE UNIQUE INDEX users_email_lower ON {schema}.users (lower(email)) WHERE email <> 'erased';
