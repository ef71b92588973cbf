//! Group-committed webhook events against a real PostgreSQL: a batch leaves the same
//! rows and answers as applying its events one at a time.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{json, Value};
use shared::domain::Provider;
use shared::inbound::{self, Applied, Effect};
use shared::stripe::Event;
use shared::testing::TestDatabase;

fn event(id: &str, kind: &str, created: i64, object: Value) -> (Event, Value) {
    let raw = json!({
        "id": id, "object": "event", "type": kind, "created": created,
        "data": {"object": object}
    });
    Event::parse(raw.to_string().as_bytes()).unwrap()
}

fn customer(id: &str, name: &str, local: Option<&str>) -> Value {
    let metadata = local.map_or(json!({}), |l| json!({"customer_sync_id": l}));
    json!({"id": id, "object": "customer", "name": name, "email": format!("{id}@example.com"), "metadata": metadata})
}

fn invoice(id: &str, customer: &str) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": customer, "status": "open", "currency": "eur",
        "amount_due": 100, "amount_paid": 0, "amount_remaining": 100, "total": 100,
        "created": 1_700_000_000
    })
}

/// Every row the events can touch, without timestamps and generated ids.
fn snapshot(conn: &mut PgConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let queries = [
        "SELECT concat_ws('|', 'customer', id, name, email, version, deleted_at IS NULL) AS line FROM customers",
        "SELECT concat_ws('|', 'link', customer_id, provider, external_id, synced_version, \
           remote_event_created, remote_event_id, remote_name, remote_email) AS line FROM provider_links",
        "SELECT concat_ws('|', 'task', provider, customer_id, operation, version, request_id) AS line FROM sync_tasks",
        "SELECT concat_ws('|', 'invoice', id, customer_id, stripe_customer_id) AS line FROM invoices",
        "SELECT concat_ws('|', 'event', id, event_type, created, object_id, payload::text) AS line FROM webhook_events",
        "SELECT concat_ws('|', 'outcome', id, outcome) AS line FROM webhook_event_outcomes",
    ];
    let mut lines: Vec<String> = queries
        .iter()
        .flat_map(|q| diesel::sql_query(*q).load::<Line>(conn).unwrap())
        .map(|l| l.line)
        .collect();
    lines.sort();
    lines
}

/// A local customer `local` already linked to `cus_linked`, a customer whose id a
/// Stripe customer will claim, and linked customers in each state an event can meet:
/// `sync` (Stripe holds our state, with an invoice not linked yet), `old` (a later event
/// was applied), `tie` (an event of the same second was applied), `gone` (deleted here)
/// and `ahead` (a local change not yet pushed).
fn seed(conn: &mut PgConnection) {
    conn.batch_execute(
        "INSERT INTO customers (id, name, email, version, deleted_at) VALUES \
           ('local', 'Local', 'local@example.com', 1, NULL), \
           ('cus_taken', 'Mine', 'mine@example.com', 1, NULL), \
           ('sync', 'Same', 'cus_sync@example.com', 1, NULL), \
           ('old', 'Old', 'old@example.com', 1, NULL), \
           ('tie', 'Tie', 'tie@example.com', 1, NULL), \
           ('gone', 'Gone', 'gone@example.com', 2, now()), \
           ('ahead', 'Ahead', 'ahead@example.com', 2, NULL); \
         INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
             remote_event_created, remote_name, remote_email) VALUES \
           ('local', 'stripe', 'cus_linked', 1, NULL, NULL, NULL), \
           ('sync', 'stripe', 'cus_sync', 1, 5, 'Same', 'cus_sync@example.com'), \
           ('old', 'stripe', 'cus_old', 1, 100, 'Old', 'cus_old@example.com'), \
           ('tie', 'stripe', 'cus_tie', 1, 12, 'Elsewhere', 'cus_tie@example.com'), \
           ('gone', 'stripe', 'cus_gone', 2, 5, 'Gone', 'cus_gone@example.com'), \
           ('ahead', 'stripe', 'cus_ahead', 1, 5, 'Ahead', 'cus_ahead@example.com'); \
         INSERT INTO invoices (id, stripe_customer_id, currency, amount_due, amount_paid, \
             amount_remaining, total, created, last_event_created) VALUES \
           ('in_sync', 'cus_sync', 'eur', 1, 0, 1, 1, 1, 1)",
    )
    .unwrap();
}

