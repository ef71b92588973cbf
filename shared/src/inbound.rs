//! Inward sync: a verified Stripe event applied to the catalog and the invoice catalogue,
//! together with its event row, in one transaction.
//!
//! Rules (SPEC "Inward"): an event is applied once (by id); an older event never rolls
//! state back; a same-second tie is settled by whether the event follows from the state we
//! last applied (its `previous_attributes`); an echo of a value we pushed never overwrites
//! a newer local change; remote changes go to the other providers, never back to Stripe.

use std::collections::HashMap;

use diesel::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::db::customers::{self, CustomerRow};
use crate::db::links::LinkRow;
use crate::db::schema::{customers as customers_table, invoices, provider_links, webhook_events};
use crate::db::DbError;
use crate::domain::{CustomerId, Operation, Provider};
use crate::queue;

/// The invoice event types that feed the catalogue.
pub const INVOICE_EVENTS: &[&str] = &[
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.deleted",
];

/// The customer event types that change the catalog.
pub const CUSTOMER_EVENTS: &[&str] = &["customer.created", "customer.updated", "customer.deleted"];

/// A Stripe event envelope, as much as we read.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

/// `data` of an event.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
    #[serde(default)]
    pub previous_attributes: Option<Value>,
}

impl Event {
    /// Parses a verified body; anything that is not an event is refused with a reason.
    pub fn parse(body: &[u8]) -> Result<(Self, Value), String> {
        let raw: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let event: Event = serde_json::from_value(raw.clone())
            .map_err(|e| format!("body is not a Stripe event: {e}"))?;
        if raw
            .get("object")
            .and_then(Value::as_str)
            .is_some_and(|o| o != "event")
        {
            return Err("body is not a Stripe event: object is not \"event\"".into());
        }
        if event.id.is_empty() || event.id.len() > 255 || event.kind.is_empty() {
            return Err("body is not a Stripe event: empty id or type".into());
        }
        if !event.data.object.is_object() {
            return Err("body is not a Stripe event: data.object is not an object".into());
        }
        // A handled event whose object we could not read would fail inside the transaction
        // and be retried by Stripe forever: refuse it here, before anything is written.
        let kind = event.kind.as_str();
        let unreadable = if kind.starts_with("customer.") && CUSTOMER_EVENTS.contains(&kind) {
            RemoteCustomer::parse(&event).err().map(|e| e.to_string())
        } else if INVOICE_EVENTS.contains(&kind) {
            serde_json::from_value::<RemoteInvoice>(event.data.object.clone())
                .err()
                .map(|e| e.to_string())
        } else {
            None
        };
        if let Some(reason) = unreadable {
            return Err(format!("{kind} carries an object we cannot read: {reason}"));
        }
        Ok((event, raw))
    }

    fn object_id(&self) -> Option<&str> {
        self.data.object.get("id").and_then(Value::as_str)
    }

