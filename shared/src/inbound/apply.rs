//! The applier: reads and locks the rows an event concerns, asks [`super::rules`], and
//! writes the answer through the table owners in `crate::db`. One applier serves a batch
//! of events (group commit) and a single event alike (a batch of one).

use std::collections::HashMap;

use diesel::prelude::*;
use serde_json::Value;

use super::rules::{self, Verdict};
use super::{Applied, Effect};
use crate::db::customers::{self, CustomerRow};
use crate::db::events::Source;
use crate::db::links::{self, LinkRow, Remembered};
use crate::db::{events as event_rows, invoices, DbError};
use crate::domain::{CustomerId, Operation, Provider};

use crate::queue;
use crate::stripe::{Customer, Event, EventData, Invoice, INVOICE_EVENTS};

/// Stores one event and applies its effects in one transaction.
pub fn apply(
    conn: &mut PgConnection,
    event: &Event,
    raw: &Value,
    providers: &[Provider],
) -> Result<Applied, DbError> {
    let batch = [(event.clone(), raw.clone())];
    Ok(apply_batch(conn, &batch, providers)?.remove(0))
}

/// Stores and applies many events in one transaction: the same effects as applying each
/// in turn, in the order given. Any failure rolls all of them back.
///
/// The batch costs a handful of statements rather than several per event: the event
/// rows go in with one statement, and the customer events that are alone in the batch
/// to concern their Stripe customer are applied together: those of customers we link
/// already (updates, echoes) and those of customers we have never seen (imports). Every
/// other event is applied one at a time, through the same functions with one event; it
/// concerns a different Stripe customer from the grouped ones, so the order between them
/// changes nothing.
pub fn apply_batch(
    conn: &mut PgConnection,
    events: &[(Event, Value)],
    providers: &[Provider],
) -> Result<Vec<Applied>, DbError> {
    apply_batch_from(conn, events, providers, Source::Webhook)
}

/// [`apply_batch`] for events that came by `source`: the Events API catch-up applies what
/// it finds through the same rules, and an event applied once either way is a duplicate
/// the other way.
pub fn apply_batch_from(
    conn: &mut PgConnection,
    events: &[(Event, Value)],
    providers: &[Provider],
    source: Source,
) -> Result<Vec<Applied>, DbError> {
    apply_deliveries(conn, &events.iter().collect::<Vec<_>>(), providers, source)
}

/// [`apply_batch_from`] for events held elsewhere (the webhook committer's items).
pub fn apply_deliveries(
    conn: &mut PgConnection,
    events: &[&(Event, Value)],
    providers: &[Provider],
    source: Source,
) -> Result<Vec<Applied>, DbError> {
    let others = rules::passed_on_to(providers);
    conn.transaction(|conn| {
        let fresh = event_rows::insert_many(conn, events, source)?;
        let mut answers: Vec<Option<Applied>> = fresh
            .iter()
            .map(|stored| (!stored).then_some(Applied::Duplicate))
            .collect();
        let candidates = candidates(events, &fresh);
        let ids: Vec<&str> = candidates.iter().map(|c| c.remote.id.as_str()).collect();
        let mut linked = linked_many(conn, &ids)?;
        let mut known = Vec::new();
        let mut imports = Vec::new();
        for candidate in candidates {
            match linked.remove(&candidate.remote.id) {
                Some((customer, link)) => known.push((candidate, customer, link)),
                None if candidate.remote.local_id().is_none() => {
                    if let Ok(id) = CustomerId::parse(&candidate.remote.id) {
                        imports.push((candidate, id));
                    }
                }
                // Our own create's echo, linked by its metadata: one at a time below.
                None => {}
            }
        }
        let grouped = update_known(conn, known, &others)?
            .into_iter()
            .chain(import_many(conn, imports, &others)?);
        for (i, effect) in grouped {
            answers[i] = Some(Applied::Handled(effect));
        }
        for (i, (event, _)) in events.iter().enumerate() {
            if answers[i].is_none() {
                answers[i] = Some(apply_alone(conn, i, event, &others)?);
            }
        }
        // A tie is not recorded as received: it counts only once [`settle_tie`] settled it,
        // so a delivery that could not be settled is decided again when it comes back.
        let ties: Vec<&str> = events
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| **answer == Some(Applied::Handled(Effect::Tie)))
            .map(|((event, _), _)| event.id.as_str())
            .collect();
        if !ties.is_empty() {
            event_rows::forget(conn, &ties)?;
        }
        let outcomes: Vec<(&str, &str)> = events
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| **answer != Some(Applied::Handled(Effect::Tie)))
            .filter_map(|((event, _), answer)| {
                Some((event.id.as_str(), answer.and_then(Applied::code)?))
            })
            .collect();
        event_rows::record_outcomes(conn, &outcomes)?;
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every event is answered"))
            .collect())
    })
}

