//! Group-committed creates against a real PostgreSQL: each item gets the answer a single
//! create would have given it.

use diesel::prelude::*;
use shared::catalog::{self, CatalogError, Command, NewCustomer, Origin};
use shared::db::schema::sync_tasks;
use shared::domain::{CustomerId, CustomerName, Email, Provider};
use shared::testing::TestDatabase;

fn item(id: &str, name: &str, request: &str) -> (Command, Origin) {
    let new = NewCustomer {
        id: CustomerId::parse(id).unwrap(),
        name: CustomerName::parse(name).unwrap(),
        email: Email::parse(&format!("{id}@example.com")).unwrap(),
    };
    let origin = Origin {
        request_id: Some(request.to_owned()),
    };
    (Command::Create(new), origin)
}

#[test]
fn a_batch_answers_each_item_as_a_single_create_would() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let providers = [Provider::Stripe, Provider::Salesforce];
    let (old, origin) = item("old", "Old", "r0");
    catalog::commit_one(&mut conn, old, origin, &providers).unwrap();

    let batch = vec![
        item("a", "Ada", "r1"),
        item("old", "Old", "r2"), // a retry of an existing create
        item("b", "Bob", "r3"),
        item("a", "Ada", "r4"),   // the same create twice in one batch
        item("b", "Other", "r5"), // the same id with other fields
        item("old", "New", "r6"), // an existing id with other fields
    ];
    let answers = catalog::commit(&mut conn, &batch, &providers).unwrap();

    let summary: Vec<_> = answers
        .iter()
        .map(|answer| match answer {
            Ok(change) => (change.changed, change.tasks.len(), change.links.len()),
            Err(CatalogError::Exists(_)) => (false, usize::MAX, 0),
            Err(other) => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (true, 2, 2),
            (false, 0, 2),
            (true, 2, 2),
            (false, 0, 2),
            (false, usize::MAX, 0),
            (false, usize::MAX, 0)
        ]
    );
    let ada = answers[0].as_ref().unwrap();
    assert_eq!(ada.customer.name, "Ada");
    assert_eq!(ada.customer.version, 1);
    for task in &ada.tasks {
        assert_eq!(
            (task.customer_id.as_str(), task.operation.as_str()),
            ("a", "create")
        );
        assert_eq!(task.request_id.as_deref(), Some("r1"));
        assert_eq!(task.idempotency_key, format!("customer-sync-{}", task.id));
    }
    let mut providers_of_ada: Vec<_> = ada.tasks.iter().map(|t| t.provider.as_str()).collect();
    providers_of_ada.sort();
    assert_eq!(providers_of_ada, ["salesforce", "stripe"]);

    // Tasks are numbered in request order, so per-customer order holds across a batch.
    let order: Vec<String> = sync_tasks::table
        .order(sync_tasks::seq)
        .select(sync_tasks::customer_id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(order, ["old", "old", "a", "a", "b", "b"]);

    // The rows in each answer are the rows as stored, to the column.
    for change in answers.iter().flatten().filter(|c| c.changed) {
        let stored = shared::db::customers::find(&mut conn, &change.customer.id)
            .unwrap()
            .unwrap();
        assert_eq!(format!("{:?}", change.customer), format!("{stored:?}"));
        let stored = shared::db::links::for_customers(&mut conn, &[&change.customer.id]).unwrap();
        let mut answered = change.links.clone();
        answered.sort_by_key(|l| l.provider.as_str());
        assert_eq!(format!("{answered:?}"), format!("{stored:?}"));
        for task in &change.tasks {
            let stored = shared::db::tasks::find(&mut conn, shared::domain::TaskId::from(task.id))
                .unwrap()
                .unwrap();
            assert_eq!(format!("{task:?}"), format!("{stored:?}"));
        }
    }
}

#[test]
fn a_failing_run_leaves_the_runs_before_it_answered_and_its_other_commands_committed() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let providers = [Provider::Stripe];
    for (id, name) in [("x", "Xena"), ("y", "Yann")] {
        let (create, origin) = item(id, name, "r0");
        catalog::commit_one(&mut conn, create, origin, &providers).unwrap();
    }
    // An update PostgreSQL refuses, as an unexpected error would.
    diesel::sql_query(
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.name = 'Boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "CREATE TRIGGER refuse_boom BEFORE UPDATE ON customers \
         FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
    )
    .execute(&mut conn)
    .unwrap();
    let update = |id: &str, name: &str| {
        (
            Command::Update {
                id: CustomerId::parse(id).unwrap(),
                name: Some(CustomerName::parse(name).unwrap()),
                email: None,
            },
            Origin::default(),
        )
    };
    let batch = vec![
        item("a", "Ada", "r1"),
        update("x", "Boom"),
        update("y", "Yves"),
    ];
    // Before, the failed update run failed the whole batch after the create had committed.
    let answers = catalog::commit(&mut conn, &batch, &providers).unwrap();

    let created = answers[0].as_ref().expect("the create stands");
    assert!(created.changed);
    assert_eq!(
        created.tasks.len(),
        1,
        "its task is answered, so it is published"
    );
    assert!(
        matches!(answers[1], Err(CatalogError::Db(_))),
        "{:?}",
        answers[1]
    );
    let yves = answers[2]
        .as_ref()
        .expect("the other update is committed on its own");
    assert_eq!(yves.customer.name, "Yves");
    assert_eq!(yves.tasks.len(), 1);
    use shared::db::schema::customers;
    let names: Vec<(String, String)> = customers::table
        .select((customers::id, customers::name))
        .order(customers::id)
        .load(&mut conn)
        .unwrap();
    let names: Vec<(&str, &str)> = names
        .iter()
        .map(|(i, n)| (i.as_str(), n.as_str()))
        .collect();
    assert_eq!(names, [("a", "Ada"), ("x", "Xena"), ("y", "Yves")]);
}

#[test]
fn a_batch_without_providers_creates_customers_and_no_tasks() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let answers = catalog::commit(&mut conn, &[item("solo", "Solo", "r1")], &[]).unwrap();
    let change = answers[0].as_ref().unwrap();
    assert!(change.changed);
    assert!(change.tasks.is_empty() && change.links.is_empty());
}

/// The bulk statements are prepared once per connection and reused, not parsed and
/// planned on every batch (what `diesel::sql_query` would do).
#[test]
fn bulk_statements_are_prepared_once_per_connection() {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let providers = [Provider::Stripe];
    for round in 0..3 {
        let batch = vec![item(&format!("c{round}"), "C", &format!("r{round}"))];
        catalog::commit(&mut conn, &batch, &providers).unwrap();
    }
    let prepared = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE statement LIKE '%unnest%' AND NOT from_sql",
    )
    .get_result::<Count>(&mut conn)
    .unwrap();
    // Customers, links and tasks: one statement, prepared once for three batches.
    assert_eq!(prepared.n, 1);
}
