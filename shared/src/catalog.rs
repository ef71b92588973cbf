//! Changes to the customer catalog. Every change (create, update, delete) is a
//! [`Command`] committed by [`commit`]: the customer (version + 1) and one task per
//! enabled provider, in one transaction, many changes per commit. A Stripe link made by
//! hand is [`link_stripe`].

use std::collections::HashMap;

use diesel::prelude::*;

use crate::db::customers::{self, CustomerFilter, CustomerRow, NewRow};
use crate::db::links::{self, LinkRow};
use crate::db::manual_links;
use crate::db::tasks::{self as task_rows, TaskRow};
use crate::db::DbError;
use crate::domain::{CustomerId, CustomerName, Email, Operation, Provider};
use crate::queue;

/// A change the API asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// A new customer; the same id with the same fields again is a no-op (a retry).
    Create(NewCustomer),
    /// New name and/or email; nothing to change is a no-op.
    Update {
        id: CustomerId,
        name: Option<CustomerName>,
        email: Option<Email>,
    },
    /// Makes the customer a tombstone; deleting a tombstone again is a no-op.
    Delete(CustomerId),
}

impl Command {
    /// The customer the command is about.
    pub fn customer_id(&self) -> &CustomerId {
        match self {
            Command::Create(new) => &new.id,
            Command::Update { id, .. } | Command::Delete(id) => id,
        }
    }
}

/// What a change did: the customer as it now stands and the tasks it queued.
#[derive(Debug)]
pub struct Change {
    /// The customer after the change.
    pub customer: CustomerRow,
    /// Its provider links.
    pub links: Vec<LinkRow>,
    /// The tasks queued by this change (empty when nothing changed).
    pub tasks: Vec<TaskRow>,
    /// Whether anything was written, rather than a no-op.
    pub changed: bool,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No customer has this id.
    #[error("no customer with id '{0}'")]
    NotFound(CustomerId),
    /// A create names an existing customer with other fields.
    #[error("customer '{0}' already exists with other fields; use PATCH to change it")]
    Exists(CustomerId),
    /// A create names a customer that existed and was deleted.
    #[error("customer '{0}' existed and was deleted; use another id")]
    ExistedAndDeleted(CustomerId),
    /// An update names a deleted customer.
    #[error("customer '{0}' is deleted and cannot be changed")]
    Deleted(CustomerId),
    /// A manual link names a Stripe customer linked to another local customer (`None`
    /// when the unique index found it, the other customer unread).
    #[error(
        "Stripe customer '{external_id}' is already linked to {}",
        .linked_to.as_ref().map_or("another customer".to_owned(), |c| format!("customer '{c}'"))
    )]
    LinkTaken {
        external_id: String,
        linked_to: Option<CustomerId>,
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

/// One answer per command of a batch, in order.
pub type Answers = Vec<Result<Change, CatalogError>>;

/// Commits a batch of commands (group commit): each gets the answer it would have had
/// alone, in the order given, so changes to one customer apply in arrival order.
///
/// A run of creates is one statement, which PostgreSQL commits on its own: one round trip
/// for the run instead of five (`BEGIN`, three INSERTs, `COMMIT`), which bounded the task
/// API (see `bench/NOTES.md`). A run of updates and deletes is one transaction. An `Err`
/// is a database failure that rolled back its run; the caller may retry the commands one
/// at a time so that one bad command does not fail the others.
pub fn commit(
    conn: &mut PgConnection,
    batch: &[(Command, Origin)],
    providers: &[Provider],
) -> Result<Answers, DbError> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut rest = batch;
    while let Some((first, _)) = rest.first() {
        let creating = matches!(first, Command::Create(_));
        let run = rest
            .iter()
            .position(|(c, _)| matches!(c, Command::Create(_)) != creating)
            .unwrap_or(rest.len());
        let (now, later) = rest.split_at(run);
        let written = if creating {
            create_run(conn, now, providers)
        } else {
            change_run(conn, now, providers)
        };
        match written {
            Ok(run_answers) => answers.extend(run_answers),
            // Each run commits on its own, so earlier runs stand whatever this one does:
            // a run that fails as a whole is retried one command at a time, and nothing
            // fails the batch once a run has committed.
            Err(DbError::Unexpected(e)) if now.len() > 1 => {
                tracing::warn!(error = %e, size = now.len(), "a run failed; committing its commands one by one");
                for (command, origin) in now {
                    answers.push(commit_one(conn, command.clone(), origin.clone(), providers));
                }
            }
            Err(e) if answers.is_empty() => return Err(e),
            Err(e) => answers.extend(now.iter().map(|_| Err(CatalogError::Db(e.replicate())))),
        }
        rest = later;
    }
    Ok(answers)
}

