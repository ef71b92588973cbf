//! What a job's walk saw of the provider (`sync_job_objects`), and the reads and writes
//! its decisions need: staging a page, the staged rows in order, candidates by email,
//! links made by a job, and local customers left without a Stripe customer.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid};

use super::customers::CustomerRow;
use super::statement::statement;
use crate::domain::CustomerId;
use crate::stripe::Customer;

/// A provider customer as a job's walk saw it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Staged {
    #[diesel(sql_type = Text)]
    pub external_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub email_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub local_id: Option<String>,
}

impl Staged {
    /// The name and email as the catalog stores them (absent is empty).
    pub fn fields(&self) -> (String, String) {
        (
            self.name.clone().unwrap_or_default(),
            self.email.clone().unwrap_or_default(),
        )
    }
}

/// The matching key of an email: Stripe keeps addresses as given, people do not.
pub fn email_key(email: &str) -> Option<String> {
    let key = email.trim().to_lowercase();
    (!key.is_empty()).then_some(key)
}

/// The live customers of a page the job has not staged yet (a job resumed mid-page
/// staged some before), as they would be staged.
pub fn unstaged(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    page: &[Customer],
) -> QueryResult<Vec<Staged>> {
    let live: Vec<&Customer> = page.iter().filter(|c| !c.deleted).collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        external_id: String,
    }
    let seen: std::collections::HashSet<String> = statement(
        "SELECT external_id FROM sync_job_objects WHERE job_id = $1 AND external_id = ANY($2)",
    )
    .bind::<Uuid, _>(job)
    .bind::<Array<Text>, _>(live.iter().map(|c| c.id.as_str()).collect::<Vec<_>>())
    .load::<Id>(conn)?
    .into_iter()
    .map(|row| row.external_id)
    .collect();
    Ok(live
        .into_iter()
        .filter(|c| !seen.contains(&c.id))
        .map(|c| Staged {
            external_id: c.id.clone(),
            name: c.name.clone(),
            email: c.email.clone(),
            email_key: c.email.as_deref().and_then(email_key),
            local_id: c.local_id().map(str::to_owned),
        })
        .collect())
}

