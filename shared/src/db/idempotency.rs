//! The `api_idempotency` table: the first response to each `Idempotency-Key` our API was
//! given, per API token, kept for [`KEPT_FOR`] (README "Retrying a request safely").
//! Every write to the table is here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Array, Bytea, Double, Integer, Nullable, SmallInt, Text};

use super::statement::statement;

/// How long a first response is kept and replayed: Stripe's 24 hours.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// A request under a key: whose (the token's hash), which key, and what (the hash of the
/// method, path, query and body).
#[derive(Debug, Clone)]
pub struct Keyed {
    pub token_hash: Vec<u8>,
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// A stored first response.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Stored {
    #[diesel(sql_type = SmallInt)]
    pub status: i16,
    #[diesel(sql_type = Nullable<Text>)]
    pub content_type: Option<String>,
    #[diesel(sql_type = Bytea)]
    pub body: Vec<u8>,
}

/// What a request under a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The key is ours: run the request, then [`finish_many`] or [`abandon_many`] it.
    Run,
    /// The first request under the key was answered: replay its response.
    Replay(Stored),
    /// The key was first used for another request (method, path or body).
    OtherRequest,
    /// The first request under the key is still running.
    Running,
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = Bytea)]
    token_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    key: String,
}

#[derive(QueryableByName)]
struct Existing {
    #[diesel(sql_type = Bytea)]
    token_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Bytea)]
    request_hash: Vec<u8>,
    #[diesel(sql_type = Nullable<SmallInt>)]
    status: Option<i16>,
    #[diesel(sql_type = Nullable<Text>)]
    content_type: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    body: Option<Vec<u8>>,
}

