//! Changes to the customer catalog: each writes the customer (version + 1) and one
//! task per enabled provider in one transaction.

use std::collections::HashMap;

use diesel::prelude::*;

use crate::db::customers::{self, CustomerFilter, CustomerRow};
use crate::db::links::{self, LinkRow};
use crate::db::tasks::{self as task_rows, TaskRow};
use crate::db::DbError;
use crate::domain::{CustomerId, CustomerName, Email, Operation, Provider};
use crate::queue;

/// What a change did: the customer as it now stands and the tasks it queued.
#[derive(Debug)]
pub struct Change {
    /// The customer after the change.
    pub customer: CustomerRow,
    /// Its provider links.
    pub links: Vec<LinkRow>,
    /// The tasks queued by this change (empty when nothing changed).
    pub tasks: Vec<TaskRow>,
    /// Whether anything was written (202) rather than a no-op (200).
    pub changed: bool,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No customer has this id.
    #[error("no customer with id '{0}'")]
    NotFound(String),
    /// The request contradicts what is stored.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What happened, for the caller.
        message: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for CatalogError {
    fn from(e: diesel::result::Error) -> Self {
        CatalogError::Db(e.into())
    }
}

/// Who asked for a change, carried into its tasks.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The API request id, to follow a change end to end.
    pub request_id: Option<String>,
}

/// A new customer as the API received it.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub id: CustomerId,
    pub name: CustomerName,
    pub email: Email,
}

/// Creates a customer; the same id with the same fields again is a no-op (a client retry).
pub fn create(
    conn: &mut PgConnection,
    new: &NewCustomer,
    providers: &[Provider],
    origin: &Origin,
) -> Result<Change, CatalogError> {
    conn.transaction(|conn| {
        if let Some(customer) = customers::insert_if_absent(conn, &new.id, &new.name, &new.email)? {
            let tasks = queue_tasks(conn, &customer, Operation::Create, providers, origin)?;
            return finish(conn, customer, tasks, true);
        }
        existing_create(conn, new)
    })
}

/// The answer to a create whose id is taken: a no-op for the same fields, else a conflict.
fn existing_create(conn: &mut PgConnection, new: &NewCustomer) -> Result<Change, CatalogError> {
    let existing = customers::find_for_update(conn, &new.id)?
        .ok_or_else(|| CatalogError::NotFound(new.id.to_string()))?;
    if existing.deleted_at.is_some() {
        return Err(CatalogError::Conflict {
            code: "customer_exists",
            message: format!(
                "customer '{}' existed and was deleted; use another id",
                new.id
            ),
        });
    }
    if existing.name != new.name.as_str() || existing.email != new.email.as_str() {
        return Err(CatalogError::Conflict {
            code: "customer_exists",
            message: format!(
                "customer '{}' already exists with other fields; use PATCH to change it",
                new.id
            ),
        });
    }
    finish(conn, existing, Vec::new(), false)
}

/// Creates many customers (group commit): the same answers as [`create`] for each, in
/// order.
///
/// The customers, their links and their tasks are written by one statement, which
/// PostgreSQL commits on its own: one round trip for the batch instead of five (`BEGIN`,
/// three INSERTs, `COMMIT`), which bounded the task API (see BENCHMARKS.md). The first
/// item with an id creates it; an id that was taken, or repeated in the batch, is then
/// answered as a retry or a conflict, each on its own.
pub fn create_batch(
    conn: &mut PgConnection,
    batch: &[(NewCustomer, Origin)],
    providers: &[Provider],
) -> Result<Vec<Result<Change, CatalogError>>, DbError> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<&(NewCustomer, Origin)> = batch
        .iter()
        .filter(|(new, _)| seen.insert(new.id.as_str()))
        .collect();
    let mut created = insert_with_tasks(conn, &first, providers)?;
    Ok(batch
        .iter()
        .map(|(new, _)| match created.remove(new.id.as_str()) {
            Some(change) => Ok(change),
            None => existing_create(conn, new),
        })
        .collect())
}

