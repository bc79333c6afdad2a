-- The state of each process-manager instance (libs/process.py), written in the transaction
-- that claims the event in the inbox, so each event changes it exactly once.
CREATE TABLE {schema}.process_state (
    manager text NOT NULL,
    key text NOT NULL,
    state jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (manager, key)
);