/// Stages customers for the job, each marked decided or not (those not decided wait for
/// the decisions after the walk).
pub fn stage(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    rows: &[Staged],
    decided: &std::collections::HashSet<String>,
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    statement(
        "INSERT INTO sync_job_objects \
           (job_id, external_id, name, email, email_key, local_id, decided) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
           $7::boolean[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Uuid, _>(job)
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.external_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.name.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.email.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.email_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.local_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<diesel::sql_types::Bool>, _>(
        rows.iter()
            .map(|r| decided.contains(&r.external_id))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
}

/// Gathers the statistics of what the walks staged: the decisions then read the staged
/// rows by index, batch after batch, instead of plans chosen for an empty table (which
/// read every staged row per batch until autovacuum next analyzes it).
pub fn analyze_staged(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("ANALYZE sync_job_objects")
        .execute(conn)
        .map(drop)
}

/// Which staged customers a batch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedRows {
    All,
    /// Those the walk left undecided (through their partial index).
    Undecided,
}

/// The job's staged customers after `after`, in id order.
pub fn staged_after(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    which: StagedRows,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<Staged>> {
    let sql = match which {
        StagedRows::All => {
            "SELECT external_id, name, email, email_key, local_id FROM sync_job_objects \
             WHERE job_id = $1 AND external_id > COALESCE($2, '') \
             ORDER BY external_id LIMIT $3"
        }
        StagedRows::Undecided => {
            "SELECT external_id, name, email, email_key, local_id FROM sync_job_objects \
             WHERE job_id = $1 AND external_id > COALESCE($2, '') AND NOT decided \
             ORDER BY external_id LIMIT $3"
        }
    };
    statement(sql)
        .bind::<Uuid, _>(job)
        .bind::<Nullable<Text>, _>(after)
        .bind::<BigInt, _>(limit)
        .load(conn)
}

/// How many staged customers without our metadata share each of these email keys.
pub fn unclaimed_per_email(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    keys: &[&str],
) -> QueryResult<Vec<(String, i64)>> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = Text)]
        email_key: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // One index probe per key, whatever the statistics say (see `links::LINKED_STRIPE_IDS`).
    let counts: Vec<Count> = statement(
        "SELECT k.key AS email_key, n.n FROM unnest($1::text[]) AS k(key), LATERAL \
           (SELECT count(*) AS n FROM sync_job_objects \
            WHERE job_id = $2 AND email_key = k.key AND local_id IS NULL) AS n",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<Uuid, _>(job)
    .load(conn)?;
    Ok(counts.into_iter().map(|c| (c.email_key, c.n)).collect())
}

/// The live local customers with no Stripe customer whose email has one of these keys,
/// locked so a concurrent create cannot link them meanwhile.
pub fn unlinked_with_emails(
    conn: &mut PgConnection,
    keys: &[&str],
) -> QueryResult<Vec<CustomerRow>> {
    statement(
        "SELECT c.* FROM (SELECT DISTINCT key FROM unnest($1::text[]) AS k(key)) AS k, LATERAL \
           (SELECT * FROM customers WHERE lower(email) = k.key AND deleted_at IS NULL \
            FOR UPDATE) AS c \
         WHERE NOT EXISTS (SELECT 1 FROM provider_links l WHERE l.customer_id = c.id \
                           AND l.provider = 'stripe' AND l.external_id IS NOT NULL) \
         ORDER BY c.id",
    )
    .bind::<Array<Text>, _>(keys)
    .load(conn)
}

/// Links a local customer to a Stripe customer: in sync at `synced_version` with the
/// remote name and email recorded, or unsynced (0) so that a task pushes the local state
/// and our metadata. `false` when the customer already has another Stripe customer.
pub fn link(
    conn: &mut PgConnection,
    customer: &CustomerId,
    stripe_id: &str,
    synced_version: i64,
    remote: (&str, &str),
) -> QueryResult<bool> {
    let linked = statement(
        "INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
           remote_name, remote_email) VALUES ($1, 'stripe', $2, $3, $4, $5) \
         ON CONFLICT (customer_id, provider) DO UPDATE SET external_id = excluded.external_id, \
           synced_version = excluded.synced_version, remote_name = excluded.remote_name, \
           remote_email = excluded.remote_email, updated_at = now() \
         WHERE provider_links.external_id IS NULL OR provider_links.external_id = excluded.external_id",
    )
    .bind::<Text, _>(customer.as_str())
    .bind::<Text, _>(stripe_id)
    .bind::<BigInt, _>(synced_version)
    .bind::<Text, _>(remote.0)
    .bind::<Text, _>(remote.1)
    .execute(conn)?;
    Ok(linked == 1)
}