/// Applies the customer as Stripe holds it now (read to settle a same-second tie),
/// whatever the order of the events we hold.
pub fn apply_current_customer(
    conn: &mut PgConnection,
    object: &Value,
    created: i64,
    event_id: &str,
    providers: &[Provider],
) -> Result<Effect, DbError> {
    let others = rules::passed_on_to(providers);
    let event = Event {
        id: format!("{event_id}:current"),
        kind: "customer.updated".into(),
        created,
        data: EventData {
            object: object.clone(),
            previous_attributes: None,
        },
    };
    conn.transaction(|conn| apply_current(conn, &event, &others))
}

/// Settles a same-second tie that [`apply_batch_from`] answered with [`Effect::Tie`],
/// with `current`, the customer as Stripe held it when read after the tie, in one
/// transaction that also records the event. Run it in the customer's order (the
/// webhook's committer for that customer): when an event newer than the tie was applied
/// meanwhile, the tie is answered `Stale` and nothing is applied, since what Stripe held
/// when it was read may be older than that event.
pub fn settle_tie(
    conn: &mut PgConnection,
    delivery: &(Event, Value),
    current: &Value,
    providers: &[Provider],
    source: Source,
) -> Result<Applied, DbError> {
    let others = rules::passed_on_to(providers);
    let (tie, _) = delivery;
    let event = Event {
        id: format!("{}:current", tie.id),
        kind: "customer.updated".into(),
        created: tie.created,
        data: EventData {
            object: current.clone(),
            previous_attributes: None,
        },
    };
    conn.transaction(|conn| {
        if !event_rows::insert_many(conn, &[delivery], source)?[0] {
            return Ok(Applied::Duplicate);
        }
        let id = customer_of(&event)?.id;
        let newer = linked_many(conn, &[&id])?
            .remove(&id)
            .is_some_and(|(_, link)| link.remote_event_created > Some(tie.created));
        let effect = if newer {
            Effect::Stale
        } else {
            apply_current(conn, &event, &others)?
        };
        event_rows::record_outcomes(conn, &[(tie.id.as_str(), effect.code())])?;
        Ok(Applied::Handled(effect))
    })
}

/// Applies `event`, whose object is the customer as Stripe holds it now, skipping the
/// ordering checks.
fn apply_current(
    conn: &mut PgConnection,
    event: &Event,
    others: &[Provider],
) -> Result<Effect, DbError> {
    let remote = customer_of(event)?;
    if remote.deleted {
        return customer_deleted(conn, event, remote, others);
    }
    let candidate = Candidate {
        index: 0,
        event,
        remote,
        current: true,
    };
    customer_changed(conn, candidate, others)
}

/// A customer event and its object, with its index in the batch.
struct Candidate<'a> {
    index: usize,
    event: &'a Event,
    remote: Customer,
    /// The customer as Stripe holds it now: the ordering checks do not apply.
    current: bool,
}

/// The stored customer events of the batch that are the only stored event about their
/// Stripe customer in it. Anything else is left to [`apply_alone`].
fn candidates<'a>(events: &[&'a (Event, Value)], fresh: &[bool]) -> Vec<Candidate<'a>> {
    let mut per_customer: HashMap<&str, usize> = HashMap::new();
    for ((event, _), _) in events.iter().zip(fresh).filter(|(_, stored)| **stored) {
        *per_customer.entry(event.customer_key()).or_default() += 1;
    }
    events
        .iter()
        .zip(fresh)
        .enumerate()
        .filter(|(_, ((event, _), stored))| {
            **stored
                && matches!(event.kind.as_str(), "customer.created" | "customer.updated")
                && per_customer[event.customer_key()] == 1
        })
        .filter_map(|(index, ((event, _), _))| {
            Some(Candidate {
                index,
                event,
                remote: event.customer().ok()?,
                current: false,
            })
        })
        .collect()
}

