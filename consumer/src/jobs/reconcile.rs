//! Reconcile: compares what Stripe holds with the catalog, after the walk staged every
//! Stripe customer. It reports, per customer: equal; fields that differ and which side
//! is newer by our rules (the link's synced version against the customer's version);
//! linked but missing or deleted in Stripe; Stripe customers with our metadata that we
//! do not link (a duplicate or an orphan); local customers with no link. With `repair`
//! it sends local state that is ahead through the normal tasks, applies Stripe's state
//! that is ahead through the inbound rules (and so on to the other providers), links
//! what can be linked, and never deletes anything at Stripe.

use diesel::prelude::*;
use serde_json::{json, Value};
use shared::db::adoption::{self, Linked, Staged, StagedRows, Underway};
use shared::db::customers;
use shared::db::jobs::Finding;
use shared::db::{links, DbError};
use shared::domain::{CustomerId, Operation, Provider};
use shared::inbound;
use shared::queue;

use super::{Found, JobError, Step, Steps};

/// The kinds of finding that are drift.
pub const DRIFT: &[&str] = &["differs", "missing", "unlinked_ours", "local_unlinked"];

/// The reconcile's phases, in order.
pub const PHASES: &[&str] = &["customers", "compare", "missing", "unlinked"];

/// Rows compared per transaction.
const BATCH: i64 = 500;

/// Runs the reconcile from its checkpoint.
pub async fn run(steps: &Steps<'_>) -> Result<(), JobError> {
    for phase in steps.phases_from(PHASES) {
        match phase {
            "customers" => {
                steps
                    .walk_customers(|_, _| Ok((Found::default(), Default::default())))
                    .await?;
                steps.analyze_staged().await?
            }
            "compare" => compare_all(steps).await?,
            "missing" => missing(steps).await?,
            "unlinked" => unlinked(steps).await?,
            _ => unreachable!("a phase of PHASES"),
        }
    }
    Ok(())
}

/// What a finding's repair did, and the count it adds.
fn repaired(repair: bool, fixed: bool) -> (Value, &'static str) {
    match (repair, fixed) {
        (false, _) => (Value::Null, "unrepaired"),
        (true, true) => (json!(true), "repaired"),
        (true, false) => (json!(false), "unrepaired"),
    }
}

fn finding(
    kind: &'static str,
    customer: Option<&str>,
    stripe: Option<&str>,
    detail: Value,
) -> Finding {
    Finding {
        kind,
        subject: customer.or(stripe).unwrap_or_default().to_owned(),
        customer_id: customer.map(str::to_owned),
        external_id: stripe.map(str::to_owned),
        detail: Some(detail),
    }
}

async fn compare_all(steps: &Steps<'_>) -> Result<(), JobError> {
    let (job, repair, providers) = (steps.job_id(), steps.repair(), steps.ctx.providers.clone());
    steps
        .batches("compare", move |conn, after| {
            let rows = adoption::staged_after(conn, job, StagedRows::All, after, BATCH)?;
            let Some(last) = rows.last().map(|r| r.external_id.clone()) else {
                return Ok(None);
            };
            Ok(Some((compare(conn, job, &rows, repair, &providers)?, last)))
        })
        .await
}

/// Compares a batch of staged Stripe customers with the customers they link.
fn compare(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    rows: &[Staged],
    repair: bool,
    providers: &[Provider],
) -> Result<Found, DbError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.external_id.as_str()).collect();
    let linked: std::collections::HashMap<String, Linked> = adoption::linked_customers(conn, &ids)?
        .into_iter()
        .map(|l| (l.external_id.clone(), l))
        .collect();
    let mut findings = Vec::new();
    let mut counted: Vec<(&'static str, i64)> = Vec::new();
    for row in rows {
        match linked.get(&row.external_id) {
            Some(local) => {
                if let Some((found, count)) =
                    compare_linked(conn, job, row, local, repair, providers)?
                {
                    findings.push(found);
                    counted.push((count, 1));
                } else {
                    counted.push(("equal", 1));
                }
            }
            None => match &row.local_id {
                Some(named) => {
                    let (found, count) = ours_unlinked(conn, row, named, repair)?;
                    findings.push(found);
                    counted.push((count, 1));
                }
                // Not ours and not linked: the account's own business.
                None => counted.push(("not_ours", 1)),
            },
        }
    }
    Ok((findings, counted))
}

