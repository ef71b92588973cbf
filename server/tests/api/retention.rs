//! Retention: what a pass removes and keeps, event-id dedup after it, one pass at a time,
//! and a pass running while creates and webhooks flow.

use std::time::Duration;

use consumer::retention::Retention;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use sandbox::SandboxConfig;
use serde_json::json;
use shared::db::{self, PgPool};
use shared::testing::{index_stat, TestDatabase};

use crate::helpers::{spawn_app, spawn_loop, WAIT};

fn pool(db: &TestDatabase) -> PgPool {
    db::connect(&db.url.clone().into(), 4).unwrap()
}

fn retention(db: &TestDatabase, days: u32) -> Retention {
    Retention {
        rest: Duration::ZERO,
        ..Retention::new(pool(db), days)
    }
}

/// The ids left in `table`, sorted.
fn ids(conn: &mut PgConnection, table: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut ids: Vec<String> = diesel::sql_query(format!("SELECT id::text AS id FROM {table}"))
        .load::<Id>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

/// A task row of `status` for customer c-1, completed `days` ago (ids are readable uuids).
fn task(n: u32, status: &str, days: u32) -> String {
    format!(
        "INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, \
           idempotency_key, created_at, updated_at, completed_at) \
         VALUES ('00000000-0000-0000-0000-{n:012}', 'stripe', 'c-1', 'update', {n}, '{status}', \
           'k{n}', now() - interval '{days} days' - interval '1 minute', \
           now() - interval '{days} days', \
           CASE WHEN '{status}' = 'succeeded' THEN now() - interval '{days} days' END);"
    )
}

/// `n` succeeded tasks of `customer`, completed 90 days ago a second apart, in one
/// statement.
fn old_tasks(customer: &str, n: u32) -> String {
    format!(
        "INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, \
           idempotency_key, created_at, updated_at, completed_at) \
         SELECT gen_random_uuid(), 'stripe', '{customer}', 'update', g, 'succeeded', 'k' || g, \
           now() - interval '90 days', now() - interval '90 days', \
           now() - interval '90 days' + g * interval '1 second' \
         FROM generate_series(1, {n}) g;"
    )
}

/// An event about `object` created (by Stripe's clock) and received `days` ago, with
/// its outcome.
fn event(id: &str, object: Option<&str>, days: u32, second: i64) -> String {
    let object = object.map_or("NULL".to_owned(), |o| format!("'{o}'"));
    format!(
        "INSERT INTO webhook_events (id, event_type, created, object_id, payload, received_at) \
         VALUES ('{id}', 'customer.updated', \
           extract(epoch FROM now() - interval '{days} days')::bigint + {second}, {object}, \
           '{{}}', now() - interval '{days} days'); \
         INSERT INTO webhook_event_outcomes (id, outcome) VALUES ('{id}', 'applied');"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_removes_old_succeeded_tasks_and_events_and_keeps_what_is_still_needed() {
    let app = spawn_app().await;
    let mut conn = app.conn();
    conn.batch_execute(&format!(
        "INSERT INTO customers (id, name, email) VALUES ('c-1', 'Ada', 'ada@example.com'); {}",
        [
            task(1, "succeeded", 40),              // removed
            task(2, "succeeded", 8),               // removed (RETENTION_DAYS 7)
            task(3, "succeeded", 6),               // kept: younger
            task(4, "dead", 90),                   // kept: an operator's to see
            task(5, "pending", 90),                // kept: work
            event("evt_a1", Some("cus_a"), 60, 0), // removed: cus_a has newer ones
            event("evt_a2", Some("cus_a"), 45, 0), // removed
            event("evt_a3", Some("cus_a"), 40, 0), // kept: cus_a's latest
            event("evt_b1", Some("cus_b"), 90, 0), // kept: cus_b's only (latest) event
            event("evt_c1", Some("cus_c"), 20, 0), // kept: within Stripe's 30 days
            event("evt_c2", Some("cus_c"), 10, 0), // kept
            event("evt_n1", None, 50, 0),          // removed: about no object
            event("evt_t1", Some("cus_t"), 50, 0), // same second: the higher id is latest
            event("evt_t2", Some("cus_t"), 50, 0),
        ]
        .concat()
    ))
    .unwrap();

    let pruned = retention(&app.db, 7).pass(None).await.unwrap().unwrap();
    assert_eq!((pruned.tasks, pruned.events), (2, 4));
    assert_eq!(
        ids(&mut conn, "sync_tasks"),
        [3, 4, 5].map(|n| format!("00000000-0000-0000-0000-{n:012}"))
    );
    assert_eq!(
        ids(&mut conn, "webhook_events"),
        ["evt_a3", "evt_b1", "evt_c1", "evt_c2", "evt_t2"]
    );
    // An event's outcome goes with it.
    assert_eq!(
        ids(&mut conn, "webhook_event_outcomes"),
        ["evt_a3", "evt_b1", "evt_c1", "evt_c2", "evt_t2"]
    );
    // A second pass finds nothing more.
    let again = retention(&app.db, 7).pass(None).await.unwrap().unwrap();
    assert_eq!((again.tasks, again.events), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_an_unfinished_job_may_read_are_kept_until_it_ends() {
    let app = spawn_app().await;
    let mut conn = app.conn();
    conn.batch_execute(&format!(
        "INSERT INTO customers (id, name, email) VALUES ('c-1', 'Ada', 'ada@example.com'); {}{}",
        task(1, "succeeded", 60),
        task(2, "succeeded", 40),
    ))
    .unwrap();
    // A job queued 50 days ago and still running (a stuck import, say).
    conn.batch_execute(
        "INSERT INTO sync_jobs (id, kind, provider, status, requested_by, created_at) \
         VALUES (gen_random_uuid(), 'import', 'stripe', 'running', 'api', \
                 now() - interval '50 days')",
    )
    .unwrap();
    let pruned = retention(&app.db, 30).pass(None).await.unwrap().unwrap();
    assert_eq!(
        pruned.tasks, 1,
        "only the task finished before the job was queued"
    );
    conn.batch_execute("UPDATE sync_jobs SET status = 'failed'")
        .unwrap();
    let pruned = retention(&app.db, 30).pass(None).await.unwrap().unwrap();
    assert_eq!(pruned.tasks, 1, "the job ended: its tasks may go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_process_prunes_at_a_time() {
    let app = spawn_app().await;
    let mut holder = app.conn();
    assert!(shared::db::retention::try_lock(&mut holder).unwrap());
    assert!(
        retention(&app.db, 30).pass(None).await.unwrap().is_none(),
        "a pass waits its turn while another process holds the lock"
    );
    shared::db::retention::unlock(&mut holder).unwrap();
    assert!(retention(&app.db, 30).pass(None).await.unwrap().is_some());
    // The pass gave the lock back.
    assert!(shared::db::retention::try_lock(&mut holder).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_event_is_still_refused_after_a_pass() {
    let stack = spawn_loop(SandboxConfig::default(), false).await;
    let customer = json!({"id": "cus_dedup", "object": "customer", "name": "Ada",
        "email": "ada@example.com", "metadata": {}, "created": 1});
    let now = chrono::Utc::now().timestamp();
    // Two events for the same customer, a second apart, delivered now.
    let first = json!({"id": "evt_dedup_1", "object": "event", "type": "customer.created",
        "created": now - 1, "data": {"object": customer}});
    let second = json!({"id": "evt_dedup_2", "object": "event", "type": "customer.updated",
        "created": now, "data": {"object": customer, "previous_attributes": {"name": "A"}}});
    for e in [&first, &second] {
        let (status, _) = crate::inward::deliver(&stack, e).await;
        assert_eq!(status, 200);
    }
    // RETENTION_DAYS 1 still keeps events for Stripe's 30 days.
    stack
        .conn()
        .batch_execute(
            "UPDATE webhook_events SET received_at = now() - interval '2 days', \
             created = created - 2 * 86400",
        )
        .unwrap();
    let pruned = retention(&stack.db, 1).pass(None).await.unwrap().unwrap();
    assert_eq!(pruned.events, 0);
    let (status, body) = crate::inward::deliver(&stack, &first).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_over_a_large_history_while_creates_and_webhooks_flow_loses_nothing() {
    let stack = spawn_loop(SandboxConfig::default(), true).await;
    // 20,000 old succeeded tasks and 20,000 old superseded events: 20 batches of each.
    stack
        .conn()
        .batch_execute(&format!(
            "INSERT INTO customers (id, name, email) VALUES ('old', 'Old', 'old@example.com'); \
             {} \
             INSERT INTO webhook_events (id, event_type, created, object_id, payload, received_at) \
             SELECT 'evt_old_' || g, 'customer.updated', \
               extract(epoch FROM now() - interval '90 days')::bigint + g, 'cus_old', '{{}}', \
               now() - interval '90 days' + g * interval '1 second' \
             FROM generate_series(1, 20001) g;",
            old_tasks("old", 20_000)
        ))
        .unwrap();
    let consumer = stack.consumer().await;
    let pruning = retention(&stack.db, 30);
    let pass = tokio::spawn(async move { pruning.pass(None).await });
    for n in 0..100 {
        let body = json!({"id": format!("live-{n}"), "name": "Live",
            "email": format!("l{n}@example.com")});
        let response = stack.post("/api/v1/customers", &body).await;
        assert_eq!(response.status(), 202);
    }
    let pruned = pass.await.unwrap().unwrap().unwrap();
    assert_eq!((pruned.tasks, pruned.events), (20_000, 20_000));
    // Every live create reached Stripe and its webhook came back: linked, nothing lost.
    shared::testing::eventually("every live customer linked", WAIT, || async {
        let linked = stack.db.count_where(
            "provider_links",
            "customer_id LIKE 'live-%' AND external_id IS NOT NULL",
        );
        (linked == 100).then_some(())
    })
    .await;
    assert!(stack.sandbox.wait_webhooks_idle(WAIT).await);
    assert_eq!(
        stack
            .db
            .count_where("sync_tasks", "customer_id LIKE 'live-%'"),
        100
    );
    assert_eq!(
        stack
            .db
            .count_where("webhook_events", "object_id <> 'cus_old'"),
        stack.sandbox.events().len() as i64,
        "every live event recorded once"
    );
    assert_eq!(
        stack
            .db
            .count_where("webhook_events", "object_id = 'cus_old'"),
        1,
        "the old customer's latest event kept"
    );
    consumer.shutdown().await;
}

#[tokio::test]
async fn each_task_batch_starts_where_the_last_ended_not_over_the_rows_it_deleted() {
    // The rows a batch deletes stay in the index until a vacuum: a batch that walked the
    // index from its start again stepped over every row removed so far, so a pass over
    // millions of rows got slower with every batch (and live traffic with it).
    let app = spawn_app().await;
    let mut conn = app.conn();
    conn.batch_execute(&format!(
        "ALTER TABLE sync_tasks SET (autovacuum_enabled = false); \
         INSERT INTO customers (id, name, email) VALUES ('c-1', 'C', 'c@example.com'); {} \
         ANALYZE sync_tasks; \
         SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off",
        old_tasks("c-1", 2_000)
    ))
    .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    let index = "sync_tasks_succeeded_idx";
    let mut from = None;
    for batch in 0..4 {
        let read_before = index_stat(&mut conn, index, "idx_tup_read");
        let key_before = index_stat(&mut conn, "sync_tasks_pkey", "idx_tup_read");
        let (removed, last) =
            shared::db::retention::prune_tasks(&mut conn, before, from, 500).unwrap();
        let read = index_stat(&mut conn, index, "idx_tup_read") - read_before;
        let key_read = index_stat(&mut conn, "sync_tasks_pkey", "idx_tup_read") - key_before;
        assert_eq!(removed, 500, "batch {batch}");
        // Its own 500 entries (and the one it started from), not the ones deleted before.
        assert!(read <= 510, "batch {batch} read {read} index entries");
        // Deleted where the batch found and locked them, not looked up again by id.
        assert_eq!(key_read, 0, "batch {batch} read the primary key");
        from = last;
    }
    assert_eq!(app.count("sync_tasks"), 0);
}

#[tokio::test]
async fn an_events_batch_asks_for_a_newer_event_from_the_events_own_time_not_over_all_its_objects()
{
    // "Is there a newer event of this object" was an OR that only a BitmapOr of two
    // index ranges could bound. Under any other plan (this test forbids bitmaps) each
    // probe read every event of the object, and the ones this pass had deleted (still in
    // the index), each a heap fetch: k² for an object's k events. With the event's own
    // `created` as a bound of the one range, a probe reads the event and the next one,
    // whatever the plan.
    let app = spawn_app().await;
    let mut conn = app.conn();
    let events = 300;
    conn.batch_execute(&format!(
        "ALTER TABLE webhook_events SET (autovacuum_enabled = false); \
         INSERT INTO webhook_events (id, event_type, created, object_id, payload, received_at) \
         SELECT 'evt_' || lpad(g::text, 4, '0'), 'customer.updated', \
           extract(epoch FROM now() - interval '90 days')::bigint + g, 'cus_x', '{{}}', \
           now() - interval '90 days' + g * interval '1 second' \
         FROM generate_series(1, {events}) g; \
         ANALYZE webhook_events; \
         SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_hashjoin = off; \
         SET enable_mergejoin = off"
    ))
    .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    let index = "webhook_events_object_idx";
    let read_before = index_stat(&mut conn, index, "idx_tup_read");
    let key_before = index_stat(&mut conn, "webhook_events_pkey", "idx_tup_read");
    let mut walk = None;
    let mut removed = 0;
    loop {
        let (gone, next) =
            shared::db::retention::prune_events(&mut conn, before, walk.as_ref(), 100).unwrap();
        removed += gone;
        let Some(next) = next else { break };
        walk = Some(next);
    }
    let read = index_stat(&mut conn, index, "idx_tup_read") - read_before;
    let key_read = index_stat(&mut conn, "webhook_events_pkey", "idx_tup_read") - key_before;
    assert_eq!(removed, events - 1, "all but the object's latest");
    assert_eq!(
        ids(&mut conn, "webhook_events"),
        vec!["evt_0300".to_owned()]
    );
    // Two entries per probe (the event and the next one); all 300 per probe before.
    assert!(
        read <= 3 * events as i64,
        "the probes of {events} events read {read} index entries"
    );
    // Deleted where the batch found them, not looked up again by id.
    assert_eq!(key_read, 0, "primary key entries read");
}
