"""NATS JetStream: relay of committed events, durable consumers with a dead-letter stream,
and request/reply commands with idempotency keys and typed errors."""
