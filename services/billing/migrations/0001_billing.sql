-- billing.prices: one row per published price version.
CREATE TABLE {schema}.prices (
    version integer PRIMARY KEY,
    effective_from timestamptz NOT NULL,
    prices jsonb NOT NULL,
    published_by text NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX prices_effective ON {schema}.prices (effective_from, version);

-- billing.job_costs: one row per job billing opened, its totals after the latest event.
CREATE TABLE {schema}.job_costs (
    job_id text PRIMARY KEY,
    owner_id text NOT NULL,
    api_key_id text,
    status text NOT NULL,
    estimate jsonb,
    estimate_low_credits numeric,
    estimate_credits numeric,
    estimate_high_credits numeric,
    cap_credits numeric,
    held_credits numeric NOT NULL,
    so_far_credits numeric NOT NULL,
    captured_credits numeric NOT NULL,
    released_credits numeric NOT NULL,
    awaiting_reason text,
    lines integer NOT NULL,
    version integer NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX job_costs_owner ON {schema}.job_costs (owner_id, job_id);

-- billing.cost_lines: every cost line of a job, in the order recorded (seq).
CREATE TABLE {schema}.cost_lines (
    job_id text NOT NULL,
    line_id text NOT NULL,
    seq bigint NOT NULL,
    cause text NOT NULL,
    render_id text,
    task_id integer,
    frames jsonb NOT NULL,
    worker text,
    instance_type text,
    seconds numeric NOT NULL,
    price_per_hour_credits numeric,
    price_version integer,
    amount_credits numeric NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (job_id, line_id)
);
CREATE UNIQUE INDEX cost_lines_order ON {schema}.cost_lines (job_id, seq);

-- billing.key_spend: an API key's spend caps and commitments.
CREATE TABLE {schema}.key_spend (
    api_key_id text PRIMARY KEY,
    owner_id text,
    daily_cap_credits numeric,
    total_cap_credits numeric,
    day date,
    today_credits numeric NOT NULL,
    total_credits numeric NOT NULL,
    updated_at timestamptz NOT NULL
);
