-- Jobs: an import or a reconcile of one provider account, run by one consumer at a time
-- under a lease, checkpointed so that another consumer resumes it where it stopped.
CREATE TABLE sync_jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('import', 'reconcile')),
    provider         text NOT NULL CHECK (provider IN ('stripe')),
    repair           boolean NOT NULL DEFAULT false,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Who asked: api, cli, schedule, catch-up.
    requested_by     text NOT NULL DEFAULT 'api',
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Where the job is: its phase and the last object id done in it.
    phase            text NOT NULL DEFAULT 'customers',
    checkpoint       text,
    -- Counts so far by kind of finding (exact: each finding is counted with its row).
    progress         jsonb NOT NULL DEFAULT '{}',
    report           jsonb,
    error            text,
    lease_owner      text,
    lease_expires_at timestamptz,
    -- When the walk of the provider began: links made after it are not judged by it.
    walk_started_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- One running job per provider in the whole deployment.
CREATE UNIQUE INDEX sync_jobs_one_running_idx ON sync_jobs (provider) WHERE status = 'running';
CREATE INDEX sync_jobs_open_idx ON sync_jobs (provider, created_at) WHERE status IN ('queued', 'running');
CREATE INDEX sync_jobs_created_idx ON sync_jobs (created_at, id);

-- The provider's customers as a job's walk saw them: decisions are taken in SQL over
-- these rows, so a walk streams (nothing of the account is held in memory) and a resumed
-- job does not walk again what it staged.
CREATE TABLE sync_job_objects (
    job_id       uuid NOT NULL REFERENCES sync_jobs (id) ON DELETE CASCADE,
    external_id  text NOT NULL,
    name         text,
    email        text,
    -- lower(email), for matching.
    email_key    text,
    -- Our metadata's local id, when the object carries one.
    local_id     text,
    PRIMARY KEY (job_id, external_id)
);
CREATE INDEX sync_job_objects_email_idx ON sync_job_objects (job_id, email_key);
CREATE INDEX sync_job_objects_local_idx ON sync_job_objects (job_id, local_id);

-- Every finding of a job, once: the report lists the first of each kind, these rows all.
CREATE TABLE sync_job_findings (
    job_id      uuid NOT NULL REFERENCES sync_jobs (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    subject     text NOT NULL,
    customer_id text,
    external_id text,
    detail      jsonb,
    seq         bigserial,
    PRIMARY KEY (job_id, kind, subject)
);
CREATE INDEX sync_job_findings_seq_idx ON sync_job_findings (job_id, kind, seq);

-- The Events API catch-up, per provider: the last event applied and when the walk last
-- reached the newest event (what the cursor's age is measured from).
CREATE TABLE sync_cursors (
    provider          text PRIMARY KEY,
    last_event_id     text,
    last_event_created bigint,
    caught_up_at      timestamptz NOT NULL DEFAULT now(),
    last_poll_at      timestamptz,
    last_poll_error   text,
    last_poll_applied bigint NOT NULL DEFAULT 0,
    poll_owner        text,
    poll_lease_until  timestamptz,
    -- The first consumer's start: the reconcile schedule counts from it.
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX customers_email_lower_idx ON customers (lower(email)) WHERE deleted_at IS NULL;

-- How an event reached us: a webhook delivery or the Events API catch-up; the newest
-- webhook tells whether the endpoint is being heard from.
ALTER TABLE webhook_events ADD COLUMN source text NOT NULL DEFAULT 'webhook'
    CHECK (source IN ('webhook', 'events_api'));
CREATE INDEX webhook_events_webhook_received_idx ON webhook_events (received_at)
    WHERE source = 'webhook';
