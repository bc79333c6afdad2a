-- Endpoints disabled when their API key is revoked (notifier.WebhookEndpointDisabled): listed
-- with the time and reason; the delivery worker dead-letters their pending deliveries at once.
ALTER TABLE {schema}.webhook_endpoints
    ADD COLUMN disabled_at timestamptz,
    ADD COLUMN disabled_reason text;       -- contracts.notifications.EndpointDisabledReason
CREATE INDEX webhook_endpoints_disabled ON {schema}.webhook_endpoints (endpoint_id)
    WHERE disabled_at IS NOT NULL;
CREATE INDEX deliveries_pending_endpoint ON {schema}.deliveries (endpoint_id)
    WHERE status = 'pending';