/// Applies an event whose row was just stored, on its own.
fn apply_alone(
    conn: &mut PgConnection,
    index: usize,
    event: &Event,
    others: &[Provider],
) -> Result<Applied, DbError> {
    let kind = event.kind.as_str();
    let effect = match kind {
        "customer.created" | "customer.updated" => {
            let candidate = Candidate {
                index,
                event,
                remote: customer_of(event)?,
                current: false,
            };
            customer_changed(conn, candidate, others)?
        }
        "customer.deleted" => customer_deleted(conn, event, customer_of(event)?, others)?,
        _ if INVOICE_EVENTS.contains(&kind) => invoice_changed(conn, event)?,
        _ => return Ok(Applied::Unhandled),
    };
    Ok(Applied::Handled(effect))
}

fn customer_of(event: &Event) -> Result<Customer, DbError> {
    event
        .customer()
        .map_err(|e| DbError::Unexpected(anyhow::anyhow!("customer object: {e}")))
}

/// A created or updated customer, alone: applied to the customer it links (or the echo
/// of our create it names), or imported.
fn customer_changed(
    conn: &mut PgConnection,
    candidate: Candidate<'_>,
    others: &[Provider],
) -> Result<Effect, DbError> {
    if let Some((customer, link)) = find_or_link(conn, &candidate.remote)? {
        let mut answers = update_known(conn, vec![(candidate, customer, link)], others)?;
        return Ok(answers.remove(0).1);
    }
    let Ok(id) = CustomerId::parse(&candidate.remote.id) else {
        return Ok(Effect::UnusableId);
    };
    if candidate.remote.local_id().is_some() {
        // It names a local customer we do not have (deleted for good, or another install).
        tracing::warn!(stripe_id = %candidate.remote.id, "customer names an unknown customer_sync_id; not imported");
        return Ok(Effect::UnknownLocalId);
    }
    let mut answers = import_many(conn, vec![(candidate, id)], others)?;
    Ok(answers.remove(0).1)
}

