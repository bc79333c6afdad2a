-- wallet.balances: one row per wallet that has had a transfer. Read by the gateway
-- (libs/readmodels/wallet.py); a user with no row has zeros.
CREATE TABLE {schema}.balances (
    user_id text PRIMARY KEY,
    currency text NOT NULL,          -- credits
    balance numeric(16, 2) NOT NULL, -- posted credits in minus credits out
    held numeric(16, 2) NOT NULL,    -- pending holds
    available numeric(16, 2) NOT NULL, -- balance - held (below zero after a refund)
    version integer NOT NULL,        -- the wallet stream's version
    updated_at timestamptz NOT NULL
);

-- wallet.transfers: one row per applied transfer, in the wallet's stream order (version).
-- Read by the gateway (libs/readmodels/wallet.py), newest first, keyset-paged on version.
CREATE TABLE {schema}.transfers (
    user_id text NOT NULL,
    version integer NOT NULL,        -- the ordering column: the event's version in its stream
    transfer_id text NOT NULL,
    kind text NOT NULL,              -- contracts.wallet.TransferKind
    amount numeric(16, 2) NOT NULL,  -- what the transfer moved (a capture: what it posted)
    direction text NOT NULL,         -- in | out | none (a reservation: the balance is unchanged)
    balance_change numeric(16, 2) NOT NULL,
    held_change numeric(16, 2) NOT NULL,
    cause text NOT NULL,             -- contracts.wallet.CauseKind
    cause_id text NOT NULL,
    job_id text,
    hold_id text,
    balance_after numeric(16, 2) NOT NULL,
    held_after numeric(16, 2) NOT NULL,
    available_after numeric(16, 2) NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (user_id, version),
    UNIQUE (user_id, transfer_id)
);

-- wallet.holds: one row per hold, for the sweeper (pending holds past expires_at).
CREATE TABLE {schema}.holds (
    user_id text NOT NULL,
    hold_id text NOT NULL,
    job_id text NOT NULL,
    held numeric(16, 2) NOT NULL,    -- what the hold reserves (or reserved, once resolved)
    status text NOT NULL,            -- pending | captured | voided | expired
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, hold_id)
);
CREATE INDEX holds_pending ON {schema}.holds (expires_at) WHERE status = 'pending';
