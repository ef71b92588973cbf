//! Import: adopts an existing Stripe account. The walk stages every Stripe customer and
//! decides, in each page's step, what no later page can change (link by our metadata,
//! or import it when no local customer has its email); after the walk the rest are
//! decided over everything staged (adopt the one unlinked local customer with its email,
//! or report ambiguity); local customers left without a Stripe customer get their create
//! task; invoices fill the catalogue.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use serde_json::json;
use shared::db::adoption::{self, Staged, StagedRows};
use shared::db::customers::{self, CustomerRow};
use shared::db::jobs::Finding;
use shared::db::{invoices, links, DbError};
use shared::domain::{CustomerId, Operation, Provider};
use shared::inbound::{self, rules};
use shared::queue;
use shared::stripe::{Invoice, List, StripeClient, StripeError};

use super::{Found, JobError, Steps};

/// Staged customers decided per transaction.
const DECIDE_BATCH: i64 = 500;

/// The import's phases, in order.
pub const PHASES: &[&str] = &["customers", "decide", "creates", "invoices"];

/// Runs the import from its checkpoint.
pub async fn run(steps: &Steps<'_>) -> Result<(), JobError> {
    let job = steps.job_id();
    let others = rules::passed_on_to(&steps.ctx.providers);
    let phases = steps.phases_from(PHASES);
    if phases.contains(&"customers") {
        let others = others.clone();
        steps
            .walk_customers(move |conn, fresh| decide(conn, job, fresh, &others, When::Walking))
            .await?;
    }
    // The first page of invoices is read while the rest is decided and the creates are
    // queued, so the budget's slots are not left idle meanwhile.
    let rest = async {
        if phases.contains(&"decide") {
            decide_rest(steps, others).await?;
        }
        if phases.contains(&"creates") {
            creates(steps).await?;
        }
        Ok::<_, JobError>(())
    };
    let (rest, first) = tokio::join!(
        rest,
        steps.read_page(&read_invoices, steps.checkpoint_in("invoices"))
    );
    rest?;
    walk_invoices(steps, first?).await
}

async fn read_invoices(
    client: std::sync::Arc<StripeClient>,
    from: Option<String>,
    size: u8,
) -> Result<List<Invoice>, StripeError> {
    client.list_invoices(from.as_deref(), size).await
}

/// When a staged customer is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// In the walk's step for its page: only what no later page can change (linked,
    /// carrying our metadata, or no unlinked local customer with its email). A customer
    /// with a local candidate waits: another Stripe customer with the same email may
    /// still come, and then neither is adopted.
    Walking,
    /// After the walk, when every Stripe customer with its email is staged.
    Walked,
}

/// After the walk: the staged customers the walk left undecided.
async fn decide_rest(steps: &Steps<'_>, others: Vec<Provider>) -> Result<(), JobError> {
    let job = steps.job_id();
    steps
        .batches("decide", move |conn, after| {
            let rows =
                adoption::staged_after(conn, job, StagedRows::Undecided, after, DECIDE_BATCH)?;
            let Some(last) = rows.last().map(|r| r.external_id.clone()) else {
                return Ok(None);
            };
            let (found, _) = decide(conn, job, &rows, &others, When::Walked)?;
            Ok(Some((found, last)))
        })
        .await
}

/// Decides a batch of Stripe customers; what it found, and the ids it decided (all but
/// those left for after the walk).
fn decide(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    rows: &[Staged],
    others: &[Provider],
    when: When,
) -> Result<(Found, HashSet<String>), DbError> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.external_id.as_str()).collect();
    let linked: HashSet<String> = links::stripe_links_for_update(conn, &ids)?
        .into_iter()
        .filter_map(|l| l.external_id)
        .collect();
    let keys: Vec<&str> = rows
        .iter()
        .filter(|r| r.local_id.is_none() && !linked.contains(&r.external_id))
        .filter_map(|r| r.email_key.as_deref())
        .collect();
    let mut local_per_email: HashMap<String, Vec<CustomerRow>> = HashMap::new();
    for customer in adoption::unlinked_with_emails(conn, &keys)? {
        if let Some(key) = adoption::email_key(&customer.email) {
            local_per_email.entry(key).or_default().push(customer);
        }
    }
    // Only a customer with a local candidate needs the count of its email's Stripe
    // customers, and only once all are staged.
    let stripe_per_email: HashMap<String, i64> = if when == When::Walked {
        let candidates: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| local_per_email.contains_key(*k))
            .collect();
        adoption::unclaimed_per_email(conn, job, &candidates)?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    let mut findings = Vec::new();
    let mut already = 0;
    let mut imports: Vec<&Staged> = Vec::new();
    let mut waiting: HashSet<&str> = HashSet::new();
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
        let locals = local_per_email.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if locals.is_empty() {
            // Nobody to match, however many Stripe customers share the email.
            imports.push(row);
            continue;
        }
        if when == When::Walking {
            waiting.insert(&row.external_id);
            continue;
        }
        let stripe_count = stripe_per_email.get(key).copied().unwrap_or(1);
        match (stripe_count, locals) {
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
    let decided = ids
        .iter()
        .filter(|id| !waiting.contains(*id))
        .map(|id| (*id).to_owned())
        .collect();
    Ok(((findings, vec![("already_linked", already)]), decided))
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

/// Every invoice, page by page from `first`, into the catalogue (never over a newer row).
async fn walk_invoices(steps: &Steps<'_>, first: (List<Invoice>, i64)) -> Result<(), JobError> {
    steps
        .walk(
            "invoices",
            first,
            read_invoices,
            |i: &Invoice| i.id.as_str(),
            |conn, page, read_at| {
                let batch: Vec<(&Invoice, Option<&str>)> =
                    page.iter().map(|i| (i, i.status.as_deref())).collect();
                let stored = inbound::store_invoices(conn, &batch, read_at)? as i64;
                Ok((
                    Vec::new(),
                    vec![
                        ("invoices_walked", page.len() as i64),
                        ("invoices_stored", stored),
                    ],
                ))
            },
        )
        .await
}
