-- The local customer catalog. A delete leaves a tombstone (deleted_at) so that
-- provider tasks and late webhooks still find the row.
CREATE TABLE customers (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name        TEXT NOT NULL,
    email       TEXT NOT NULL,
    version     BIGINT NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);
CREATE INDEX customers_email_idx ON customers (email);

-- One row per customer and provider: the provider's id for it and the last
-- version the provider is known to hold.
CREATE TABLE provider_links (
    customer_id       TEXT NOT NULL REFERENCES customers (id),
    provider          TEXT NOT NULL CHECK (provider IN ('stripe', 'salesforce')),
    external_id       TEXT,
    synced_version    BIGINT NOT NULL DEFAULT 0,
    -- Stripe's `created` of the last webhook event applied to this customer, its id, and
    -- the name and email it carried: an older event never rolls state back, and a
    -- same-second tie is settled by whether the event follows from this state.
    remote_event_created BIGINT,
    remote_event_id   TEXT,
    remote_name       TEXT,
    remote_email      TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, provider)
);
CREATE UNIQUE INDEX provider_links_external_idx ON provider_links (provider, external_id)
    WHERE external_id IS NOT NULL;

-- The outbox: one row per change and provider. PostgreSQL holds the truth;
-- ZeroMQ only rings the bell.
CREATE TABLE sync_tasks (
    id               UUID PRIMARY KEY,
    -- Acceptance order: per customer it follows commit order because every change
    -- locks the customer row first.
    seq              BIGSERIAL NOT NULL UNIQUE,
    provider         TEXT NOT NULL CHECK (provider IN ('stripe', 'salesforce')),
    customer_id      TEXT NOT NULL REFERENCES customers (id),
    operation        TEXT NOT NULL CHECK (operation IN ('create', 'update', 'delete')),
    version          BIGINT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'in_flight', 'succeeded', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    -- Derived from the (unique) task id, so it needs no index of its own.
    idempotency_key  TEXT NOT NULL,
    key_generation   INTEGER NOT NULL DEFAULT 0,
    -- Emails sent by create calls whose outcome a 500 left unknown: the reconcile looks
    -- for our customer under each of them, not only under the current one.
    reconcile_emails TEXT[] NOT NULL DEFAULT '{}',
    request_id       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ
);
-- The claim query's path: unfinished tasks of a customer and provider in order.
CREATE INDEX sync_tasks_open_idx ON sync_tasks (provider, customer_id, seq)
    WHERE status IN ('pending', 'in_flight');
-- The claim's scan: unfinished tasks of a provider in acceptance order.
CREATE INDEX sync_tasks_open_seq_idx ON sync_tasks (provider, seq)
    WHERE status IN ('pending', 'in_flight');
CREATE INDEX sync_tasks_customer_idx ON sync_tasks (customer_id, seq);
-- Operators look for dead tasks; pending ones are covered by the partial indexes above.
CREATE INDEX sync_tasks_dead_idx ON sync_tasks (seq) WHERE status = 'dead';

-- Every verified webhook event once, by Stripe's id.
CREATE TABLE webhook_events (
    id           TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    created      BIGINT NOT NULL,
    object_id    TEXT,
    payload      JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_object_idx ON webhook_events (object_id, created);

-- The invoice catalogue, fed by invoice.* webhooks.
CREATE TABLE invoices (
    id                  TEXT PRIMARY KEY,
    customer_id         TEXT REFERENCES customers (id),
    stripe_customer_id  TEXT,
    number              TEXT,
    status              TEXT,
    currency            TEXT NOT NULL,
    amount_due          BIGINT NOT NULL,
    amount_paid         BIGINT NOT NULL,
    amount_remaining    BIGINT NOT NULL,
    total               BIGINT NOT NULL,
    hosted_invoice_url  TEXT,
    due_date            BIGINT,
    period_start        BIGINT,
    period_end          BIGINT,
    created             BIGINT NOT NULL,
    last_event_created  BIGINT NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX invoices_customer_idx ON invoices (customer_id, id);
CREATE INDEX invoices_stripe_customer_idx ON invoices (stripe_customer_id);
