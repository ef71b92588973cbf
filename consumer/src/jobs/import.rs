//! Import: adopts an existing Stripe account. The walk stages every Stripe customer; then
//! each is decided in SQL over what was staged (link by our metadata, adopt the one
//! unlinked local customer with its email, report ambiguity, or import it); local
//! customers left without a Stripe customer get their create task; invoices fill the
//! catalogue.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use serde_json::json;
use shared::db::adoption::{self, Staged};
use shared::db::customers::{self, CustomerRow};
use shared::db::jobs::Finding;
use shared::db::{invoices, links, DbError};
use shared::domain::{CustomerId, Operation, Provider};
use shared::inbound::rules;
use shared::queue;

use super::{Found, JobError, Step, Steps};

/// Staged customers decided per transaction.
const DECIDE_BATCH: i64 = 500;

/// The import's phases, in order.
pub const PHASES: &[&str] = &["customers", "decide", "creates", "invoices"];

/// Runs the import from its checkpoint.
pub async fn run(steps: &Steps<'_>) -> Result<(), JobError> {
    for phase in steps.phases_from(PHASES) {
        match phase {
            "customers" => steps.walk_customers().await?,
            "decide" => decide_all(steps).await?,
            "creates" => creates(steps).await?,
            "invoices" => walk_invoices(steps).await?,
            _ => unreachable!("a phase of PHASES"),
        }
    }
    Ok(())
}

async fn decide_all(steps: &Steps<'_>) -> Result<(), JobError> {
    let job = steps.job_id();
    let others = rules::passed_on_to(&steps.ctx.providers);
    steps
        .batches("decide", move |conn, after| {
            let rows = adoption::staged_after(conn, job, after, DECIDE_BATCH)?;
            let Some(last) = rows.last().map(|r| r.external_id.clone()) else {
                return Ok(None);
            };
            Ok(Some((decide(conn, job, &rows, &others)?, last)))
        })
        .await
}

/// Decides a batch of staged Stripe customers.
fn decide(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    rows: &[Staged],
    others: &[Provider],
) -> Result<Found, DbError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.external_id.as_str()).collect();
    let linked: HashSet<String> = adoption::links_of_stripe_ids(conn, &ids)?
        .into_iter()
        .filter_map(|l| l.external_id)
        .collect();
    let keys: Vec<&str> = rows
        .iter()
        .filter(|r| r.local_id.is_none() && !linked.contains(&r.external_id))
        .filter_map(|r| r.email_key.as_deref())
        .collect();
    let stripe_per_email: HashMap<String, i64> = adoption::unclaimed_per_email(conn, job, &keys)?
        .into_iter()
        .collect();
    let mut local_per_email: HashMap<String, Vec<CustomerRow>> = HashMap::new();
    for customer in adoption::unlinked_with_emails(conn, &keys)? {
        if let Some(key) = adoption::email_key(&customer.email) {
            local_per_email.entry(key).or_default().push(customer);
        }
    }
    let mut findings = Vec::new();
    let mut already = 0;
    let mut imports: Vec<&Staged> = Vec::new();
    for row in rows {
        if linked.contains(&row.external_id) {
            already += 1;
            continue;
        }
        if let Some(local) = &row.local_id {
            findings.push(by_metadata(conn, row, local)?);
            continue;
        }
        let Some(key) = row.email_key.as_deref() else {
            imports.push(row);
            continue;
        };
        let stripe_count = stripe_per_email.get(key).copied().unwrap_or(1);
        let locals = local_per_email.get(key).map(Vec::as_slice).unwrap_or(&[]);
        match (stripe_count, locals) {
            (1, []) => imports.push(row),
            (1, [only]) => {
                let only = only.clone();
                // Taken: no other Stripe customer of this batch may adopt it.
                local_per_email.remove(key);
                findings.push(adopt(conn, row, &only)?);
            }
            _ => findings.push(Finding {
                kind: "ambiguous",
                subject: row.external_id.clone(),
                customer_id: None,
                external_id: Some(row.external_id.clone()),
                detail: Some(json!({
                    "email": row.email,
                    "stripe_customers_with_email": stripe_count,
                    "local_candidates": locals.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
                })),
            }),
        }
    }
    findings.extend(import_locally(conn, &imports, others)?);
    Ok((findings, vec![("already_linked", already)]))
}