/// Applies customer events to customers we link, on the rows [`linked_many`] locked: a
/// few statements whatever their number. Answers each candidate's index with its effect.
fn update_known(
    conn: &mut PgConnection,
    known: Vec<(Candidate<'_>, CustomerRow, LinkRow)>,
    others: &[Provider],
) -> QueryResult<Vec<(usize, Effect)>> {
    let mut answers = Vec::with_capacity(known.len());
    // (candidate, customer, version to record as synced)
    let mut remembered: Vec<(&Candidate<'_>, &CustomerRow, Option<i64>)> = Vec::new();
    let mut applied: Vec<(&Candidate<'_>, &CustomerRow)> = Vec::new();
    for (candidate, customer, link) in &known {
        let verdict = rules::verdict(
            customer,
            link,
            candidate.event,
            &candidate.remote,
            candidate.current,
        );
        answers.push((candidate.index, Effect::from(verdict)));
        match verdict {
            Verdict::Stale | Verdict::Tie => {}
            Verdict::DeletedLocally | Verdict::OlderThanLocal => {
                remembered.push((candidate, customer, None));
            }
            Verdict::InSync => remembered.push((candidate, customer, Some(customer.version))),
            Verdict::Apply => applied.push((candidate, customer)),
        }
    }
    let fields: Vec<(String, String)> = applied.iter().map(|(c, _)| c.remote.fields()).collect();
    let updated: HashMap<CustomerId, CustomerRow> = customers::update_many(
        conn,
        &applied.iter().map(|(_, c)| &c.id).collect::<Vec<_>>(),
        &fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        &fields.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>(),
    )?
    .into_iter()
    .map(|c| (c.id.clone(), c))
    .collect();
    for (candidate, customer) in &applied {
        let version = updated.get(&customer.id).map(|c| c.version);
        remembered.push((candidate, customer, version));
    }
    if remembered.is_empty() {
        return Ok(answers);
    }
    invoices::link_many(
        conn,
        &remembered
            .iter()
            .map(|(c, _, _)| c.remote.id.as_str())
            .collect::<Vec<_>>(),
        &remembered.iter().map(|(_, c, _)| &c.id).collect::<Vec<_>>(),
    )?;
    let rows: Vec<Remembered<'_>> = remembered
        .iter()
        .map(|(c, customer, version)| remembered_of(c, &customer.id, version.unwrap_or(0)))
        .collect();
    links::remember_many(conn, &rows)?;
    let updated: Vec<&CustomerRow> = applied
        .iter()
        .filter_map(|(_, customer)| updated.get(&customer.id))
        .collect();
    queue::enqueue_for(conn, &updated, Operation::Update, others, None)?;
    Ok(answers)
}

/// The remote state a candidate's event carries, for its customer's Stripe link.
fn remembered_of<'a>(
    candidate: &'a Candidate<'_>,
    customer_id: &'a CustomerId,
    synced_version: i64,
) -> Remembered<'a> {
    Remembered {
        customer_id,
        event_created: candidate.event.created,
        event_id: &candidate.event.id,
        name: candidate.remote.name.as_deref(),
        email: candidate.remote.email.as_deref(),
        synced_version,
    }
}

/// Imports customers created in Stripe (local id = the Stripe id), linked, with tasks for
/// the other providers: a few statements whatever their number. Answers each import's
/// index with its effect.
fn import_many(
    conn: &mut PgConnection,
    imports: Vec<(Candidate<'_>, CustomerId)>,
    others: &[Provider],
) -> QueryResult<Vec<(usize, Effect)>> {
    if imports.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<(String, String)> = imports.iter().map(|(c, _)| c.remote.fields()).collect();
    let inserted: HashMap<CustomerId, CustomerRow> = customers::insert_many(
        conn,
        &imports.iter().map(|(_, id)| id).collect::<Vec<_>>(),
        &fields
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        &fields
            .iter()
            .map(|(_, email)| email.as_str())
            .collect::<Vec<_>>(),
    )?
    .into_iter()
    .map(|row| (row.id.clone(), row))
    .collect();
    let (imported, taken): (Vec<_>, Vec<_>) = imports
        .into_iter()
        .partition(|(_, id)| inserted.contains_key(id));
    let mut answers: Vec<(usize, Effect)> = taken
        .iter()
        .map(|(c, _)| (c.index, Effect::IdTaken))
        .collect();
    if imported.is_empty() {
        return Ok(answers);
    }
    let rows: Vec<Remembered<'_>> = imported
        .iter()
        .map(|(c, id)| remembered_of(c, id, inserted[id].version))
        .collect();
    links::insert_imported(conn, &rows)?;
    // Invoices that arrived before their customer.
    invoices::link_many(
        conn,
        &imported
            .iter()
            .map(|(c, _)| c.remote.id.as_str())
            .collect::<Vec<_>>(),
        &imported.iter().map(|(_, id)| id).collect::<Vec<_>>(),
    )?;
    let customers: Vec<&CustomerRow> = imported.iter().map(|(_, id)| &inserted[id]).collect();
    queue::enqueue_for(conn, &customers, Operation::Create, others, None)?;
    answers.extend(imported.iter().map(|(c, _)| (c.index, Effect::Imported)));
    Ok(answers)
}

/// A deleted Stripe customer: deletion is final at Stripe, so it wins whatever the order
/// of arrival.
fn customer_deleted(
    conn: &mut PgConnection,
    event: &Event,
    remote: Customer,
    others: &[Provider],
) -> Result<Effect, DbError> {
    let Some((customer, _link)) = find_or_link(conn, &remote)? else {
        return Ok(Effect::UnknownCustomer);
    };
    let candidate = Candidate {
        index: 0,
        event,
        remote,
        current: false,
    };
    if customer.deleted_at.is_some() {
        links::remember_many(
            conn,
            &[remembered_of(&candidate, &customer.id, customer.version)],
        )?;
        return Ok(Effect::AlreadyDeleted);
    }
    let tombstone = customers::tombstone(conn, &customer.id)?;
    links::remember_many(
        conn,
        &[remembered_of(&candidate, &tombstone.id, tombstone.version)],
    )?;
    queue::enqueue_for(conn, &[&tombstone], Operation::Delete, others, None)?;
    Ok(Effect::Deleted)
}

/// The Stripe links of these Stripe customer ids and their customers, locked (link
/// first), by Stripe id.
fn linked_many(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
) -> QueryResult<HashMap<String, (CustomerRow, LinkRow)>> {
    let links = links::stripe_links_for_update(conn, stripe_ids)?;
    if links.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&CustomerId> = links.iter().map(|l| &l.customer_id).collect();
    let mut customers: HashMap<CustomerId, CustomerRow> =
        customers::find_many_for_update(conn, &ids)?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
    Ok(links
        .into_iter()
        .filter_map(|link| {
            let customer = customers.remove(&link.customer_id)?;
            Some((link.external_id.clone()?, (customer, link)))
        })
        .collect())
}

/// Finds (or, for the echo of our own create, makes) the link of a Stripe customer.
fn find_or_link(
    conn: &mut PgConnection,
    remote: &Customer,
) -> Result<Option<(CustomerRow, LinkRow)>, DbError> {
    if let Some(linked) = linked_many(conn, &[&remote.id])?.remove(&remote.id) {
        return Ok(Some(linked));
    }
    let Some(local) = remote.local_id().and_then(|id| CustomerId::parse(id).ok()) else {
        return Ok(None);
    };
    if customers::find(conn, &local)?.is_none() {
        return Ok(None);
    }
    // Our own create's echo, possibly before the consumer recorded the link.
    if !links::link_stripe_echo(conn, &local, &remote.id)? {
        // The consumer may have recorded this very link since we looked: then it is ours.
        if let Some(linked) = linked_many(conn, &[&remote.id])?.remove(&remote.id) {
            return Ok(Some(linked));
        }
        tracing::warn!(
            customer_id = %local,
            stripe_id = %remote.id,
            "a second Stripe customer claims this local id; it is not linked"
        );
        return Ok(None);
    }
    let linked = linked_many(conn, &[&remote.id])?.remove(&remote.id);
    linked
        .map(Some)
        .ok_or_else(|| DbError::Unexpected(anyhow::anyhow!("linked customer is missing")))
}

/// Stores invoices as Stripe showed them at `as_of` (an event's time, or a list read's),
/// each with its status, none over a newer row, with the local customer when linked: three
/// statements for the batch. How many were written.
pub fn store_invoices(
    conn: &mut PgConnection,
    batch: &[(&Invoice, Option<&str>)],
    as_of: i64,
) -> Result<usize, DbError> {
    let mut ids: Vec<&str> = batch.iter().map(|(i, _)| i.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let stored = invoices::stored_for_update(conn, &ids)?;
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<(&Invoice, Option<&str>, Option<String>)> = batch
        .iter()
        .filter(|(invoice, _)| seen.insert(invoice.id.as_str()))
        .filter(|(invoice, status)| {
            stored.get(&invoice.id).is_none_or(|(stored, last)| {
                !rules::invoice_is_stale(stored.as_deref(), *last, *status, as_of)
            })
        })
        .map(|(invoice, status)| (*invoice, *status, invoice.customer_id()))
        .collect();
    let stripe_ids: Vec<&str> = fresh.iter().filter_map(|(_, _, c)| c.as_deref()).collect();
    let customers = links::customers_of_stripe_ids(conn, &stripe_ids)?;
    let rows: Vec<invoices::Upsert<'_>> = fresh
        .iter()
        .map(|(invoice, status, stripe_id)| invoices::Upsert {
            invoice,
            status: *status,
            customer: stripe_id.as_ref().and_then(|s| customers.get(s)),
        })
        .collect();
    Ok(invoices::upsert(conn, &rows, as_of)?)
}

/// An invoice event: the row is written unless the event is older than what it holds.
fn invoice_changed(conn: &mut PgConnection, event: &Event) -> Result<Effect, DbError> {
    let invoice = event
        .invoice()
        .map_err(|e| DbError::Unexpected(anyhow::anyhow!("invoice object: {e}")))?;
    let status = if event.kind == "invoice.deleted" {
        Some("deleted".to_owned())
    } else {
        invoice.status.clone()
    };
    if store_invoices(conn, &[(&invoice, status.as_deref())], event.created)? == 0 {
        return Ok(Effect::Stale);
    }
    Ok(Effect::InvoiceStored)
}