    /// The Stripe customer the event is about (the object itself, or an invoice's
    /// customer); the event's own id for anything else.
    pub fn customer_key(&self) -> &str {
        let object = &self.data.object;
        let customer = match object.get("object").and_then(Value::as_str) {
            Some("customer") => object.get("id"),
            _ => object.get("customer"),
        };
        customer.and_then(Value::as_str).unwrap_or(&self.id)
    }
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event id was seen before: nothing new.
    Duplicate,
    /// Stored, but the type is not one we act on.
    Unhandled,
    /// Stored and acted on (which may be "nothing to change": stale, echo).
    Handled(&'static str),
}

/// Stores the event and applies its effects in one transaction.
pub fn apply(
    conn: &mut PgConnection,
    event: &Event,
    raw: &Value,
    providers: &[Provider],
) -> Result<Applied, DbError> {
    let others = others(providers);
    conn.transaction(|conn| apply_one(conn, event, raw, &others))
}

/// Stores and applies many events in one transaction (group commit): the same effects
/// as [`apply`] on each in turn, in the order given. Any failure rolls all of them back.
///
/// The batch costs a handful of statements rather than several per event: the event
/// rows go in with one statement, and the customer events that are alone in the batch
/// to concern their Stripe customer are applied together: those of customers we link
/// already (updates, echoes) and those of customers we have never seen (imports). Every
/// other event is applied one at a time, as [`apply`] would; it concerns a different
/// Stripe customer from the grouped ones, so the order between them changes nothing.
pub fn apply_batch(
    conn: &mut PgConnection,
    events: &[(Event, Value)],
    providers: &[Provider],
) -> Result<Vec<Applied>, DbError> {
    let others = others(providers);
    conn.transaction(|conn| {
        let fresh = store_events(conn, events)?;
        let mut answers: Vec<Option<Applied>> = fresh
            .iter()
            .map(|stored| (!stored).then_some(Applied::Duplicate))
            .collect();
        let candidates = candidates(events, &fresh);
        let ids: Vec<&str> = candidates.iter().map(|c| c.remote.id.as_str()).collect();
        let mut linked = linked_many(conn, &ids)?;
        let (known, unknown): (Vec<Candidate>, Vec<Candidate>) = candidates
            .into_iter()
            .partition(|c| linked.contains_key(&c.remote.id));
        let known = known
            .into_iter()
            .map(|c| {
                let (customer, link) = linked.remove(&c.remote.id).expect("partitioned");
                (c, customer, link)
            })
            .collect();
        let imports = unknown
            .into_iter()
            .filter(|c| c.remote.local_id().is_none() && CustomerId::parse(&c.remote.id).is_ok())
            .collect();
        let grouped = update_known(conn, events, known, &others)?
            .into_iter()
            .chain(import_many(conn, imports, &others)?);
        for (i, effect) in grouped {
            answers[i] = Some(Applied::Handled(effect));
        }
        for (i, (event, _)) in events.iter().enumerate() {
            if answers[i].is_none() {
                answers[i] = Some(apply_stored(conn, event, &others)?);
            }
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every event is answered"))
            .collect())
    })
}

/// Inserts the event rows in one statement; `true` for each event stored now (an id
/// seen before, or earlier in the batch, is a duplicate).
fn store_events(conn: &mut PgConnection, events: &[(Event, Value)]) -> QueryResult<Vec<bool>> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let stored: Vec<Stored> = crate::db::statement::statement(
        "INSERT INTO webhook_events (id, event_type, created, object_id, payload) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[]) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|(e, _)| e.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|(e, _)| e.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(events.iter().map(|(e, _)| e.created).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        events
            .iter()
            .map(|(e, _)| e.object_id())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Jsonb>, _>(events.iter().map(|(_, raw)| raw).collect::<Vec<_>>())
    .load(conn)?;
    let mut stored: std::collections::HashSet<String> =
        stored.into_iter().map(|row| row.id).collect();
    // The first occurrence of an id takes it; later ones are duplicates.
    Ok(events.iter().map(|(e, _)| stored.remove(&e.id)).collect())
}

/// A customer event applied with the others of its batch: the event's index in it.
struct Candidate {
    index: usize,
    event_id: String,
    created: i64,
    remote: RemoteCustomer,
}

/// The stored customer events of the batch that are the only stored event about their
/// Stripe customer in it. Anything else is left to [`apply_stored`].
fn candidates(events: &[(Event, Value)], fresh: &[bool]) -> Vec<Candidate> {
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
                event_id: event.id.clone(),
                created: event.created,
                remote: RemoteCustomer::parse(event).ok()?,
            })
        })
        .collect()
}

