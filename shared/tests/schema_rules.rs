//! Rules the schema keeps by itself, against a real PostgreSQL. Links and tasks always
//! name an existing customer: statement-level triggers keep it instead of foreign keys
//! (migrations/2026-11-23-000001_…), held here to what the foreign keys did. A customer
//! id is what `CustomerId::parse` accepts (migrations/2026-11-23-000002_…).

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel::sql_types::BigInt;
use shared::testing::TestDatabase;

fn run(conn: &mut PgConnection, sql: &str) -> QueryResult<()> {
    diesel::connection::SimpleConnection::batch_execute(conn, sql)
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

/// Asserts `sql` fails as a foreign key would, with a message that says why.
fn refused(conn: &mut PgConnection, sql: &str, says: &str) {
    match run(conn, sql) {
        Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)) => {
            assert!(
                info.message().contains(says),
                "{sql}: the message {:?} does not say {says:?}",
                info.message()
            );
        }
        other => panic!("{sql}: expected a foreign key violation, got {other:?}"),
    }
}

const TASK_COLUMNS: &str =
    "INSERT INTO sync_tasks (id, provider, customer_id, operation, version, idempotency_key)";

#[test]
fn links_and_tasks_for_a_missing_customer_are_refused_and_change_nothing() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    run(
        &mut conn,
        "INSERT INTO customers (id, name, email) VALUES ('a', 'Ada', 'a@example.com')",
    )
    .unwrap();

    refused(
        &mut conn,
        "INSERT INTO provider_links (customer_id, provider) \
         VALUES ('a', 'stripe'), ('ghost', 'stripe')",
        "names a customer that does not exist",
    );
    refused(
        &mut conn,
        &format!(
            "{TASK_COLUMNS} VALUES \
             (gen_random_uuid(), 'stripe', 'a', 'create', 1, 'k1'), \
             (gen_random_uuid(), 'stripe', 'ghost', 'create', 1, 'k2')"
        ),
        "names a customer that does not exist",
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM provider_links"),
        0
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM sync_tasks"), 0);

    // A customer inserted by the same statement counts, as with a foreign key.
    run(
        &mut conn,
        &format!(
            "WITH c AS (INSERT INTO customers (id, name, email) \
                 VALUES ('b', 'Bob', 'b@example.com') RETURNING id), \
             l AS (INSERT INTO provider_links (customer_id, provider) \
                 SELECT id, 'stripe' FROM c) \
             {TASK_COLUMNS} SELECT gen_random_uuid(), 'stripe', id, 'create', 1, 'k3' FROM c"
        ),
    )
    .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM provider_links"),
        1
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM sync_tasks"), 1);
}

#[test]
fn customers_are_never_removed_or_renamed_and_rows_keep_their_customer() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    run(
        &mut conn,
        &format!(
            "INSERT INTO customers (id, name, email) \
                 VALUES ('a', 'Ada', 'a@example.com'), ('b', 'Bob', 'b@example.com'); \
             INSERT INTO provider_links (customer_id, provider) VALUES ('a', 'stripe'); \
             {TASK_COLUMNS} VALUES (gen_random_uuid(), 'stripe', 'a', 'create', 1, 'k1')"
        ),
    )
    .unwrap();

    let says = "customers are never removed or renamed";
    refused(&mut conn, "DELETE FROM customers WHERE id = 'b'", says);
    refused(&mut conn, "TRUNCATE customers CASCADE", says);
    refused(
        &mut conn,
        "UPDATE customers SET id = 'c' WHERE id = 'a'",
        says,
    );
    refused(
        &mut conn,
        "UPDATE provider_links SET customer_id = 'b'",
        "links and tasks keep their customer",
    );
    refused(
        &mut conn,
        "UPDATE sync_tasks SET customer_id = 'b'",
        "links and tasks keep their customer",
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM customers"), 2);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM sync_tasks WHERE customer_id = 'a'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM provider_links WHERE customer_id = 'a'"
        ),
        1
    );

    // Everything else about these rows still changes, and naming the same id is no move.
    run(
        &mut conn,
        "UPDATE customers SET id = id, name = 'Ada L', deleted_at = now() WHERE id = 'a'; \
         UPDATE provider_links SET customer_id = customer_id, external_id = 'cus_1'; \
         UPDATE sync_tasks SET status = 'succeeded'",
    )
    .unwrap();
}

