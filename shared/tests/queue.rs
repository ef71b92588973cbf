//! The task queue's claim rules against a real PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use diesel::prelude::*;
use shared::catalog::{self, Command, NewCustomer, Origin};
use shared::domain::{CustomerId, CustomerName, Email, Provider};
use shared::queue;
use shared::testing::{index_stat, TestDatabase};

const LEASE: Duration = Duration::from_secs(30);

fn customer(conn: &mut PgConnection, id: &str) {
    let new = NewCustomer {
        id: CustomerId::parse(id).unwrap(),
        name: CustomerName::parse("Name").unwrap(),
        email: Email::parse("n@example.com").unwrap(),
    };
    let create = Command::Create(new);
    catalog::commit_one(conn, create, Origin::default(), &[Provider::Stripe]).unwrap();
}

fn rename(conn: &mut PgConnection, id: &str, name: &str) {
    let name = CustomerName::parse(name).unwrap();
    let update = Command::Update {
        id: CustomerId::parse(id).unwrap(),
        name: Some(name),
        email: None,
    };
    catalog::commit_one(conn, update, Origin::default(), &[Provider::Stripe]).unwrap();
}

#[test]
fn only_the_oldest_unfinished_task_of_a_customer_is_claimable() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    rename(&mut conn, "a", "A2");
    rename(&mut conn, "a", "A3");
    customer(&mut conn, "b");

    let claimed = queue::claim(&mut conn, Provider::Stripe, 10, "me", LEASE).unwrap();
    let got: Vec<(&str, &str)> = claimed
        .iter()
        .map(|t| (t.customer_id.as_str(), t.operation.as_str()))
        .collect();
    assert_eq!(got, [("a", "create"), ("b", "create")]);
    assert!(claimed
        .iter()
        .all(|t| t.status.as_str() == "in_flight" && t.attempts == 1));

    // Nothing more while those are in flight.
    assert!(queue::claim(&mut conn, Provider::Stripe, 10, "me", LEASE)
        .unwrap()
        .is_empty());

    queue::complete(&mut conn, &claimed[0], Some("cus_1"), 1).unwrap();
    let next = queue::claim(&mut conn, Provider::Stripe, 10, "me", LEASE).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].customer_id.as_str(), next[0].version), ("a", 2));
    // Other providers' topics see nothing.
    assert!(
        queue::claim(&mut conn, Provider::Salesforce, 10, "me", LEASE)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn concurrent_claimers_never_take_the_same_task() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    for i in 0..60 {
        customer(&mut conn, &format!("c{i}"));
    }
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                let mut mine = Vec::new();
                loop {
                    let batch =
                        queue::claim(&mut conn, Provider::Stripe, 5, &format!("w{n}"), LEASE)
                            .unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|t| t.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.join().unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60);
    assert_eq!(unique.len(), 60);
}

#[test]
fn an_expired_lease_makes_a_task_claimable_again() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    let first = queue::claim(
        &mut conn,
        Provider::Stripe,
        1,
        "dead-consumer",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(first.len(), 1);
    assert!(queue::claim(&mut conn, Provider::Stripe, 1, "other", LEASE)
        .unwrap()
        .is_empty());
    diesel::sql_query("UPDATE sync_tasks SET lease_expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .unwrap();
    let again = queue::claim(&mut conn, Provider::Stripe, 1, "other", LEASE).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].lease_owner.as_deref(), Some("other"));
}

#[test]
fn retries_wait_their_delay_and_die_at_the_attempt_limit() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    let task = queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .remove(0);
    let status =
        queue::retry_later(&mut conn, &task, "HTTP 503", Duration::from_secs(60), 3).unwrap();
    assert_eq!(status.unwrap().as_str(), "pending");
    assert!(queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .is_empty());

    diesel::sql_query("UPDATE sync_tasks SET next_attempt_at = now()")
        .execute(&mut conn)
        .unwrap();
    let task = queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .remove(0);
    assert_eq!(task.attempts, 2);
    assert_eq!(task.last_error.as_deref(), Some("HTTP 503"));
    diesel::sql_query("UPDATE sync_tasks SET attempts = 3")
        .execute(&mut conn)
        .unwrap();
    let task = shared::db::tasks::find(&mut conn, task.id.into())
        .unwrap()
        .unwrap();
    let status = queue::retry_later(&mut conn, &task, "HTTP 503", Duration::ZERO, 3).unwrap();
    assert_eq!(status.unwrap().as_str(), "dead");
    let dead = shared::db::tasks::find(&mut conn, task.id.into())
        .unwrap()
        .unwrap();
    assert!(dead
        .last_error
        .unwrap()
        .contains("gave up after 3 attempts"));
}

#[test]
fn a_released_task_is_claimable_at_once_without_spending_an_attempt() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    let task = queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .remove(0);
    // A copy of another claim's task (its token) releases nothing.
    let stale = shared::db::tasks::TaskRow {
        claim_token: Some(uuid::Uuid::new_v4()),
        ..task.clone()
    };
    assert!(!queue::release(&mut conn, &stale).unwrap());
    assert!(queue::claim(&mut conn, Provider::Stripe, 1, "x", LEASE)
        .unwrap()
        .is_empty());
    assert!(queue::release(&mut conn, &task).unwrap());
    let again = queue::claim(&mut conn, Provider::Stripe, 1, "x", LEASE)
        .unwrap()
        .remove(0);
    assert_eq!(again.attempts, 1);
}