/// A linked customer: `None` when equal (or a change is on its way), else the finding
/// and its repair count.
fn compare_linked(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    row: &Staged,
    local: &Linked,
    repair: bool,
    providers: &[Provider],
) -> Result<Option<(Finding, &'static str)>, DbError> {
    let customer = &local.customer;
    let (name, email) = row.fields();
    let mut fields = Vec::new();
    if customer.deleted_at.is_some() {
        fields.push("deleted");
    } else {
        if name != customer.name {
            fields.push("name");
        }
        if email != customer.email {
            fields.push("email");
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let local_ahead = local.synced_version < customer.version;
    if local_ahead && local.task_open {
        // The task that carries it is on its way.
        return Ok(None);
    }
    let fixed = if !repair {
        false
    } else if local_ahead {
        let operation = if customer.deleted_at.is_some() {
            Operation::Delete
        } else {
            Operation::Update
        };
        queue::enqueue_for(conn, &[customer], operation, &[Provider::Stripe], None)?;
        true
    } else if customer.deleted_at.is_some() {
        // Deleted here with Stripe recorded as in step: push the deletion.
        queue::enqueue_for(
            conn,
            &[customer],
            Operation::Delete,
            &[Provider::Stripe],
            None,
        )?;
        true
    } else {
        let object = json!({
            "id": row.external_id, "object": "customer", "name": row.name, "email": row.email,
            "metadata": row.local_id.as_ref().map(|l| json!({shared::stripe::METADATA_KEY: l})),
        });
        let effect = inbound::apply_current_customer(
            conn,
            &object,
            chrono::Utc::now().timestamp(),
            &format!("reconcile:{job}:{}", row.external_id),
            providers,
        )?;
        effect == inbound::Effect::Applied
    };
    let (repaired, count) = repaired(repair, fixed);
    let newer = if local_ahead { "local" } else { "stripe" };
    let detail = json!({
        "fields": fields,
        "newer": newer,
        "local": {"name": customer.name, "email": customer.email, "version": customer.version},
        "stripe": {"name": row.name, "email": row.email},
        "repaired": repaired,
    });
    Ok(Some((
        finding(
            "differs",
            Some(customer.id.as_str()),
            Some(&row.external_id),
            detail,
        ),
        count,
    )))
}

/// A Stripe customer with our metadata that no local customer links: linked when the
/// customer it names is live and has no Stripe customer; a duplicate or an orphan
/// otherwise.
fn ours_unlinked(
    conn: &mut PgConnection,
    row: &Staged,
    named: &str,
    repair: bool,
) -> Result<(Finding, &'static str), DbError> {
    let customer = match CustomerId::parse(named) {
        Ok(id) => customers::find_for_update(conn, &id)?,
        Err(_) => None,
    };
    let current = match &customer {
        Some(c) => links::find(conn, &c.id, Provider::Stripe)?.and_then(|l| l.external_id),
        None => None,
    };
    let (reason, linkable) = match (&customer, &current) {
        (None, _) => ("orphan: names a local customer that does not exist", false),
        (Some(c), _) if c.deleted_at.is_some() => ("orphan: names a deleted local customer", false),
        (Some(_), Some(_)) => (
            "duplicate: the local customer links another Stripe customer",
            false,
        ),
        (Some(_), None) => ("unlinked: the local customer has no Stripe customer", true),
    };
    let fixed = repair && linkable && {
        let customer = customer.as_ref().expect("linkable means present");
        let (name, email) = row.fields();
        let same = name == customer.name && email == customer.email;
        let synced = if same { customer.version } else { 0 };
        let linked = adoption::link(
            conn,
            &customer.id,
            &row.external_id,
            synced,
            (&name, &email),
        )?;
        if linked && !same {
            queue::enqueue_for(
                conn,
                &[customer],
                Operation::Update,
                &[Provider::Stripe],
                None,
            )?;
        }
        linked
    };
    let (repaired, count) = repaired(repair, fixed);
    let detail = json!({
        "reason": reason,
        "linked_to": current,
        "repaired": repaired,
    });
    Ok((
        Finding {
            kind: "unlinked_ours",
            // One finding per Stripe customer: several may name the same local id.
            subject: row.external_id.clone(),
            customer_id: Some(named.to_owned()),
            external_id: Some(row.external_id.clone()),
            detail: Some(detail),
        },
        count,
    ))
}

/// Linked customers whose Stripe customer the walk did not see: read one by one; a
/// deleted one is deleted here too (as its webhook would have done).
async fn missing(steps: &Steps<'_>) -> Result<(), JobError> {
    let mut after = steps.checkpoint_in("missing");
    let job = steps.job_id();
    let walk_started = steps.walk_started_at().await?;
    let (repair, providers) = (steps.repair(), steps.ctx.providers.clone());
    loop {
        let from = after.clone();
        let unseen = shared::db::run(&steps.ctx.pool, move |conn| {
            Ok(adoption::linked_but_unseen(
                conn,
                job,
                walk_started,
                from.as_deref(),
                100,
            )?)
        })
        .await?;
        let Some(last) = unseen.last().map(|l| l.customer.id.as_str().to_owned()) else {
            return Ok(());
        };
        let mut states = Vec::new();
        for local in &unseen {
            let read = steps
                .ctx
                .reader
                .read(|client| {
                    let id = local.external_id.clone();
                    async move { client.retrieve_customer(&id).await }
                })
                .await;
            let state = match read {
                Ok((remote, raw)) if remote.deleted => ("deleted", Some(raw)),
                Ok(_) => ("present", None),
                Err(e) if e.status() == Some(404) => ("not_found", None),
                Err(e) => return Err(e.into()),
            };
            states.push(state);
        }
        let providers = providers.clone();
        after = steps
            .transaction(move |conn| {
                let mut findings = Vec::new();
                let mut counted = Vec::new();
                for (local, (state, raw)) in unseen.iter().zip(states) {
                    if state == "present" {
                        // Created or linked while the walk passed: not judged by it.
                        counted.push(("equal", 1));
                        continue;
                    }
                    let fixed = match (repair, raw) {
                        (true, Some(raw)) => {
                            let effect = inbound::apply_current_customer(
                                conn,
                                &raw,
                                chrono::Utc::now().timestamp(),
                                &format!("reconcile:{job}:{}", local.external_id),
                                &providers,
                            )?;
                            matches!(
                                effect,
                                inbound::Effect::Deleted | inbound::Effect::AlreadyDeleted
                            )
                        }
                        _ => false,
                    };
                    let (repaired, count) = repaired(repair, fixed);
                    counted.push((count, 1));
                    findings.push(finding(
                        "missing",
                        Some(local.customer.id.as_str()),
                        Some(&local.external_id),
                        json!({"stripe": state, "repaired": repaired}),
                    ));
                }
                Ok(Some(Step {
                    findings,
                    counted,
                    phase: "missing",
                    checkpoint: last,
                }))
            })
            .await?;
    }
}

/// Local customers with no Stripe customer: a create is queued for each with no Stripe
/// task on its way (a dead one waits for the operator's link).
async fn unlinked(steps: &Steps<'_>) -> Result<(), JobError> {
    let repair = steps.repair();
    steps
        .batches("unlinked", move |conn, after| {
            let rows = adoption::unlinked_after(conn, after, BATCH)?;
            let Some(last) = rows.last().map(|(c, _)| c.id.as_str().to_owned()) else {
                return Ok(None);
            };
            let mut findings = Vec::new();
            let mut counted = Vec::new();
            for (customer, underway) in &rows {
                let fixable = match underway {
                    Underway::Task => {
                        counted.push(("pending", 1));
                        continue;
                    }
                    Underway::Dead => false,
                    Underway::Nothing => true,
                };
                if repair && fixable {
                    queue::enqueue_for(
                        conn,
                        &[customer],
                        Operation::Create,
                        &[Provider::Stripe],
                        None,
                    )?;
                }
                let (repaired, count) = repaired(repair, fixable);
                counted.push((count, 1));
                let waiting = (*underway == Underway::Dead)
                    .then_some("a dead Stripe task waits for the operator");
                findings.push(finding(
                    "local_unlinked",
                    Some(customer.id.as_str()),
                    None,
                    json!({"repaired": repaired, "waiting": waiting}),
                ));
            }
            Ok(Some(((findings, counted), last)))
        })
        .await
}