/// For each request, in order: takes its key when it is new, older than [`KEPT_FOR`], or
/// left running past `running_for` by the same request (a process that died
/// mid-request); otherwise says what the first request under it did. Three statements
/// whatever the number; a key given twice is taken by its first request only.
pub fn begin_many(
    conn: &mut PgConnection,
    requests: &[&Keyed],
    running_for: Duration,
) -> QueryResult<Vec<Begun>> {
    let mut seen = HashSet::new();
    let first: Vec<&Keyed> = requests
        .iter()
        .copied()
        .filter(|k| seen.insert((&k.token_hash, &k.key)))
        .collect();
    let taken: HashSet<(Vec<u8>, String)> = statement(
        "INSERT INTO api_idempotency (token_hash, key, request_hash, running_until) \
         SELECT t.token_hash, t.key, t.request_hash, now() + make_interval(secs => $1) \
           FROM unnest($2::bytea[], $3::text[], $4::bytea[]) AS t(token_hash, key, request_hash) \
         ON CONFLICT (token_hash, key) DO UPDATE SET request_hash = excluded.request_hash, \
           status = NULL, content_type = NULL, body = NULL, \
           running_until = excluded.running_until, created_at = now() \
         WHERE api_idempotency.created_at < now() - make_interval(secs => $5) \
           OR (api_idempotency.status IS NULL AND api_idempotency.running_until < now() \
               AND api_idempotency.request_hash = excluded.request_hash) \
         RETURNING token_hash, key",
    )
    .bind::<Double, _>(running_for.as_secs_f64())
    .bind::<Array<Bytea>, _>(first.iter().map(|k| &k.token_hash).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(first.iter().map(|k| &k.key).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(first.iter().map(|k| &k.request_hash).collect::<Vec<_>>())
    .bind::<Double, _>(KEPT_FOR.as_secs_f64())
    .load::<Taken>(conn)?
    .into_iter()
    .map(|t| (t.token_hash, t.key))
    .collect();
    let others: Vec<&&Keyed> = first
        .iter()
        .filter(|k| !taken.contains(&(k.token_hash.clone(), k.key.clone())))
        .collect();
    let existing: HashMap<(Vec<u8>, String), Existing> = if others.is_empty() {
        HashMap::new()
    } else {
        statement(
            "SELECT a.token_hash, a.key, a.request_hash, a.status, a.content_type, a.body \
             FROM api_idempotency a \
             JOIN unnest($1::bytea[], $2::text[]) AS t(token_hash, key) \
               ON a.token_hash = t.token_hash AND a.key = t.key",
        )
        .bind::<Array<Bytea>, _>(others.iter().map(|k| &k.token_hash).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(others.iter().map(|k| &k.key).collect::<Vec<_>>())
        .load::<Existing>(conn)?
        .into_iter()
        .map(|e| ((e.token_hash.clone(), e.key.clone()), e))
        .collect()
    };
    let mut answered = HashSet::new();
    Ok(requests
        .iter()
        .map(|k| {
            let id = (k.token_hash.clone(), k.key.clone());
            if taken.contains(&id) {
                if answered.insert(id) {
                    return Begun::Run;
                }
                // Taken by an earlier request of this batch.
                let first = first
                    .iter()
                    .find(|f| f.token_hash == k.token_hash && f.key == k.key);
                return if first.is_some_and(|f| f.request_hash != k.request_hash) {
                    Begun::OtherRequest
                } else {
                    Begun::Running
                };
            }
            match existing.get(&id) {
                Some(e) if e.request_hash != k.request_hash => Begun::OtherRequest,
                Some(Existing {
                    status: Some(status),
                    content_type,
                    body,
                    ..
                }) => Begun::Replay(Stored {
                    status: *status,
                    content_type: content_type.clone(),
                    body: body.clone().unwrap_or_default(),
                }),
                // Still running, or gone (pruned or abandoned) since: retry later.
                _ => Begun::Running,
            }
        })
        .collect())
}

/// Stores the responses of requests that [`begin_many`] let run; one statement.
pub fn finish_many(conn: &mut PgConnection, answered: &[(&Keyed, &Stored)]) -> QueryResult<usize> {
    statement(
        "UPDATE api_idempotency a SET status = t.status, content_type = t.content_type, \
           body = t.body, running_until = NULL \
         FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::int2[], $5::text[], $6::bytea[]) \
           AS t(token_hash, key, request_hash, status, content_type, body) \
         WHERE a.token_hash = t.token_hash AND a.key = t.key \
           AND a.request_hash = t.request_hash AND a.status IS NULL",
    )
    .bind::<Array<Bytea>, _>(
        answered
            .iter()
            .map(|(k, _)| &k.token_hash)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(answered.iter().map(|(k, _)| &k.key).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(
        answered
            .iter()
            .map(|(k, _)| &k.request_hash)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<SmallInt>, _>(answered.iter().map(|(_, s)| s.status).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        answered
            .iter()
            .map(|(_, s)| s.content_type.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Bytea>, _>(answered.iter().map(|(_, s)| &s.body).collect::<Vec<_>>())
    .execute(conn)
}

/// Forgets the keys of requests that [`begin_many`] let run and whose answers are not
/// kept (a validation failure or a 5xx): a retry under the key runs again. One statement.
pub fn abandon_many(conn: &mut PgConnection, requests: &[&Keyed]) -> QueryResult<usize> {
    statement(
        "DELETE FROM api_idempotency a \
         USING unnest($1::bytea[], $2::text[], $3::bytea[]) AS t(token_hash, key, request_hash) \
         WHERE a.token_hash = t.token_hash AND a.key = t.key \
           AND a.request_hash = t.request_hash AND a.status IS NULL",
    )
    .bind::<Array<Bytea>, _>(requests.iter().map(|k| &k.token_hash).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(requests.iter().map(|k| &k.key).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(requests.iter().map(|k| &k.request_hash).collect::<Vec<_>>())
    .execute(conn)
}

/// Removes up to `limit` keys older than [`KEPT_FOR`]; returns how many.
pub fn prune(conn: &mut PgConnection, limit: i32) -> QueryResult<usize> {
    statement(
        "DELETE FROM api_idempotency WHERE ctid IN (SELECT ctid FROM api_idempotency \
           WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind::<Double, _>(KEPT_FOR.as_secs_f64())
    .bind::<Integer, _>(limit)
    .execute(conn)
}

/// Makes every stored key look `age` old (tests of expiry).
pub fn age_all(conn: &mut PgConnection, age: Duration) -> QueryResult<usize> {
    statement(
        "UPDATE api_idempotency SET created_at = now() - make_interval(secs => $1), \
           running_until = CASE WHEN status IS NULL THEN now() - make_interval(secs => $2) END",
    )
    .bind::<Double, _>(age.as_secs_f64())
    .bind::<Double, _>(age.as_secs_f64())
    .execute(conn)
}