#[test]
fn a_new_key_generation_changes_the_idempotency_key() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    let task = queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .remove(0);
    let first = queue::idempotency_key(&task);
    let generation = queue::next_key_generation(&mut conn, &task, Some("a@example.com")).unwrap();
    assert_eq!(generation, Some(1));
    let task = shared::db::tasks::find(&mut conn, task.id.into())
        .unwrap()
        .unwrap();
    let second = queue::idempotency_key(&task);
    assert_ne!(first, second);
    assert!(second.starts_with(&first));
    assert_eq!(task.reconcile_emails, ["a@example.com"]);
    queue::next_key_generation(&mut conn, &task, Some("a@example.com")).unwrap();
    let task = shared::db::tasks::find(&mut conn, task.id.into())
        .unwrap()
        .unwrap();
    assert_eq!(task.reconcile_emails, ["a@example.com"], "each email once");
}

#[test]
fn next_due_says_when_the_next_task_can_be_claimed_and_none_when_all_are_done() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    assert_eq!(queue::next_due(&mut conn, Provider::Stripe).unwrap(), None);
    customer(&mut conn, "a");
    assert_eq!(
        queue::next_due(&mut conn, Provider::Stripe).unwrap(),
        Some(Duration::ZERO)
    );
    let claimed = queue::claim(&mut conn, Provider::Stripe, 10, "me", LEASE).unwrap();
    // In flight: claimable again when its lease expires.
    let lease_left = queue::next_due(&mut conn, Provider::Stripe)
        .unwrap()
        .unwrap();
    assert!(
        lease_left > Duration::from_secs(25) && lease_left <= LEASE,
        "{lease_left:?}"
    );
    queue::retry_later(&mut conn, &claimed[0], "boom", Duration::from_secs(60), 12).unwrap();
    let backoff = queue::next_due(&mut conn, Provider::Stripe)
        .unwrap()
        .unwrap();
    assert!(backoff > Duration::from_secs(55), "{backoff:?}");
    let claimed = {
        diesel::sql_query("UPDATE sync_tasks SET next_attempt_at = now()")
            .execute(&mut conn)
            .unwrap();
        queue::claim(&mut conn, Provider::Stripe, 10, "me", LEASE).unwrap()
    };
    queue::complete(&mut conn, &claimed[0], Some("cus_1"), 1).unwrap();
    assert_eq!(queue::next_due(&mut conn, Provider::Stripe).unwrap(), None);
}

/// The task's status, key generation, attempts and last error.
fn task_state(conn: &mut PgConnection, id: uuid::Uuid) -> (String, i32, i32, Option<String>) {
    use shared::db::schema::sync_tasks as t;
    t::table
        .find(id)
        .select((t::status, t::key_generation, t::attempts, t::last_error))
        .first(conn)
        .unwrap()
}

#[test]
fn outcomes_after_the_lease_passed_to_another_consumer_change_nothing() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    // A slow consumer's lease runs out during its call (a lease of zero: out at once).
    let slow = queue::claim(&mut conn, Provider::Stripe, 1, "slow", Duration::ZERO)
        .unwrap()
        .remove(0);
    let fast = queue::claim(&mut conn, Provider::Stripe, 1, "fast", LEASE)
        .unwrap()
        .remove(0);
    assert_eq!(fast.id, slow.id, "taken over");
    assert_ne!(fast.claim_token, slow.claim_token);

    // While the new claim's call is in flight, the old one can neither renew nor put the
    // task back (a third consumer would then call the provider beside the second).
    assert!(!queue::renew(&mut conn, &slow, LEASE).unwrap());
    assert!(queue::renew(&mut conn, &fast, LEASE).unwrap());
    let late = queue::retry_later(&mut conn, &slow, "timed out", Duration::ZERO, 12).unwrap();
    assert_eq!(late, None);
    assert_eq!(
        queue::next_key_generation(&mut conn, &slow, None).unwrap(),
        None
    );
    assert!(!queue::release(&mut conn, &slow).unwrap());
    assert!(queue::claim(&mut conn, Provider::Stripe, 1, "third", LEASE)
        .unwrap()
        .is_empty());
    assert_eq!(
        task_state(&mut conn, fast.id),
        ("in_flight".into(), 0, 2, None)
    );

    // The new claim completes; the old one's outcomes, arriving after, write nothing.
    assert!(queue::complete(&mut conn, &fast, Some("cus_fast"), 1).unwrap());
    assert!(!queue::complete(&mut conn, &slow, Some("cus_slow"), 1).unwrap());
    assert!(!queue::kill(&mut conn, &slow, "HTTP 400").unwrap());
    assert_eq!(
        queue::retry_later(&mut conn, &slow, "HTTP 503", Duration::ZERO, 12).unwrap(),
        None
    );
    assert_eq!(
        task_state(&mut conn, fast.id),
        ("succeeded".into(), 0, 2, None)
    );
    let link = shared::db::links::find(
        &mut conn,
        &CustomerId::parse("a").unwrap(),
        Provider::Stripe,
    )
    .unwrap()
    .unwrap();
    assert_eq!(link.external_id.as_deref(), Some("cus_fast"));
}