#[test]
fn a_batch_leaves_what_one_event_at_a_time_leaves() {
    let providers = [Provider::Stripe, Provider::Salesforce];
    let batch = vec![
        event(
            "evt_1",
            "customer.created",
            10,
            customer("cus_a", "A", None),
        ),
        event(
            "evt_2",
            "customer.created",
            10,
            customer("cus_b", "B", None),
        ),
        event(
            "evt_1",
            "customer.created",
            10,
            customer("cus_a", "A", None),
        ), // duplicate
        event("evt_3", "invoice.created", 10, invoice("in_1", "cus_c")), // before its customer
        event(
            "evt_4",
            "customer.created",
            11,
            customer("cus_c", "C", None),
        ),
        event(
            "evt_5",
            "customer.updated",
            12,
            customer("cus_c", "C2", None),
        ),
        event(
            "evt_6",
            "customer.updated",
            12,
            customer("cus_linked", "Remote", None),
        ),
        event(
            "evt_7",
            "customer.created",
            13,
            customer("cus_taken", "T", None),
        ),
        event(
            "evt_8",
            "customer.created",
            13,
            customer("cus_x", "X", Some("gone")),
        ),
        event(
            "evt_9",
            "customer.updated",
            14,
            customer("cus_d", "D", None),
        ), // update first
        event("evt_10", "ping", 14, json!({"id": "x"})),
        event(
            "evt_11",
            "customer.updated",
            12,
            customer("cus_sync", "Same", None),
        ),
        event(
            "evt_12",
            "customer.updated",
            12,
            customer("cus_old", "Older", None),
        ),
        event(
            "evt_13",
            "customer.updated",
            12,
            customer("cus_tie", "Tied", None),
        ),
        event(
            "evt_14",
            "customer.updated",
            12,
            customer("cus_gone", "Back", None),
        ),
        event(
            "evt_15",
            "customer.updated",
            12,
            customer("cus_ahead", "Behind", None),
        ),
    ];

    let one_by_one = TestDatabase::create();
    let mut conn = one_by_one.connect();
    seed(&mut conn);
    let single: Vec<Applied> = batch
        .iter()
        .map(|(e, raw)| inbound::apply(&mut conn, e, raw, &providers).unwrap())
        .collect();
    let expected = snapshot(&mut conn);

    let together = TestDatabase::create();
    let mut conn = together.connect();
    seed(&mut conn);
    let batched = inbound::apply_batch(&mut conn, &batch, &providers).unwrap();

    assert_eq!(batched, single);
    assert_eq!(snapshot(&mut conn), expected);
    // The batch did what the events ask, not merely the same wrong thing twice.
    assert_eq!(
        single,
        [
            Applied::Handled(Effect::Imported),
            Applied::Handled(Effect::Imported),
            Applied::Duplicate,
            Applied::Handled(Effect::InvoiceStored),
            Applied::Handled(Effect::Imported),
            Applied::Handled(Effect::Applied),
            Applied::Handled(Effect::Applied),
            Applied::Handled(Effect::IdTaken),
            Applied::Handled(Effect::UnknownLocalId),
            Applied::Handled(Effect::Imported),
            Applied::Unhandled,
            Applied::Handled(Effect::InSync),
            Applied::Handled(Effect::Stale),
            Applied::Handled(Effect::Tie),
            Applied::Handled(Effect::DeletedLocally),
            Applied::Handled(Effect::OlderThanLocal),
        ]
    );
    assert!(expected.contains(&"invoice|in_sync|sync|cus_sync".to_owned()));
    assert!(expected.contains(&"invoice|in_1|cus_c|cus_c".to_owned()));
    let salesforce_creates = expected
        .iter()
        .filter(|l| l.starts_with("task|salesforce|") && l.contains("|create|"))
        .count();
    assert_eq!(salesforce_creates, 4, "{expected:#?}");
    let salesforce_updates = expected
        .iter()
        .filter(|l| l.starts_with("task|salesforce|") && l.contains("|update|"))
        .count();
    assert_eq!(salesforce_updates, 2, "{expected:#?}"); // cus_c's update and cus_linked's
}

fn events_named(conn: &mut PgConnection, id: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM webhook_events WHERE id = '{id}'"
    ))
    .get_result::<Count>(conn)
    .unwrap()
    .n
}

fn name_of(conn: &mut PgConnection, id: &str) -> String {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query(format!("SELECT name FROM customers WHERE id = '{id}'"))
        .get_result::<Name>(conn)
        .unwrap()
        .name
}

/// The seeded database after an event tied with the last one applied to `cus_tie`: the
/// database, a connection, and the tie.
fn tied(providers: &[Provider]) -> (TestDatabase, PgConnection, (Event, Value)) {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    seed(&mut conn);
    let tie = event(
        "evt_t",
        "customer.updated",
        12,
        customer("cus_tie", "Tied", None),
    );
    let answer = inbound::apply(&mut conn, &tie.0, &tie.1, providers).unwrap();
    assert_eq!(answer, Applied::Handled(Effect::Tie));
    (db, conn, tie)
}

