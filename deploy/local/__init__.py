"""Run PostgreSQL, NATS and Valkey (and the services) as local processes, without Docker."""