/// Commits one command alone.
///
/// (Also the fallback of a run that failed as a whole inside [`commit`].)
pub fn commit_one(
    conn: &mut PgConnection,
    command: Command,
    origin: Origin,
    providers: &[Provider],
) -> Result<Change, CatalogError> {
    commit(conn, &[(command, origin)], providers)?
        .pop()
        .expect("one answer per command")
}

/// Creates: the first item with an id creates it; an id that was taken, or repeated in
/// the run, is then answered as a retry or a conflict, each on its own.
fn create_run(
    conn: &mut PgConnection,
    run: &[(Command, Origin)],
    providers: &[Provider],
) -> Result<Answers, DbError> {
    let creates: Vec<(&NewCustomer, &Origin)> = run
        .iter()
        .filter_map(|(command, origin)| match command {
            Command::Create(new) => Some((new, origin)),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let first: Vec<(&NewCustomer, &Origin)> = creates
        .iter()
        .copied()
        .filter(|(new, _)| seen.insert(&new.id))
        .collect();
    let mut created = insert_with_tasks(conn, &first, providers)?;
    Ok(creates
        .iter()
        .map(|(new, _)| match created.remove(&new.id) {
            Some(change) => Ok(change),
            // The insert has committed: a failed lookup answers this item alone.
            None => existing_create(conn, new),
        })
        .collect())
}

/// The answer to a create whose id is taken: a no-op for the same fields, else a conflict.
fn existing_create(conn: &mut PgConnection, new: &NewCustomer) -> Result<Change, CatalogError> {
    let existing =
        customers::find(conn, &new.id)?.ok_or_else(|| CatalogError::NotFound(new.id.clone()))?;
    if existing.deleted_at.is_some() {
        return Err(CatalogError::ExistedAndDeleted(new.id.clone()));
    }
    if existing.name != new.name.as_str() || existing.email != new.email.as_str() {
        return Err(CatalogError::Exists(new.id.clone()));
    }
    finish(conn, existing, Vec::new(), false)
}

/// Inserts the customers whose ids are free, with their links and tasks; answers the
/// changes by customer id.
fn insert_with_tasks(
    conn: &mut PgConnection,
    items: &[(&NewCustomer, &Origin)],
    providers: &[Provider],
) -> Result<HashMap<CustomerId, Change>, DbError> {
    if providers.is_empty() {
        let ids: Vec<&CustomerId> = items.iter().map(|(new, _)| &new.id).collect();
        let names: Vec<&str> = items.iter().map(|(new, _)| new.name.as_str()).collect();
        let emails: Vec<&str> = items.iter().map(|(new, _)| new.email.as_str()).collect();
        let rows = customers::insert_many(conn, &ids, &names, &emails)?;
        return Ok(rows
            .into_iter()
            .map(|customer| (customer.id.clone(), new_change(customer)))
            .collect());
    }
    let rows: Vec<NewRow<'_>> = items
        .iter()
        .map(|(new, origin)| NewRow {
            id: &new.id,
            name: new.name.as_str(),
            email: new.email.as_str(),
            request_id: origin.request_id.as_deref(),
        })
        .collect();
    let tasks = customers::insert_with_tasks(conn, &rows, providers)?;
    let requested: HashMap<&CustomerId, &NewCustomer> =
        items.iter().map(|(new, _)| (&new.id, *new)).collect();
    let mut changes: HashMap<CustomerId, Change> = HashMap::new();
    for task in tasks {
        let change = changes.entry(task.customer_id.clone()).or_insert_with(|| {
            let new = requested[&task.customer_id];
            // The rows this statement inserted, as PostgreSQL wrote them: every column
            // is given above or takes its default, and now() is the same for all.
            new_change(CustomerRow {
                id: task.customer_id.clone(),
                name: new.name.as_str().to_owned(),
                email: new.email.as_str().to_owned(),
                version: task.version,
                created_at: task.created_at,
                updated_at: task.created_at,
                deleted_at: None,
            })
        });
        change.links.push(LinkRow {
            customer_id: task.customer_id.clone(),
            provider: task.provider,
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

/// Updates and deletes in one transaction; a database failure rolls all of them back.
fn change_run(
    conn: &mut PgConnection,
    run: &[(Command, Origin)],
    providers: &[Provider],
) -> Result<Answers, DbError> {
    conn.transaction(|conn| {
        // The committers' connections keep PostgreSQL's default plan cache mode for the
        // bulk inserts; these probes by key are planned for the tables as they are now.
        diesel::sql_query("SET LOCAL plan_cache_mode = force_custom_plan").execute(conn)?;
        run.iter()
            .map(
                |(command, origin)| match change(conn, command, origin, providers) {
                    Err(CatalogError::Db(e)) => Err(e),
                    answer => Ok(answer),
                },
            )
            .collect()
    })
}

/// One update or delete, inside [`change_run`]'s transaction.
fn change(
    conn: &mut PgConnection,
    command: &Command,
    origin: &Origin,
    providers: &[Provider],
) -> Result<Change, CatalogError> {
    let id = command.customer_id();
    let existing =
        customers::find_for_update(conn, id)?.ok_or_else(|| CatalogError::NotFound(id.clone()))?;
    let (customer, operation) = match command {
        Command::Create(_) => unreachable!("creates are committed by create_run"),
        Command::Update { name, email, .. } => {
            if existing.deleted_at.is_some() {
                return Err(CatalogError::Deleted(id.clone()));
            }
            let new_name = name
                .as_ref()
                .map_or(existing.name.as_str(), CustomerName::as_str);
            let new_email = email
                .as_ref()
                .map_or(existing.email.as_str(), Email::as_str);
            if new_name == existing.name && new_email == existing.email {
                return finish(conn, existing, Vec::new(), false);
            }
            let customer = customers::update_fields(conn, id, new_name, new_email)?;
            (customer, Operation::Update)
        }
        Command::Delete(_) => {
            if existing.deleted_at.is_some() {
                return finish(conn, existing, Vec::new(), false);
            }
            (customers::tombstone(conn, id)?, Operation::Delete)
        }
    };
    let tasks = queue::enqueue_for(
        conn,
        &[&customer],
        operation,
        providers,
        origin.request_id.as_deref(),
    )?;
    finish(conn, customer, tasks, true)
}

/// A customer with its provider links and the providers where a task is dead.
#[derive(Debug)]
pub struct CustomerView {
    pub customer: CustomerRow,
    pub links: Vec<LinkRow>,
    /// Providers with a `dead` task for this customer (needs a manual retry).
    pub dead_providers: Vec<Provider>,
}

/// The customer with its links.
pub fn get(conn: &mut PgConnection, id: &CustomerId) -> Result<CustomerView, CatalogError> {
    let customer = customers::find(conn, id)?.ok_or_else(|| CatalogError::NotFound(id.clone()))?;
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
    let ids: Vec<&CustomerId> = page.iter().map(|c| &c.id).collect();
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
                .map(|(_, p)| *p)
                .collect(),
            customer,
        })
        .collect())
}

fn finish(
    conn: &mut PgConnection,
    customer: CustomerRow,
    tasks: Vec<TaskRow>,
    changed: bool,
) -> Result<Change, CatalogError> {
    let links = links::for_customers(conn, &[&customer.id])?;
    Ok(Change {
        customer,
        links,
        tasks,
        changed,
    })
}

/// What a manual Stripe link did.
#[derive(Debug)]
pub struct Linked {
    /// The customer as [`get`] shows it, after the link.
    pub view: CustomerView,
    /// The Stripe `update` task queued (empty when the link already named that customer).
    pub tasks: Vec<TaskRow>,
    /// How many dead Stripe tasks of the customer the link settled.
    pub superseded: usize,
    /// Whether anything was written, rather than a no-op.
    pub changed: bool,
}

/// Reads, without writing, whether linking customer `id` to Stripe customer `external_id`
/// is refused, already done (the customer's view), or to do (`None`): so the caller can
/// answer before it asks Stripe about the id.
pub fn plan_stripe_link(
    conn: &mut PgConnection,
    id: &CustomerId,
    external_id: &str,
) -> Result<Option<CustomerView>, CatalogError> {
    let customer = customers::find(conn, id)?.ok_or_else(|| CatalogError::NotFound(id.clone()))?;
    if already_linked(conn, &customer, external_id)? {
        return Ok(Some(views(conn, vec![customer])?.remove(0)));
    }
    Ok(None)
}

/// Links customer `id` to Stripe customer `external_id` by hand, in one transaction: the
/// customer locked, its Stripe link replaced and marked never synced, its dead Stripe
/// tasks settled (their error prefixed with [`manual_links::SUPERSEDED`]), and one Stripe
/// `update` task queued at its version, which pushes its state and our metadata onto that
/// Stripe customer. A link that already names that customer is a no-op.
pub fn link_stripe(
    conn: &mut PgConnection,
    id: &CustomerId,
    external_id: &str,
    origin: &Origin,
) -> Result<Linked, CatalogError> {
    conn.transaction(|conn| {
        let customer = customers::find_for_update(conn, id)?
            .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
        if already_linked(conn, &customer, external_id)? {
            return Ok(Linked {
                view: views(conn, vec![customer])?.remove(0),
                tasks: Vec::new(),
                superseded: 0,
                changed: false,
            });
        }
        match manual_links::set_stripe_link(conn, id, external_id) {
            // Linked elsewhere since the check above, by a transaction that committed.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(CatalogError::LinkTaken {
                    external_id: external_id.to_owned(),
                    linked_to: None,
                })
            }
            linked => linked?,
        }
        let superseded = manual_links::supersede_dead_stripe_tasks(conn, id)?;
        let tasks = queue::enqueue_for(
            conn,
            &[&customer],
            Operation::Update,
            &[Provider::Stripe],
            origin.request_id.as_deref(),
        )?;
        Ok(Linked {
            view: views(conn, vec![customer])?.remove(0),
            tasks,
            superseded,
            changed: true,
        })
    })
}

/// Whether the customer's Stripe link already names `external_id`; refuses a tombstone
/// and a Stripe customer linked to another local customer.
fn already_linked(
    conn: &mut PgConnection,
    customer: &CustomerRow,
    external_id: &str,
) -> Result<bool, CatalogError> {
    if customer.deleted_at.is_some() {
        return Err(CatalogError::Deleted(customer.id.clone()));
    }
    match links::customer_of_stripe_id(conn, external_id)? {
        Some(owner) if owner == customer.id => Ok(true),
        Some(owner) => Err(CatalogError::LinkTaken {
            external_id: external_id.to_owned(),
            linked_to: Some(owner),
        }),
        None => Ok(false),
    }
}