/// A Stripe customer carrying our metadata: linked to the customer it names, unless that
/// customer is gone or has another Stripe customer.
fn by_metadata(conn: &mut PgConnection, row: &Staged, local: &str) -> Result<Finding, DbError> {
    let finding = |kind, customer: Option<&str>, detail| Finding {
        kind,
        subject: row.external_id.clone(),
        customer_id: customer.map(str::to_owned),
        external_id: Some(row.external_id.clone()),
        detail,
    };
    let customer = match CustomerId::parse(local) {
        Ok(id) => customers::find_for_update(conn, &id)?,
        Err(_) => None,
    };
    let Some(customer) = customer.filter(|c| c.deleted_at.is_none()) else {
        return Ok(finding(
            "orphaned",
            Some(local),
            Some(json!({"reason": "names a local customer that does not exist or was deleted"})),
        ));
    };
    let current = links::find(conn, &customer.id, Provider::Stripe)?.and_then(|l| l.external_id);
    if let Some(other) = current.filter(|other| *other != row.external_id) {
        return Ok(finding(
            "duplicate",
            Some(local),
            Some(json!({"linked_to": other})),
        ));
    }
    let (name, email) = row.fields();
    let same = name == customer.name && email == customer.email;
    // In step: linked and synced. Otherwise the local state is pushed (the catalog is
    // the user's truth when the two were never compared).
    let synced = if same { customer.version } else { 0 };
    adoption::link(
        conn,
        &customer.id,
        &row.external_id,
        synced,
        (&name, &email),
    )?;
    if !same {
        queue::enqueue_for(
            conn,
            &[&customer],
            Operation::Update,
            &[Provider::Stripe],
            None,
        )?;
    }
    Ok(finding(
        "linked",
        Some(customer.id.as_str()),
        Some(json!({"fields_differed": !same})),
    ))
}

/// Links the one unlinked local customer with the Stripe customer's email, and queues the
/// update that writes our metadata (and the local fields) onto it.
fn adopt(conn: &mut PgConnection, row: &Staged, local: &CustomerRow) -> Result<Finding, DbError> {
    let (name, email) = row.fields();
    adoption::link(conn, &local.id, &row.external_id, 0, (&name, &email))?;
    queue::enqueue_for(conn, &[local], Operation::Update, &[Provider::Stripe], None)?;
    Ok(Finding {
        kind: "adopted",
        subject: row.external_id.clone(),
        customer_id: Some(local.id.as_str().to_owned()),
        external_id: Some(row.external_id.clone()),
        detail: Some(json!({"email": row.email})),
    })
}

/// Stripe-only customers become local ones (the local id is the Stripe id), linked and
/// in sync, with create tasks for the other providers: a few statements per batch.
fn import_locally(
    conn: &mut PgConnection,
    rows: &[&Staged],
    others: &[Provider],
) -> Result<Vec<Finding>, DbError> {
    let mut findings = Vec::new();
    let mut usable: Vec<(&Staged, CustomerId)> = Vec::new();
    for row in rows {
        match CustomerId::parse(&row.external_id) {
            Ok(id) => usable.push((row, id)),
            Err(e) => findings.push(Finding {
                kind: "unusable_id",
                subject: row.external_id.clone(),
                customer_id: None,
                external_id: Some(row.external_id.clone()),
                detail: Some(json!({"reason": e.0})),
            }),
        }
    }
    if usable.is_empty() {
        return Ok(findings);
    }
    let fields: Vec<(String, String)> = usable.iter().map(|(r, _)| r.fields()).collect();
    let inserted: HashMap<CustomerId, CustomerRow> = customers::insert_many(
        conn,
        &usable.iter().map(|(_, id)| id).collect::<Vec<_>>(),
        &fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        &fields.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>(),
    )?
    .into_iter()
    .map(|c| (c.id.clone(), c))
    .collect();
    let mut created: Vec<&CustomerRow> = Vec::new();
    let mut created_from: Vec<&str> = Vec::new();
    for (row, id) in &usable {
        match inserted.get(id) {
            Some(customer) => {
                created.push(customer);
                created_from.push(&row.external_id);
                findings.push(Finding {
                    kind: "imported",
                    subject: row.external_id.clone(),
                    customer_id: Some(id.as_str().to_owned()),
                    external_id: Some(row.external_id.clone()),
                    detail: None,
                });
            }
            None => findings.push(Finding {
                kind: "id_taken",
                subject: row.external_id.clone(),
                customer_id: Some(id.as_str().to_owned()),
                external_id: Some(row.external_id.clone()),
                detail: Some(json!({"reason": "a local customer already has this id"})),
            }),
        }
    }
    adoption::link_imported(conn, &created, &created_from)?;
    // Invoices staged before their customer was linked.
    invoices::link_many(
        conn,
        &created.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        &created.iter().map(|c| &c.id).collect::<Vec<_>>(),
    )?;
    queue::enqueue_for(conn, &created, Operation::Create, others, None)?;
    Ok(findings)
}