/// The Stripe links of these Stripe customer ids and their customers, locked (link
/// first, as [`find_or_link`] does).
fn linked_many(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
) -> QueryResult<HashMap<String, (CustomerRow, LinkRow)>> {
    use diesel::sql_types::{Array, Text};
    if stripe_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let links: Vec<LinkRow> = crate::db::statement::statement(LINKED_STRIPE_IDS)
        .bind::<Array<Text>, _>(stripe_ids)
        .load(conn)?;
    if links.is_empty() {
        return Ok(HashMap::new());
    }
    let customer_ids: Vec<&str> = links.iter().map(|l| l.customer_id.as_str()).collect();
    let mut customers: HashMap<String, CustomerRow> =
        crate::db::statement::statement(CUSTOMERS_FOR_UPDATE)
            .bind::<Array<Text>, _>(&customer_ids)
            .load::<CustomerRow>(conn)?
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

// One index probe per id, whatever the tables' statistics say. `= ANY($1)`, or the same
// subquery without its LIMIT (which PostgreSQL flattens into a join), can be planned as a
// scan of the whole table and a hash join when the statistics are stale: milliseconds
// per batch, growing with the table. The LIMIT keeps each subquery a probe per id.

/// The Stripe links of the given Stripe customer ids, locked.
const LINKED_STRIPE_IDS: &str = "SELECT l.* FROM unnest($1::text[]) AS t(id), LATERAL \
       (SELECT * FROM provider_links \
        WHERE provider = 'stripe' AND external_id = t.id LIMIT 1 FOR UPDATE) AS l";

/// The given customers, locked.
const CUSTOMERS_FOR_UPDATE: &str = "SELECT c.* FROM unnest($1::text[]) AS t(id), LATERAL \
       (SELECT * FROM customers WHERE id = t.id LIMIT 1 FOR UPDATE) AS c";

/// [`customer_changed`] for many customers we link already, with the rows
/// [`linked_many`] locked: a few statements whatever their number. Answers each
/// candidate's index with its effect.
fn update_known(
    conn: &mut PgConnection,
    events: &[(Event, Value)],
    known: Vec<(Candidate, CustomerRow, LinkRow)>,
    others: &[Provider],
) -> QueryResult<Vec<(usize, &'static str)>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let mut answers = Vec::with_capacity(known.len());
    // (candidate, customer, version to record as synced)
    let mut remembered: Vec<(&Candidate, &CustomerRow, Option<i64>)> = Vec::new();
    let mut applied: Vec<(&Candidate, &CustomerRow)> = Vec::new();
    for (candidate, customer, link) in &known {
        let event = &events[candidate.index].0;
        let verdict = verdict(customer, link, event, &candidate.remote, false);
        answers.push((candidate.index, verdict.outcome()));
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
    let updated: HashMap<String, CustomerRow> = if applied.is_empty() {
        HashMap::new()
    } else {
        crate::db::statement::statement(
            "UPDATE customers SET name = t.name, email = t.email, \
               version = customers.version + 1, updated_at = now() \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, name, email) \
             WHERE customers.id = t.id RETURNING customers.*",
        )
        .bind::<Array<Text>, _>(
            applied
                .iter()
                .map(|(_, customer)| customer.id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(fields.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>())
        .load::<CustomerRow>(conn)?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect()
    };
    for (candidate, customer) in &applied {
        let version = updated.get(&customer.id).map(|c| c.version);
        remembered.push((candidate, customer, version));
    }
    if remembered.is_empty() {
        return Ok(answers);
    }
    let stripe_ids: Vec<&str> = remembered
        .iter()
        .map(|(c, _, _)| c.remote.id.as_str())
        .collect();
    let customer_ids: Vec<&str> = remembered.iter().map(|(_, c, _)| c.id.as_str()).collect();
    link_invoices_many(conn, &stripe_ids, &customer_ids)?;
    // remember_remote, for all of them.
    crate::db::statement::statement(
        "UPDATE provider_links SET remote_event_created = t.ec, remote_event_id = t.ei, \
           remote_name = t.rn, remote_email = t.re, \
           synced_version = GREATEST(provider_links.synced_version, t.v), updated_at = now() \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
           AS t(c, ec, ei, rn, re, v) \
         WHERE provider_links.customer_id = t.c AND provider_links.provider = 'stripe'",
    )
    .bind::<Array<Text>, _>(&customer_ids)
    .bind::<Array<BigInt>, _>(
        remembered
            .iter()
            .map(|(c, _, _)| c.created)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        remembered
            .iter()
            .map(|(c, _, _)| c.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        remembered
            .iter()
            .map(|(c, _, _)| c.remote.name.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        remembered
            .iter()
            .map(|(c, _, _)| c.remote.email.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(
        remembered
            .iter()
            .map(|(_, _, v)| v.unwrap_or(0))
            .collect::<Vec<_>>(),
    )
    .execute(conn)?;
    let updated: Vec<&CustomerRow> = applied
        .iter()
        .filter_map(|(_, customer)| updated.get(&customer.id))
        .collect();
    enqueue_many_for(conn, &updated, Operation::Update, others)?;
    Ok(answers)
}

/// [`link_invoices`] for many Stripe customers: the i-th Stripe id's unlinked invoices
/// go to the i-th customer id.
fn link_invoices_many(
    conn: &mut PgConnection,
    stripe_ids: &[&str],
    customer_ids: &[&str],
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Text};
    diesel::sql_query(
        "UPDATE invoices SET customer_id = t.c FROM unnest($1::text[], $2::text[]) AS t(s, c) \
         WHERE invoices.stripe_customer_id = t.s AND invoices.customer_id IS NULL",
    )
    .bind::<Array<Text>, _>(stripe_ids)
    .bind::<Array<Text>, _>(customer_ids)
    .execute(conn)
    .map(|_| ())
}

/// [`enqueue_all`] for many customers: their links at `providers` (made when missing) and
/// one task per customer and provider, in two statements.
fn enqueue_many_for(
    conn: &mut PgConnection,
    customers: &[&CustomerRow],
    operation: Operation,
    providers: &[Provider],
) -> QueryResult<()> {
    if providers.is_empty() || customers.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, Provider)> = customers
        .iter()
        .flat_map(|c| providers.iter().map(move |p| (c.id.as_str(), *p)))
        .collect();
    crate::db::links::ensure_many(
        conn,
        &pairs.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        &pairs.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(),
    )?;
    let tasks: Vec<queue::NewTask<'_>> = customers
        .iter()
        .flat_map(|c| {
            providers.iter().map(move |provider| queue::NewTask {
                provider: *provider,
                customer_id: &c.id,
                operation,
                version: c.version,
                request_id: None,
            })
        })
        .collect();
    queue::enqueue_many(conn, &tasks)?;
    Ok(())
}

/// [`created_in_stripe`] for many customers at once: a few statements whatever their
/// number. Answers each import's index with its effect.
fn import_many(
    conn: &mut PgConnection,
    imports: Vec<Candidate>,
    others: &[Provider],
) -> QueryResult<Vec<(usize, &'static str)>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    if imports.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<(String, String)> = imports.iter().map(|i| i.remote.fields()).collect();
    let inserted = customers::insert_many(
        conn,
        &imports
            .iter()
            .map(|i| i.remote.id.as_str())
            .collect::<Vec<_>>(),
        &fields
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        &fields
            .iter()
            .map(|(_, email)| email.as_str())
            .collect::<Vec<_>>(),
    )?;
    let inserted: HashMap<String, CustomerRow> = inserted
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let (imported, taken): (Vec<Candidate>, Vec<Candidate>) = imports
        .into_iter()
        .partition(|i| inserted.contains_key(&i.remote.id));
    let mut answers: Vec<(usize, &'static str)> =
        taken.iter().map(|i| (i.index, "id taken")).collect();
    if imported.is_empty() {
        return Ok(answers);
    }
    let ids: Vec<&str> = imported.iter().map(|i| i.remote.id.as_str()).collect();
    let versions: Vec<i64> = ids.iter().map(|id| inserted[*id].version).collect();
    // The Stripe link, with what remember_remote would record, in one statement.
    crate::db::statement::statement(
        "INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
           remote_event_created, remote_event_id, remote_name, remote_email) \
         SELECT c, 'stripe', c, v, ec, ei, rn, re FROM unnest($1::text[], $2::bigint[], \
           $3::bigint[], $4::text[], $5::text[], $6::text[]) AS t(c, v, ec, ei, rn, re)",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<BigInt>, _>(&versions)
    .bind::<Array<BigInt>, _>(imported.iter().map(|i| i.created).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        imported
            .iter()
            .map(|i| i.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        imported
            .iter()
            .map(|i| i.remote.name.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        imported
            .iter()
            .map(|i| i.remote.email.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(conn)?;
    // Invoices that arrived before their customer.
    link_invoices_many(conn, &ids, &ids)?;
    let customers: Vec<&CustomerRow> = ids.iter().map(|id| &inserted[*id]).collect();
    enqueue_many_for(conn, &customers, Operation::Create, others)?;
    answers.extend(imported.iter().map(|i| (i.index, "imported")));
    Ok(answers)
}

/// The providers a change from Stripe is passed on to.
fn others(providers: &[Provider]) -> Vec<Provider> {
    providers
        .iter()
        .copied()
        .filter(|p| *p != Provider::Stripe)
        .collect()
}

fn apply_one(
    conn: &mut PgConnection,
    event: &Event,
    raw: &Value,
    others: &[Provider],
) -> Result<Applied, DbError> {
    let inserted = diesel::insert_into(webhook_events::table)
        .values((
            webhook_events::id.eq(&event.id),
            webhook_events::event_type.eq(&event.kind),
            webhook_events::created.eq(event.created),
            webhook_events::object_id.eq(event.object_id()),
            webhook_events::payload.eq(raw),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if inserted == 0 {
        return Ok(Applied::Duplicate);
    }
    apply_stored(conn, event, others)
}

/// Applies an event whose row was just stored.
fn apply_stored(
    conn: &mut PgConnection,
    event: &Event,
    others: &[Provider],
) -> Result<Applied, DbError> {
    let kind = event.kind.as_str();
    let result = match kind {
        "customer.created" | "customer.updated" => customer_changed(conn, event, others, false)?,
        "customer.deleted" => customer_deleted(conn, event, others)?,
        _ if INVOICE_EVENTS.contains(&kind) => invoice_changed(conn, event)?,
        _ => return Ok(Applied::Unhandled),
    };
    Ok(Applied::Handled(result))
}

#[derive(Debug, Deserialize)]
struct RemoteCustomer {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, Value>,
}

impl RemoteCustomer {
    fn parse(event: &Event) -> Result<Self, DbError> {
        serde_json::from_value(event.data.object.clone())
            .map_err(|e| DbError::Unexpected(anyhow::anyhow!("customer object: {e}")))
    }

    fn local_id(&self) -> Option<&str> {
        self.metadata
            .get("customer_sync_id")
            .and_then(Value::as_str)
    }

    fn fields(&self) -> (String, String) {
        (
            self.name.clone().unwrap_or_default(),
            self.email.clone().unwrap_or_default(),
        )
    }
}

/// The customer linked to a Stripe customer id and its Stripe link, both locked, in one
/// statement.
fn linked_by_external(
    conn: &mut PgConnection,
    stripe_id: &str,
) -> QueryResult<Option<(CustomerRow, LinkRow)>> {
    provider_links::table
        .inner_join(customers_table::table)
        .filter(provider_links::provider.eq(Provider::Stripe.as_str()))
        .filter(provider_links::external_id.eq(stripe_id))
        .select((CustomerRow::as_select(), LinkRow::as_select()))
        .for_update()
        .first(conn)
        .optional()
}

/// Finds (or, for the echo of our own create, makes) the link of a Stripe customer.
fn find_or_link(
    conn: &mut PgConnection,
    remote: &RemoteCustomer,
) -> Result<Option<(CustomerRow, LinkRow)>, DbError> {
    if let Some(linked) = linked_by_external(conn, &remote.id)? {
        return Ok(Some(linked));
    }
    let Some(local) = remote.local_id().and_then(|id| CustomerId::parse(id).ok()) else {
        return Ok(None);
    };
    if customers::find(conn, &local)?.is_none() {
        return Ok(None);
    }
    // Our own create's echo, possibly before the consumer recorded the link.
    crate::db::links::ensure(conn, &local, Provider::Stripe)?;
    let linked = diesel::update(
        provider_links::table
            .find((local.as_str(), Provider::Stripe.as_str()))
            .filter(provider_links::external_id.is_null()),
    )
    .set(provider_links::external_id.eq(&remote.id))
    .execute(conn)?;
    if linked == 0 {
        tracing::warn!(
            customer_id = %local,
            stripe_id = %remote.id,
            "a second Stripe customer claims this local id; it is not linked"
        );
        return Ok(None);
    }
    let customer = customers::find_for_update(conn, &local)?
        .ok_or_else(|| DbError::Unexpected(anyhow::anyhow!("linked customer is missing")))?;
    let link = provider_links::table
        .find((local.as_str(), Provider::Stripe.as_str()))
        .select(LinkRow::as_select())
        .for_update()
        .first(conn)?;
    Ok(Some((customer, link)))
}

/// For a same-second tie: whether the event's prior state is the one we last applied.
fn follows(link: &LinkRow, event: &Event, remote: &RemoteCustomer) -> bool {
    if event.kind == "customer.created" {
        return false;
    }
    let previous = event.data.previous_attributes.as_ref();
    let before = |field: &str, now: &Option<String>| -> Option<String> {
        match previous.and_then(|p| p.get(field)) {
            Some(value) => value.as_str().map(str::to_owned),
            None => now.clone(),
        }
    };
    before("name", &remote.name) == link.remote_name
        && before("email", &remote.email) == link.remote_email
}

fn remember_remote(
    conn: &mut PgConnection,
    customer_id: &str,
    event: &Event,
    remote: &RemoteCustomer,
    synced_version: Option<i64>,
) -> QueryResult<()> {
    diesel::update(provider_links::table.find((customer_id, Provider::Stripe.as_str())))
        .set((
            provider_links::remote_event_created.eq(event.created),
            provider_links::remote_event_id.eq(&event.id),
            provider_links::remote_name.eq(&remote.name),
            provider_links::remote_email.eq(&remote.email),
            // A bound value keeps the statement text constant, so it is prepared once.
            provider_links::synced_version.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "GREATEST(synced_version, ",
            )
            .bind::<diesel::sql_types::BigInt, _>(synced_version.unwrap_or(0))
            .sql(")")),
            provider_links::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|_| ())
}

fn enqueue_all(
    conn: &mut PgConnection,
    customer: &CustomerRow,
    operation: Operation,
    providers: &[Provider],
) -> QueryResult<()> {
    let id = CustomerId::parse(&customer.id).expect("stored ids are valid");
    for provider in providers {
        crate::db::links::ensure(conn, &id, *provider)?;
        queue::enqueue(conn, *provider, &id, operation, customer.version, None)?;
    }
    Ok(())
}

fn link_invoices(conn: &mut PgConnection, stripe_id: &str, customer_id: &str) -> QueryResult<()> {
    diesel::update(
        invoices::table
            .filter(invoices::stripe_customer_id.eq(stripe_id))
            .filter(invoices::customer_id.is_null()),
    )
    .set(invoices::customer_id.eq(customer_id))
    .execute(conn)
    .map(|_| ())
}

/// What [`apply`] answers for a same-second event that does not follow from the state we
/// hold: neither order can be trusted, so the caller fetches the customer from Stripe and
/// applies that with [`apply_current_customer`].
pub const UNDECIDED_TIE: &str = "same-second tie";

/// Applies the customer as Stripe holds it now (fetched to settle a same-second tie).
pub fn apply_current_customer(
    conn: &mut PgConnection,
    object: &Value,
    created: i64,
    event_id: &str,
    providers: &[Provider],
) -> Result<&'static str, DbError> {
    let others = others(providers);
    let event = Event {
        id: format!("{event_id}:current"),
        kind: "customer.updated".into(),
        created,
        data: EventData {
            object: object.clone(),
            previous_attributes: None,
        },
    };
    if object.get("deleted").and_then(Value::as_bool) == Some(true) {
        return conn.transaction(|conn| customer_deleted(conn, &event, &others));
    }
    conn.transaction(|conn| customer_changed(conn, &event, &others, true))
}

fn customer_changed(
    conn: &mut PgConnection,
    event: &Event,
    others: &[Provider],
    current: bool,
) -> Result<&'static str, DbError> {
    let remote = RemoteCustomer::parse(event)?;
    let Some((customer, link)) = find_or_link(conn, &remote)? else {
        return created_in_stripe(conn, event, &remote, others);
    };
    let verdict = verdict(&customer, &link, event, &remote, current);
    let synced = match verdict {
        Verdict::Stale | Verdict::Tie => return Ok(verdict.outcome()),
        Verdict::DeletedLocally | Verdict::OlderThanLocal => None,
        Verdict::InSync => Some(customer.version),
        Verdict::Apply => {
            let (name, email) = remote.fields();
            let id = CustomerId::parse(&customer.id).map_err(|e| DbError::Unexpected(e.into()))?;
            let updated = customers::update_fields(conn, &id, &name, &email)?;
            enqueue_all(conn, &updated, Operation::Update, others)?;
            Some(updated.version)
        }
    };
    link_invoices(conn, &remote.id, &customer.id)?;
    remember_remote(conn, &customer.id, event, &remote, synced)?;
    Ok(verdict.outcome())
}

/// What a customer event does to a customer we link, decided on its locked rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Older than the last event applied: nothing changes.
    Stale,
    /// The same second as the last event applied, and not following from it.
    Tie,
    /// The customer is a tombstone here: only the remote state is recorded.
    DeletedLocally,
    /// Stripe holds our current state: an echo, or the same change made on both sides.
    InSync,
    /// A newer local change is on its way to Stripe and will overwrite this there.
    OlderThanLocal,
    /// The remote fields become ours, and go to the other providers.
    Apply,
}

impl Verdict {
    fn outcome(self) -> &'static str {
        match self {
            Verdict::Stale => "stale",
            Verdict::Tie => UNDECIDED_TIE,
            Verdict::DeletedLocally => "deleted locally",
            Verdict::InSync => "in sync",
            Verdict::OlderThanLocal => "older than a local change",
            Verdict::Apply => "applied",
        }
    }
}

/// Decides an event about a linked customer; `current` (the customer as Stripe holds it
/// now) skips the ordering checks.
fn verdict(
    customer: &CustomerRow,
    link: &LinkRow,
    event: &Event,
    remote: &RemoteCustomer,
    current: bool,
) -> Verdict {
    if !current {
        match link.remote_event_created {
            Some(last) if event.created < last => return Verdict::Stale,
            Some(last) if event.created == last && !follows(link, event, remote) => {
                // A created event in the same second as a later update is simply older.
                return if event.kind == "customer.created" {
                    Verdict::Stale
                } else {
                    Verdict::Tie
                };
            }
            _ => {}
        }
    }
    if customer.deleted_at.is_some() {
        return Verdict::DeletedLocally;
    }
    let (name, email) = remote.fields();
    if name == customer.name && email == customer.email {
        return Verdict::InSync;
    }
    if link.synced_version < customer.version {
        return Verdict::OlderThanLocal;
    }
    Verdict::Apply
}

fn created_in_stripe(
    conn: &mut PgConnection,
    event: &Event,
    remote: &RemoteCustomer,
    others: &[Provider],
) -> Result<&'static str, DbError> {
    let Ok(id) = CustomerId::parse(&remote.id) else {
        return Ok("unusable id");
    };
    if remote.local_id().is_some() {
        // It names a local customer we do not have (deleted for good, or another install).
        tracing::warn!(stripe_id = %remote.id, "customer names an unknown customer_sync_id; not imported");
        return Ok("unknown local id");
    }
    let (name, email) = remote.fields();
    let inserted = diesel::insert_into(customers_table::table)
        .values((
            customers_table::id.eq(id.as_str()),
            customers_table::name.eq(&name),
            customers_table::email.eq(&email),
        ))
        .on_conflict_do_nothing()
        .returning(CustomerRow::as_returning())
        .get_result(conn)
        .optional()?;
    let Some(customer) = inserted else {
        return Ok("id taken");
    };
    diesel::insert_into(provider_links::table)
        .values((
            provider_links::customer_id.eq(&customer.id),
            provider_links::provider.eq(Provider::Stripe.as_str()),
            provider_links::external_id.eq(&remote.id),
        ))
        .execute(conn)?;
    remember_remote(conn, &customer.id, event, remote, Some(customer.version))?;
    link_invoices(conn, &remote.id, &customer.id)?;
    enqueue_all(conn, &customer, Operation::Create, others)?;
    Ok("imported")
}

fn customer_deleted(
    conn: &mut PgConnection,
    event: &Event,
    others: &[Provider],
) -> Result<&'static str, DbError> {
    let remote = RemoteCustomer::parse(event)?;
    let Some((customer, _link)) = find_or_link(conn, &remote)? else {
        return Ok("unknown customer");
    };
    // Deletion is final at Stripe, so it wins whatever the order of arrival.
    if customer.deleted_at.is_some() {
        remember_remote(conn, &customer.id, event, &remote, Some(customer.version))?;
        return Ok("already deleted");
    }
    let id = CustomerId::parse(&customer.id).map_err(|e| DbError::Unexpected(e.into()))?;
    let tombstone = customers::tombstone(conn, &id)?;
    remember_remote(conn, &customer.id, event, &remote, Some(tombstone.version))?;
    enqueue_all(conn, &tombstone, Operation::Delete, others)?;
    Ok("deleted")
}

#[derive(Debug, Deserialize)]
struct RemoteInvoice {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    number: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    amount_due: i64,
    #[serde(default)]
    amount_paid: i64,
    #[serde(default)]
    amount_remaining: i64,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    hosted_invoice_url: Option<String>,
    #[serde(default)]
    due_date: Option<i64>,
    #[serde(default)]
    period_start: Option<i64>,
    #[serde(default)]
    period_end: Option<i64>,
    #[serde(default)]
    created: i64,
}

/// How far along its life an invoice status is; terminal statuses rank highest.
fn status_rank(status: Option<&str>) -> u8 {
    match status {
        None | Some("draft") => 0,
        Some("open") => 1,
        Some(_) => 2,
    }
}

fn invoice_changed(conn: &mut PgConnection, event: &Event) -> Result<&'static str, DbError> {
    let remote: RemoteInvoice = serde_json::from_value(event.data.object.clone())
        .map_err(|e| DbError::Unexpected(anyhow::anyhow!("invoice object: {e}")))?;
    let status = if event.kind == "invoice.deleted" {
        Some("deleted".to_owned())
    } else {
        remote.status.clone()
    };
    let existing: Option<(Option<String>, i64)> = invoices::table
        .find(&remote.id)
        .select((invoices::status, invoices::last_event_created))
        .for_update()
        .first(conn)
        .optional()?;
    if let Some((stored, last)) = &existing {
        let (old, new) = (
            status_rank(stored.as_deref()),
            status_rank(status.as_deref()),
        );
        let terminal_kept = old == 2 && new < 2;
        let older = event.created < *last || (event.created == *last && new < old);
        if terminal_kept || older {
            return Ok("stale");
        }
    }
    let stripe_customer = match &remote.customer {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let customer_id: Option<String> = match &stripe_customer {
        Some(stripe_id) => provider_links::table
            .filter(provider_links::provider.eq(Provider::Stripe.as_str()))
            .filter(provider_links::external_id.eq(stripe_id))
            .select(provider_links::customer_id)
            .first(conn)
            .optional()?,
        None => None,
    };
    let values = (
        invoices::id.eq(&remote.id),
        invoices::customer_id.eq(&customer_id),
        invoices::stripe_customer_id.eq(&stripe_customer),
        invoices::number.eq(&remote.number),
        invoices::status.eq(&status),
        invoices::currency.eq(remote.currency.clone().unwrap_or_default()),
        invoices::amount_due.eq(remote.amount_due),
        invoices::amount_paid.eq(remote.amount_paid),
        invoices::amount_remaining.eq(remote.amount_remaining),
        invoices::total.eq(remote.total),
        invoices::hosted_invoice_url.eq(&remote.hosted_invoice_url),
        invoices::due_date.eq(remote.due_date),
        invoices::period_start.eq(remote.period_start),
        invoices::period_end.eq(remote.period_end),
        invoices::created.eq(remote.created),
        invoices::last_event_created.eq(event.created),
    );
    diesel::insert_into(invoices::table)
        .values(values.clone())
        .on_conflict(invoices::id)
        .do_update()
        .set((values, invoices::updated_at.eq(diesel::dsl::now)))
        .execute(conn)?;
    Ok("invoice stored")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(object: &str) -> String {
        let body =
            format!(r#"{{"id":"evt_1","type":"x","created":1,"data":{{"object":{object}}}}}"#);
        Event::parse(body.as_bytes())
            .unwrap()
            .0
            .customer_key()
            .to_owned()
    }

    /// The batch's lookups stay one index probe per id on large tables whose statistics
    /// were never gathered (a hash join over every link took milliseconds per batch), in
    /// the custom plan of a first call and in the generic plan PostgreSQL may cache for a
    /// prepared statement.
    #[cfg(feature = "testing")]
    #[test]
    fn the_batch_lookups_probe_the_index_per_id_whatever_the_statistics() {
        use diesel::connection::SimpleConnection;
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let db = crate::testing::TestDatabase::create();
        let mut conn = db.connect();
        conn.batch_execute(
            "INSERT INTO customers (id, name, email) \
               SELECT 'cus_' || g, 'N', 'n@example.com' FROM generate_series(1, 20000) g; \
             INSERT INTO provider_links (customer_id, provider, external_id) \
               SELECT 'cus_' || g, 'stripe', 'cus_' || g FROM generate_series(1, 20000) g;",
        )
        .unwrap();
        let ids = format!(
            "'{{{}}}'",
            (0..16)
                .map(|n| format!("cus_{}", n * 997))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (name, sql) in [
            ("links", LINKED_STRIPE_IDS),
            ("customers", CUSTOMERS_FOR_UPDATE),
        ] {
            conn.batch_execute(&format!("PREPARE {name}(text[]) AS {sql}"))
                .unwrap();
            for mode in ["force_custom_plan", "force_generic_plan"] {
                conn.batch_execute(&format!("SET plan_cache_mode = {mode}"))
                    .unwrap();
                let plan: Vec<Line> = diesel::sql_query(format!("EXPLAIN EXECUTE {name}({ids})"))
                    .load(&mut conn)
                    .unwrap();
                let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
                let plan = plan.join("\n");
                assert!(plan.contains("Nested Loop"), "{name}, {mode}:\n{plan}");
                assert!(plan.contains("Index"), "{name}, {mode}:\n{plan}");
                assert!(
                    !plan.contains("Hash") && !plan.contains("Seq Scan"),
                    "{name}, {mode}:\n{plan}"
                );
            }
        }
    }

    #[test]
    fn events_are_keyed_by_the_stripe_customer_they_concern() {
        assert_eq!(key_of(r#"{"id":"cus_A","object":"customer"}"#), "cus_A");
        assert_eq!(
            key_of(r#"{"id":"in_1","object":"invoice","customer":"cus_A"}"#),
            "cus_A"
        );
        assert_eq!(
            key_of(r#"{"id":"pi_1","object":"payment_intent"}"#),
            "evt_1"
        );
        assert_eq!(
            key_of(r#"{"id":"in_2","object":"invoice","customer":null}"#),
            "evt_1"
        );
    }
}