#[test]
fn a_dead_task_retried_by_hand_calls_under_a_key_never_sent() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    customer(&mut conn, "a");
    let task = queue::claim(&mut conn, Provider::Stripe, 1, "me", LEASE)
        .unwrap()
        .remove(0);
    let before = queue::idempotency_key(&task);
    assert!(
        task.key_sent_at.is_some(),
        "the claim that sends the key dates it"
    );
    assert!(queue::kill(&mut conn, &task, "HTTP 400").unwrap());
    let revived = queue::retry_dead(&mut conn, task.id.into()).unwrap();
    assert_eq!(revived.key_generation, task.key_generation + 1);
    assert_eq!(revived.key_sent_at, None, "the new key was never sent");
    assert_ne!(queue::idempotency_key(&revived), before);
}

#[test]
fn a_claim_takes_at_most_its_limit_whatever_plan_postgresql_picks() {
    // On a large table the planner once turned the claim's `IN (SELECT ... LIMIT n FOR
    // UPDATE SKIP LOCKED)` into a nested-loop semi join that ran the subquery again for
    // every candidate row, each run finding the next due tasks: a claim of 16 took all
    // 1,000 (seen by `loadgen history`). These settings force that plan on a small table.
    use diesel::connection::SimpleConnection;
    let db = TestDatabase::create();
    let mut conn = db.connect();
    conn.batch_execute(
        "INSERT INTO customers (id, name, email) \
           SELECT 'due-' || g, 'Due', 'd' || g || '@example.com' FROM generate_series(1, 200) g; \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, idempotency_key) \
           SELECT gen_random_uuid(), 'stripe', 'due-' || g, 'create', 1, 'k' || g \
           FROM generate_series(1, 200) g; \
         ANALYZE sync_tasks",
    )
    .unwrap();
    let claimed = conn
        .transaction::<_, diesel::result::Error, _>(|conn| {
            conn.batch_execute(
                "SET LOCAL enable_hashagg = off; SET LOCAL enable_sort = off; \
                 SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
                 SET LOCAL enable_material = off",
            )?;
            queue::claim(conn, Provider::Stripe, 16, "me", LEASE)
        })
        .unwrap();
    assert_eq!(claimed.len(), 16);
    assert_eq!(db.count_where("sync_tasks", "status = 'in_flight'"), 16);
}

#[test]
fn the_oldest_task_probe_uses_the_customer_index_even_when_statistics_say_none_are_open() {
    // Statistics taken while every task had succeeded, then a burst of 300 due tasks, as
    // on any large table between two ANALYZEs: each claim and sweep probes every
    // candidate's customer, and must do so through the customer's own index, not by
    // walking the provider's open tasks (which made `loadgen history` quadratic).
    use diesel::connection::SimpleConnection;
    let db = TestDatabase::create();
    let mut conn = db.connect();
    conn.batch_execute(
        "INSERT INTO customers (id, name, email) \
           SELECT 'h-' || g, 'H', 'h' || g || '@example.com' FROM generate_series(1, 2000) g; \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, \
           idempotency_key, completed_at) \
           SELECT gen_random_uuid(), 'stripe', 'h-' || (g % 2000 + 1), 'update', g, 'succeeded', \
             'k' || g, now() FROM generate_series(1, 20000) g",
    )
    .unwrap();
    conn.batch_execute("VACUUM ANALYZE sync_tasks").unwrap();
    conn.batch_execute(
        "INSERT INTO customers (id, name, email) \
           SELECT 'due-' || g, 'Due', 'd' || g || '@example.com' FROM generate_series(1, 300) g; \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, idempotency_key) \
           SELECT gen_random_uuid(), 'stripe', 'due-' || g, 'create', 1, 'due' || g \
           FROM generate_series(1, 300) g",
    )
    .unwrap();
    let provider_wide = index_stat(&mut conn, "sync_tasks_open_seq_idx", "idx_scan");
    let by_customer = index_stat(&mut conn, "sync_tasks_open_customer_idx", "idx_scan");
    assert!(queue::next_due(&mut conn, Provider::Stripe)
        .unwrap()
        .is_some());
    let claimed = queue::claim(&mut conn, Provider::Stripe, 16, "me", LEASE).unwrap();
    assert_eq!(claimed.len(), 16);
    let provider_wide =
        index_stat(&mut conn, "sync_tasks_open_seq_idx", "idx_scan") - provider_wide;
    let by_customer =
        index_stat(&mut conn, "sync_tasks_open_customer_idx", "idx_scan") - by_customer;
    assert!(
        provider_wide <= 2,
        "the provider-wide index walked once per query, not once per probe: {provider_wide}"
    );
    assert!(
        by_customer >= 300,
        "each candidate probed by customer: {by_customer}"
    );
}