/// PostgreSQL keeps a trigger's query plan for the life of the connection. Planned while
/// `customers` is nearly empty, a join could scan it for every statement ever after; the
/// check must stay one index probe per inserted row as the table grows.
#[test]
fn the_check_probes_the_customer_index_after_the_table_grows() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    // Early statements insert many rows while the table is small: the cheapest plan for
    // them then is a hash join over a scan of `customers`.
    for i in 0..12 {
        run(
            &mut conn,
            &format!(
                "INSERT INTO customers (id, name, email) \
                 SELECT 'e{i}_' || g, 'E', 'e{i}_' || g || '@example.com' FROM generate_series(1, 200) g; \
                 {TASK_COLUMNS} SELECT gen_random_uuid(), 'stripe', 'e{i}_' || g, 'create', 1, 'e{i}_' || g \
                 FROM generate_series(1, 200) g"
            ),
        )
        .unwrap();
    }
    run(
        &mut conn,
        "INSERT INTO customers (id, name, email) \
         SELECT 'c' || g, 'Name', 'c' || g || '@example.com' FROM generate_series(1, 20000) g",
    )
    .unwrap();

    conn.transaction(|conn| {
        // Counters not yet flushed to the statistics: the change across this insert is
        // what the check read.
        let reads = |conn: &mut PgConnection| {
            let of = |conn: &mut PgConnection, column: &str| {
                count(
                    conn,
                    &format!(
                        "SELECT {column} AS n FROM pg_stat_xact_user_tables \
                         WHERE relname = 'customers'"
                    ),
                )
            };
            (of(conn, "seq_scan"), of(conn, "idx_scan"))
        };
        let before = reads(conn);
        run(
            conn,
            &format!(
                "{TASK_COLUMNS} SELECT gen_random_uuid(), 'stripe', 'c' || g, 'create', 1, 'k' || g \
                 FROM generate_series(1, 100) g"
            ),
        )?;
        let after = reads(conn);
        assert_eq!(after.0 - before.0, 0, "the check scanned customers");
        assert_eq!(after.1 - before.1, 100, "one index probe per inserted task");
        QueryResult::Ok(())
    })
    .unwrap();
}

#[test]
fn the_database_accepts_exactly_the_customer_ids_the_api_accepts() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let long = "a".repeat(64);
    let too_long = "a".repeat(65);
    let samples = [
        "a",
        "A-z_0.9",
        long.as_str(),
        too_long.as_str(),
        "",
        "a b",
        "a/b",
        "é",
        "aé",
        "a\n",
        "'; --",
        "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ",
        "-",
        ".",
        "..",
        "...",
        ".a.",
    ];
    for (i, id) in samples.iter().enumerate() {
        let stored =
            diesel::sql_query("INSERT INTO customers (id, name, email) VALUES ($1, 'N', $2)")
                .bind::<diesel::sql_types::Text, _>(*id)
                .bind::<diesel::sql_types::Text, _>(format!("c{i}@example.com"))
                .execute(&mut conn);
        let accepted = shared::domain::CustomerId::parse(id).is_ok();
        match stored {
            Ok(_) => assert!(accepted, "the database took {id:?}, which the API refuses"),
            Err(Error::DatabaseError(DatabaseErrorKind::CheckViolation, _)) => {
                assert!(
                    !accepted,
                    "the database refused {id:?}, which the API accepts"
                )
            }
            Err(other) => panic!("{id:?}: {other:?}"),
        }
    }
}
