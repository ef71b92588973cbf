// Mirrors migrations/; keep the two in step (diesel print-schema gives the same, but for
// the two joinable! lines noted below).

diesel::table! {
    customers (id) {
        id -> Text,
        name -> Text,
        email -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    provider_links (customer_id, provider) {
        customer_id -> Text,
        provider -> Text,
        external_id -> Nullable<Text>,
        synced_version -> Int8,
        remote_event_created -> Nullable<Int8>,
        remote_event_id -> Nullable<Text>,
        remote_name -> Nullable<Text>,
        remote_email -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sync_tasks (id) {
        id -> Uuid,
        seq -> Int8,
        provider -> Text,
        customer_id -> Text,
        operation -> Text,
        version -> Int8,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        idempotency_key -> Text,
        key_generation -> Int4,
        reconcile_emails -> Array<Text>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        claim_token -> Nullable<Uuid>,
        key_sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Text,
        event_type -> Text,
        created -> Int8,
        object_id -> Nullable<Text>,
        payload -> Jsonb,
        received_at -> Timestamptz,
        source -> Text,
    }
}

diesel::table! {
    sync_jobs (id) {
        id -> Uuid,
        kind -> Text,
        provider -> Text,
        repair -> Bool,
        status -> Text,
        requested_by -> Text,
        cancel_requested -> Bool,
        phase -> Text,
        checkpoint -> Nullable<Text>,
        progress -> Jsonb,
        report -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        walk_started_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sync_job_objects (job_id, external_id) {
        job_id -> Uuid,
        external_id -> Text,
        name -> Nullable<Text>,
        email -> Nullable<Text>,
        email_key -> Nullable<Text>,
        local_id -> Nullable<Text>,
        decided -> Bool,
    }
}

diesel::table! {
    sync_job_findings (job_id, kind, subject) {
        job_id -> Uuid,
        kind -> Text,
        subject -> Text,
        customer_id -> Nullable<Text>,
        external_id -> Nullable<Text>,
        detail -> Nullable<Jsonb>,
        seq -> Int8,
    }
}

diesel::table! {
    sync_cursors (provider) {
        provider -> Text,
        last_event_id -> Nullable<Text>,
        last_event_created -> Nullable<Int8>,
        caught_up_at -> Timestamptz,
        last_poll_at -> Nullable<Timestamptz>,
        last_poll_error -> Nullable<Text>,
        last_poll_applied -> Int8,
        poll_owner -> Nullable<Text>,
        poll_lease_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    invoices (id) {
        id -> Text,
        customer_id -> Nullable<Text>,
        stripe_customer_id -> Nullable<Text>,
        number -> Nullable<Text>,
        status -> Nullable<Text>,
        currency -> Text,
        amount_due -> Int8,
        amount_paid -> Int8,
        amount_remaining -> Int8,
        total -> Int8,
        hosted_invoice_url -> Nullable<Text>,
        due_date -> Nullable<Int8>,
        period_start -> Nullable<Int8>,
        period_end -> Nullable<Int8>,
        created -> Int8,
        last_event_created -> Int8,
        updated_at -> Timestamptz,
    }
}

// Links and tasks reference their customer through triggers, not foreign keys (see
// migrations/2026-11-23-000001_check_customers_per_statement), so print-schema leaves
// out these two lines; the relation is the same.
diesel::joinable!(provider_links -> customers (customer_id));
diesel::joinable!(sync_tasks -> customers (customer_id));
diesel::joinable!(invoices -> customers (customer_id));

diesel::allow_tables_to_appear_in_same_query!(
    customers,
    provider_links,
    sync_tasks,
    webhook_events,
    invoices,
    sync_jobs,
    sync_job_objects,
    sync_job_findings,
    sync_cursors,
);
diesel::joinable!(sync_job_objects -> sync_jobs (job_id));
diesel::joinable!(sync_job_findings -> sync_jobs (job_id));
