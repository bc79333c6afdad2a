-- scaler.fleet_vms: every machine the scaler asked for or adopted, its phase and its time.
CREATE TABLE {schema}.fleet_vms (
    vm_id text PRIMARY KEY,
    pool text NOT NULL,
    provider text NOT NULL,
    instance_type text NOT NULL,
    spot boolean NOT NULL,
    region text,
    hourly_price_usd numeric NOT NULL,
    phase text NOT NULL,
    phase_since timestamptz NOT NULL,
    worker_name text,
    request_id text,
    reason text NOT NULL,
    requested_at timestamptz NOT NULL,
    ended_at timestamptz,
    boot_seconds numeric NOT NULL,
    idle_seconds numeric NOT NULL,
    busy_seconds numeric NOT NULL,
    cost_usd numeric NOT NULL,
    version integer NOT NULL
);
CREATE INDEX fleet_vms_live ON {schema}.fleet_vms (pool, vm_id) WHERE ended_at IS NULL;

-- scaler.vm_usage: seconds and cost per UTC day, machine and usage phase (boot, idle, busy).
CREATE TABLE {schema}.vm_usage (
    day date NOT NULL,
    vm_id text NOT NULL,
    phase text NOT NULL,
    seconds numeric NOT NULL,
    cost_usd numeric NOT NULL,
    PRIMARY KEY (day, vm_id, phase)
);