/// The Stripe links of customers just imported from Stripe, in sync at their version
/// with the remote name and email recorded: one statement for the batch.
pub fn link_imported(
    conn: &mut PgConnection,
    customers: &[&CustomerRow],
    stripe_ids: &[&str],
) -> QueryResult<usize> {
    statement(
        "INSERT INTO provider_links (customer_id, provider, external_id, synced_version, \
           remote_name, remote_email) \
         SELECT c, 'stripe', s, v, n, e FROM unnest($1::text[], $2::text[], $3::bigint[], \
           $4::text[], $5::text[]) AS t(c, s, v, n, e) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(customers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(stripe_ids)
    .bind::<Array<BigInt>, _>(customers.iter().map(|c| c.version).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        customers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        customers
            .iter()
            .map(|c| c.email.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
}

/// A linked local customer, its Stripe link, and whether a Stripe task is open for it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Linked {
    #[diesel(embed)]
    pub customer: CustomerRow,
    #[diesel(sql_type = Text)]
    pub external_id: String,
    #[diesel(sql_type = BigInt)]
    pub synced_version: i64,
    #[diesel(sql_type = Timestamptz)]
    pub linked_at: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub task_open: bool,
}

/// The local customers linked to these Stripe ids, locked.
pub fn linked_customers(conn: &mut PgConnection, stripe_ids: &[&str]) -> QueryResult<Vec<Linked>> {
    if stripe_ids.is_empty() {
        return Ok(Vec::new());
    }
    statement(
        "SELECT c.*, l.external_id, l.synced_version, l.updated_at AS linked_at, \
           EXISTS (SELECT 1 FROM sync_tasks t WHERE t.customer_id = c.id AND t.provider = 'stripe' \
                   AND t.status <> 'succeeded' AND t.status <> 'dead') AS task_open \
         FROM unnest($1::text[]) AS s(id), LATERAL \
           (SELECT * FROM provider_links WHERE provider = 'stripe' AND external_id = s.id \
            LIMIT 1) AS l, LATERAL \
           (SELECT * FROM customers WHERE id = l.customer_id LIMIT 1 FOR UPDATE) AS c \
         ORDER BY c.id",
    )
    .bind::<Array<Text>, _>(stripe_ids)
    .load(conn)
}

/// Linked local customers after `after` (by id) whose Stripe customer the job's walk did
/// not see, linked before the walk began (a link made since may name a customer created
/// after the walk passed).
pub fn linked_but_unseen(
    conn: &mut PgConnection,
    job: uuid::Uuid,
    walk_started_at: DateTime<Utc>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<Linked>> {
    statement(
        "SELECT c.*, l.external_id, l.synced_version, l.updated_at AS linked_at, false AS task_open \
         FROM provider_links l JOIN customers c ON c.id = l.customer_id \
         WHERE l.provider = 'stripe' AND l.external_id IS NOT NULL AND c.id > COALESCE($1, '') \
           AND c.deleted_at IS NULL AND l.updated_at < $2 \
           AND NOT EXISTS (SELECT 1 FROM sync_job_objects o WHERE o.job_id = $3 \
                           AND o.external_id = l.external_id) \
         ORDER BY c.id LIMIT $4",
    )
    .bind::<Nullable<Text>, _>(after)
    .bind::<Timestamptz, _>(walk_started_at)
    .bind::<Uuid, _>(job)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

/// What is under way for a local customer with no Stripe customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underway {
    /// No Stripe task.
    Nothing,
    /// A Stripe task is pending or in flight.
    Task,
    /// A Stripe task is dead: it waits for the operator (a manual link, or a retry).
    Dead,
}

/// Live local customers after `after` (by id) with no Stripe customer, and what is under
/// way for each.
pub fn unlinked_after(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<(CustomerRow, Underway)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(embed)]
        customer: CustomerRow,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        task_open: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        task_dead: bool,
    }
    let rows: Vec<Row> = statement(
        "SELECT c.*, \
           EXISTS (SELECT 1 FROM sync_tasks t WHERE t.customer_id = c.id \
             AND t.provider = 'stripe' AND t.status <> 'succeeded' AND t.status <> 'dead') \
             AS task_open, \
           EXISTS (SELECT 1 FROM sync_tasks t WHERE t.customer_id = c.id \
             AND t.provider = 'stripe' AND t.status = 'dead') AS task_dead \
         FROM customers c \
         WHERE c.id > COALESCE($1, '') AND c.deleted_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM provider_links l WHERE l.customer_id = c.id \
                           AND l.provider = 'stripe' AND l.external_id IS NOT NULL) \
         ORDER BY c.id LIMIT $2",
    )
    .bind::<Nullable<Text>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let underway = match (r.task_open, r.task_dead) {
                (true, _) => Underway::Task,
                (false, true) => Underway::Dead,
                (false, false) => Underway::Nothing,
            };
            (r.customer, underway)
        })
        .collect())
}