/// Inserts the customers whose ids are free, with a link and a `create` task at each
/// provider, in one statement; answers the changes by customer id.
fn insert_with_tasks(
    conn: &mut PgConnection,
    items: &[&(NewCustomer, Origin)],
    providers: &[Provider],
) -> Result<HashMap<String, Change>, DbError> {
    use diesel::sql_types::{Array, Nullable, Text, Uuid};
    let column = |f: fn(&NewCustomer) -> &str| -> Vec<&str> {
        items.iter().map(|(new, _)| f(new)).collect()
    };
    let (ids, names, emails) = (
        column(|n| n.id.as_str()),
        column(|n| n.name.as_str()),
        column(|n| n.email.as_str()),
    );
    if providers.is_empty() {
        let rows = customers::insert_many(conn, &ids, &names, &emails)?;
        return Ok(rows
            .into_iter()
            .map(|customer| (customer.id.clone(), new_change(customer)))
            .collect());
    }
    // Tasks in request order (their `seq` follows it), then by provider.
    let pairs: Vec<(&(NewCustomer, Origin), Provider)> = items
        .iter()
        .flat_map(|item| providers.iter().map(move |p| (*item, *p)))
        .collect();
    let task_ids: Vec<crate::domain::TaskId> = pairs
        .iter()
        .map(|_| crate::domain::TaskId::generate())
        .collect();
    let tasks: Vec<TaskRow> = crate::db::statement::statement(
        "WITH c AS (INSERT INTO customers (id, name, email) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
             ON CONFLICT DO NOTHING RETURNING id, version), \
         l AS (INSERT INTO provider_links (customer_id, provider) \
             SELECT c.id, p.provider FROM c CROSS JOIN unnest($4::text[]) AS p(provider)) \
         INSERT INTO sync_tasks (id, provider, customer_id, operation, version, \
             idempotency_key, request_id) \
         SELECT t.i, t.p, t.c, 'create', c.version, t.k, t.r \
         FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[]) \
           WITH ORDINALITY AS t(i, p, c, k, r, n) \
         JOIN c ON c.id = t.c ORDER BY t.n RETURNING *",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Text>, _>(&names)
    .bind::<Array<Text>, _>(&emails)
    .bind::<Array<Text>, _>(providers.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    .bind::<Array<Uuid>, _>(task_ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(pairs.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        pairs
            .iter()
            .map(|((new, _), _)| new.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        task_ids
            .iter()
            .map(|id| queue::key_for(*id))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        pairs
            .iter()
            .map(|((_, origin), _)| origin.request_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .load(conn)?;
    let requested: HashMap<&str, &NewCustomer> = items
        .iter()
        .map(|(new, _)| (new.id.as_str(), new))
        .collect();
    let mut changes: HashMap<String, Change> = HashMap::new();
    for task in tasks {
        let change = changes.entry(task.customer_id.clone()).or_insert_with(|| {
            let new = requested[task.customer_id.as_str()];
            // The rows this statement inserted, as PostgreSQL wrote them: every column
            // is given above or takes its default, and now() is the same for all.
            let customer = CustomerRow {
                id: task.customer_id.clone(),
                name: new.name.as_str().to_owned(),
                email: new.email.as_str().to_owned(),
                version: task.version,
                created_at: task.created_at,
                updated_at: task.created_at,
                deleted_at: None,
            };
            new_change(customer)
        });
        change.links.push(LinkRow {
            customer_id: task.customer_id.clone(),
            provider: task.provider.clone(),
            external_id: None,
            synced_version: 0,
            remote_event_created: None,
            remote_event_id: None,
            remote_name: None,
            remote_email: None,
            created_at: task.created_at,
            updated_at: task.created_at,
        });
        change.tasks.push(task);
    }
    Ok(changes)
}

/// A create's change before its links and tasks are added.
fn new_change(customer: CustomerRow) -> Change {
    Change {
        customer,
        links: Vec::new(),
        tasks: Vec::new(),
        changed: true,
    }
}

/// Changes name and/or email; nothing to change is a no-op.
pub fn update(
    conn: &mut PgConnection,
    id: &CustomerId,
    name: Option<&CustomerName>,
    email: Option<&Email>,
    providers: &[Provider],
    origin: &Origin,
) -> Result<Change, CatalogError> {
    conn.transaction(|conn| {
        let existing = customers::find_for_update(conn, id)?
            .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
        if existing.deleted_at.is_some() {
            return Err(CatalogError::Conflict {
                code: "customer_deleted",
                message: format!("customer '{id}' is deleted and cannot be changed"),
            });
        }
        let new_name = name.map_or(existing.name.as_str(), CustomerName::as_str);
        let new_email = email.map_or(existing.email.as_str(), Email::as_str);
        if new_name == existing.name && new_email == existing.email {
            return finish(conn, existing, Vec::new(), false);
        }
        let customer = customers::update_fields(conn, id, new_name, new_email)?;
        let tasks = queue_tasks(conn, &customer, Operation::Update, providers, origin)?;
        finish(conn, customer, tasks, true)
    })
}

/// Makes the customer a tombstone; deleting a tombstone again is a no-op.
pub fn delete(
    conn: &mut PgConnection,
    id: &CustomerId,
    providers: &[Provider],
    origin: &Origin,
) -> Result<Change, CatalogError> {
    conn.transaction(|conn| {
        let existing = customers::find_for_update(conn, id)?
            .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
        if existing.deleted_at.is_some() {
            return finish(conn, existing, Vec::new(), false);
        }
        let customer = customers::tombstone(conn, id)?;
        let tasks = queue_tasks(conn, &customer, Operation::Delete, providers, origin)?;
        finish(conn, customer, tasks, true)
    })
}

/// A customer with its provider links and the providers where a task is dead.
#[derive(Debug)]
pub struct CustomerView {
    pub customer: CustomerRow,
    pub links: Vec<LinkRow>,
    /// Providers with a `dead` task for this customer (needs a manual retry).
    pub dead_providers: Vec<String>,
}

/// The customer with its links.
pub fn get(conn: &mut PgConnection, id: &CustomerId) -> Result<CustomerView, CatalogError> {
    let customer =
        customers::find(conn, id)?.ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
    Ok(views(conn, vec![customer])?.remove(0))
}

/// A page of customers with their links.
pub fn list(
    conn: &mut PgConnection,
    filter: &CustomerFilter,
) -> Result<Vec<CustomerView>, CatalogError> {
    let page = customers::list(conn, filter)?;
    Ok(views(conn, page)?)
}

fn views(conn: &mut PgConnection, page: Vec<CustomerRow>) -> QueryResult<Vec<CustomerView>> {
    let ids: Vec<String> = page.iter().map(|c| c.id.clone()).collect();
    let links = links::for_customers(conn, &ids)?;
    let dead = task_rows::dead_pairs(conn, &ids)?;
    Ok(page
        .into_iter()
        .map(|customer| CustomerView {
            links: links
                .iter()
                .filter(|l| l.customer_id == customer.id)
                .cloned()
                .collect(),
            dead_providers: dead
                .iter()
                .filter(|(c, _)| *c == customer.id)
                .map(|(_, p)| p.clone())
                .collect(),
            customer,
        })
        .collect())
}

fn queue_tasks(
    conn: &mut PgConnection,
    customer: &CustomerRow,
    operation: Operation,
    providers: &[Provider],
    origin: &Origin,
) -> QueryResult<Vec<TaskRow>> {
    let id = CustomerId::parse(&customer.id).expect("stored ids are valid");
    providers
        .iter()
        .map(|&provider| {
            links::ensure(conn, &id, provider)?;
            queue::enqueue(
                conn,
                provider,
                &id,
                operation,
                customer.version,
                origin.request_id.as_deref(),
            )
        })
        .collect()
}

fn finish(
    conn: &mut PgConnection,
    customer: CustomerRow,
    tasks: Vec<TaskRow>,
    changed: bool,
) -> Result<Change, CatalogError> {
    let links = links::for_customers(conn, std::slice::from_ref(&customer.id))?;
    Ok(Change {
        customer,
        links,
        tasks,
        changed,
    })
}
