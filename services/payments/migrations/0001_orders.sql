-- payments.orders: one row per top-up order (Razorpay order id), for the API and
-- reconciliation (libs/readmodels/payments.py).
CREATE TABLE {schema}.orders (
    order_id text PRIMARY KEY,
    topup_id text NOT NULL,
    user_id text NOT NULL,
    amount_paise bigint NOT NULL,
    currency text NOT NULL,
    credits numeric NOT NULL,
    receipt text NOT NULL,
    status text NOT NULL,
    payment_id text,
    credited_transfer text,
    credited_credits numeric NOT NULL,
    refunded_paise bigint NOT NULL,
    debit_due_credits numeric NOT NULL,
    debited_credits numeric NOT NULL,
    mismatch_reason text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    paid_at timestamptz,
    credited_at timestamptz,
    version integer NOT NULL
);
CREATE INDEX orders_user ON {schema}.orders (user_id, order_id DESC);
CREATE INDEX orders_payment ON {schema}.orders (payment_id);
CREATE INDEX orders_created ON {schema}.orders (created_at);