/// Local customers with no Stripe customer, and no Stripe task on its way, get their
/// create (which adopts by email when it can).
async fn creates(steps: &Steps<'_>) -> Result<(), JobError> {
    steps
        .batches("creates", |conn, after| {
            let batch = adoption::unlinked_after(conn, after, DECIDE_BATCH)?;
            let Some(last) = batch.last().map(|(c, _)| c.id.as_str().to_owned()) else {
                return Ok(None);
            };
            // A task on its way (or dead, waiting for the operator) is left to itself.
            let missing: Vec<CustomerRow> = batch
                .into_iter()
                .filter(|(_, underway)| *underway == adoption::Underway::Nothing)
                .map(|(c, _)| c)
                .collect();
            let rows: Vec<&CustomerRow> = missing.iter().collect();
            queue::enqueue_for(conn, &rows, Operation::Create, &[Provider::Stripe], None)?;
            let findings = missing
                .iter()
                .map(|c| Finding {
                    kind: "create_queued",
                    subject: c.id.as_str().to_owned(),
                    customer_id: Some(c.id.as_str().to_owned()),
                    external_id: None,
                    detail: None,
                })
                .collect();
            Ok(Some(((findings, Vec::new()), last)))
        })
        .await
}

/// Every invoice, page by page, into the catalogue (never over a newer row).
async fn walk_invoices(steps: &Steps<'_>) -> Result<(), JobError> {
    let mut after = steps.checkpoint_in("invoices");
    loop {
        let from = after.clone();
        let page = steps
            .ctx
            .reader
            .read(|client| {
                let (from, size) = (from.clone(), steps.ctx.page_size);
                async move { client.list_invoices(from.as_deref(), size).await }
            })
            .await?;
        let Some(last) = page.data.last().map(|i| i.id.clone()) else {
            return Ok(());
        };
        let has_more = page.has_more;
        let read_at = chrono::Utc::now().timestamp();
        let checkpoint = steps
            .transaction(move |conn| {
                let mut stored = 0;
                for invoice in &page.data {
                    if let Some((status, last)) = invoices::stored_for_update(conn, &invoice.id)? {
                        if rules::invoice_is_stale(
                            status.as_deref(),
                            last,
                            invoice.status.as_deref(),
                            read_at,
                        ) {
                            continue;
                        }
                    }
                    let customer = match invoice.customer_id() {
                        Some(stripe_id) => links::customer_of_stripe_id(conn, &stripe_id)?,
                        None => None,
                    };
                    invoices::upsert(
                        conn,
                        invoice,
                        invoice.status.as_deref(),
                        customer.as_ref(),
                        read_at,
                    )?;
                    stored += 1;
                }
                Ok(Some(Step {
                    findings: Vec::new(),
                    counted: vec![
                        ("invoices_walked", page.data.len() as i64),
                        ("invoices_stored", stored),
                    ],
                    phase: "invoices",
                    checkpoint: last,
                }))
            })
            .await?;
        after = checkpoint;
        if !has_more {
            return Ok(());
        }
    }
}