#[test]
fn a_tie_counts_as_received_only_once_it_is_settled_from_stripe() {
    let providers = [Provider::Stripe];
    let (_db, mut conn, tie) = tied(&providers);
    // Not recorded: a redelivery is decided again rather than answered as a duplicate.
    assert_eq!(events_named(&mut conn, "evt_t"), 0);
    assert_eq!(
        inbound::apply(&mut conn, &tie.0, &tie.1, &providers).unwrap(),
        Applied::Handled(Effect::Tie)
    );

    let current = customer("cus_tie", "As Stripe holds it", None);
    let settled = inbound::settle_tie(
        &mut conn,
        &tie,
        &current,
        &providers,
        inbound::Source::Webhook,
    )
    .unwrap();
    assert_eq!(settled, Applied::Handled(Effect::Applied));
    assert_eq!(name_of(&mut conn, "tie"), "As Stripe holds it");
    assert_eq!(events_named(&mut conn, "evt_t"), 1);
    // Settled once: the next delivery of the tie is a duplicate.
    assert_eq!(
        inbound::settle_tie(
            &mut conn,
            &tie,
            &current,
            &providers,
            inbound::Source::Webhook
        )
        .unwrap(),
        Applied::Duplicate
    );
    assert_eq!(
        inbound::apply(&mut conn, &tie.0, &tie.1, &providers).unwrap(),
        Applied::Duplicate
    );
}

#[test]
fn a_tie_settled_after_a_newer_event_leaves_the_newer_state() {
    let providers = [Provider::Stripe];
    let (_db, mut conn, tie) = tied(&providers);
    // While the tie's customer was read from Stripe, a newer event was applied.
    let newer = event(
        "evt_n",
        "customer.updated",
        13,
        customer("cus_tie", "Newer", None),
    );
    let answer = inbound::apply(&mut conn, &newer.0, &newer.1, &providers).unwrap();
    assert_eq!(answer, Applied::Handled(Effect::Applied));
    // What the read returned predates that event: it must not roll it back.
    let read_before = customer("cus_tie", "Read before the newer event", None);
    let settled = inbound::settle_tie(
        &mut conn,
        &tie,
        &read_before,
        &providers,
        inbound::Source::Webhook,
    )
    .unwrap();
    assert_eq!(settled, Applied::Handled(Effect::Stale));
    assert_eq!(name_of(&mut conn, "tie"), "Newer");
    assert_eq!(events_named(&mut conn, "evt_t"), 1, "settled: recorded");
}

/// Our create's echo can race the consumer recording the same link: the echo looks the
/// Stripe id up before the consumer's commit and tries to link it after. It must then find
/// the link made and apply as the echo it is, not as a Stripe customer naming an unknown
/// local id (which recorded nothing of it and logged a second customer that is not there).
#[test]
fn an_echo_that_races_the_consumer_recording_the_same_link_is_applied_as_the_echo() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    conn.batch_execute(
        "INSERT INTO customers (id, name, email, version) VALUES ('c-1', 'Ada', 'cus_new@example.com', 1); \
         INSERT INTO provider_links (customer_id, provider, external_id, synced_version) \
           VALUES ('c-1', 'stripe', NULL, 0)",
    )
    .unwrap();
    // The consumer's commit, held open: the link is written but not visible yet.
    let mut consumer = db.connect();
    consumer
        .batch_execute(
            "BEGIN; UPDATE provider_links SET external_id = 'cus_new', synced_version = 1 \
             WHERE customer_id = 'c-1'",
        )
        .unwrap();
    let echo = event(
        "evt_1",
        "customer.created",
        10,
        customer("cus_new", "Ada", Some("c-1")),
    );
    let applier = std::thread::spawn(move || {
        inbound::apply(&mut conn, &echo.0, &echo.1, &[Provider::Stripe]).unwrap()
    });
    // The echo has looked and now waits for the consumer's row.
    let mut watcher = db.connect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let waiting: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result(&mut watcher)
        .unwrap();
        if waiting.n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the echo never waited for the link"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    consumer.batch_execute("COMMIT").unwrap();

    let applied = applier.join().unwrap();
    assert_eq!(applied, Applied::Handled(Effect::InSync));
    #[derive(QueryableByName)]
    struct Remembered {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        remote_event_created: Option<i64>,
    }
    let link: Remembered = diesel::sql_query(
        "SELECT remote_event_created FROM provider_links WHERE customer_id = 'c-1'",
    )
    .get_result(&mut watcher)
    .unwrap();
    assert_eq!(link.remote_event_created, Some(10), "the echo was recorded");
}
