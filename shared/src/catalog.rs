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

/// Creates many customers in one transaction with three statements (group commit):
/// the same answers as [`create`] for each, in order.
pub fn create_batch(
    conn: &mut PgConnection,
    batch: &[(NewCustomer, Origin)],
    providers: &[Provider],
) -> Result<Vec<Result<Change, CatalogError>>, DbError> {
    conn.transaction(|conn| {
        let column = |f: fn(&NewCustomer) -> &str| -> Vec<&str> {
            batch.iter().map(|(new, _)| f(new)).collect()
        };
        let inserted = customers::insert_many(
            conn,
            &column(|n| n.id.as_str()),
            &column(|n| n.name.as_str()),
            &column(|n| n.email.as_str()),
        )?;
        let mut fresh: HashMap<String, CustomerRow> = inserted
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        // Which item created each row (the first with that id), in request order.
        let created: Vec<Option<CustomerRow>> = batch
            .iter()
            .map(|(new, _)| fresh.remove(new.id.as_str()))
            .collect();
        let new_tasks: Vec<queue::NewTask<'_>> = batch
            .iter()
            .zip(&created)
            .filter_map(|((_, origin), row)| row.as_ref().map(|row| (origin, row)))
            .flat_map(|(origin, row)| {
                providers.iter().map(move |&provider| queue::NewTask {
                    provider,
                    customer_id: &row.id,
                    operation: Operation::Create,
                    version: row.version,
                    request_id: origin.request_id.as_deref(),
                })
            })
            .collect();
        // A new customer has no links yet, so the inserted rows are all of them.
        let mut links: HashMap<String, Vec<LinkRow>> = HashMap::new();
        let mut tasks: HashMap<String, Vec<TaskRow>> = HashMap::new();
        if !new_tasks.is_empty() {
            let customer_ids: Vec<&str> = new_tasks.iter().map(|t| t.customer_id).collect();
            let link_providers: Vec<&str> = new_tasks.iter().map(|t| t.provider.as_str()).collect();
            for link in links::insert_many(conn, &customer_ids, &link_providers)? {
                links
                    .entry(link.customer_id.clone())
                    .or_default()
                    .push(link);
            }
            for task in queue::enqueue_many(conn, &new_tasks)? {
                tasks
                    .entry(task.customer_id.clone())
                    .or_default()
                    .push(task);
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        for ((new, _), row) in batch.iter().zip(created) {
            let answer = match row {
                Some(customer) => Ok(Change {
                    links: links.remove(&customer.id).unwrap_or_default(),
                    tasks: tasks.remove(&customer.id).unwrap_or_default(),
                    customer,
                    changed: true,
                }),
                None => match existing_create(conn, new) {
                    Err(CatalogError::Db(e)) => return Err(e),
                    other => other,
                },
            };
            answers.push(answer);
        }
        Ok(answers)
    })
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
