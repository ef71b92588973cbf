//! The `api_idempotency` table: the first response to each `Idempotency-Key` our API was
//! given, per API token, kept for [`KEPT_FOR`] (README "Retrying a request safely").
//! Every write to the table is here.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Bytea, Double, Integer, Nullable, SmallInt, Text};

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
    /// The key is ours: run the request, then [`finish`] or [`abandon`] it.
    Run,
    /// The first request under the key was answered: replay its response.
    Replay(Stored),
    /// The key was first used for another request (method, path or body).
    OtherRequest,
    /// The first request under the key is still running.
    Running,
}

#[derive(QueryableByName)]
struct Existing {
    #[diesel(sql_type = Bool)]
    same_request: bool,
    #[diesel(sql_type = Nullable<SmallInt>)]
    status: Option<i16>,
    #[diesel(sql_type = Nullable<Text>)]
    content_type: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    body: Option<Vec<u8>>,
}

/// Takes the key for this request when it is new, older than [`KEPT_FOR`], or left
/// running past `running_for` by the same request (a process that died mid-request);
/// otherwise says what the first request under it did.
pub fn begin(conn: &mut PgConnection, keyed: &Keyed, running_for: Duration) -> QueryResult<Begun> {
    for _ in 0..2 {
        let taken = statement(
            "INSERT INTO api_idempotency (token_hash, key, request_hash, running_until) \
               VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (token_hash, key) DO UPDATE SET request_hash = excluded.request_hash, \
               status = NULL, content_type = NULL, body = NULL, \
               running_until = excluded.running_until, created_at = now() \
             WHERE api_idempotency.created_at < now() - make_interval(secs => $5) \
               OR (api_idempotency.status IS NULL AND api_idempotency.running_until < now() \
                   AND api_idempotency.request_hash = excluded.request_hash)",
        )
        .bind::<Bytea, _>(&keyed.token_hash)
        .bind::<Text, _>(&keyed.key)
        .bind::<Bytea, _>(&keyed.request_hash)
        .bind::<Double, _>(running_for.as_secs_f64())
        .bind::<Double, _>(KEPT_FOR.as_secs_f64())
        .execute(conn)?;
        if taken == 1 {
            return Ok(Begun::Run);
        }
        let existing: Option<Existing> = statement(
            "SELECT request_hash = $1 AS same_request, status, content_type, body \
             FROM api_idempotency WHERE token_hash = $2 AND key = $3",
        )
        .bind::<Bytea, _>(&keyed.request_hash)
        .bind::<Bytea, _>(&keyed.token_hash)
        .bind::<Text, _>(&keyed.key)
        .get_result(conn)
        .optional()?;
        // Gone between the two statements (pruned, or abandoned by its request): try again.
        let Some(existing) = existing else { continue };
        return Ok(match existing {
            Existing {
                same_request: false,
                ..
            } => Begun::OtherRequest,
            Existing {
                status: Some(status),
                content_type,
                body,
                ..
            } => Begun::Replay(Stored {
                status,
                content_type,
                body: body.unwrap_or_default(),
            }),
            Existing { status: None, .. } => Begun::Running,
        });
    }
    Ok(Begun::Running)
}

/// Stores the response of the request that [`begin`] let run.
pub fn finish(conn: &mut PgConnection, keyed: &Keyed, response: &Stored) -> QueryResult<bool> {
    statement(
        "UPDATE api_idempotency SET status = $1, content_type = $2, body = $3, \
           running_until = NULL \
         WHERE token_hash = $4 AND key = $5 AND request_hash = $6 AND status IS NULL",
    )
    .bind::<SmallInt, _>(response.status)
    .bind::<Nullable<Text>, _>(response.content_type.as_deref())
    .bind::<Bytea, _>(&response.body)
    .bind::<Bytea, _>(&keyed.token_hash)
    .bind::<Text, _>(&keyed.key)
    .bind::<Bytea, _>(&keyed.request_hash)
    .execute(conn)
    .map(|n| n == 1)
}

/// Forgets the key of a request that [`begin`] let run and whose answer is not kept (a
/// validation failure or a 5xx): a retry under the key runs again.
pub fn abandon(conn: &mut PgConnection, keyed: &Keyed) -> QueryResult<bool> {
    statement(
        "DELETE FROM api_idempotency \
         WHERE token_hash = $1 AND key = $2 AND request_hash = $3 AND status IS NULL",
    )
    .bind::<Bytea, _>(&keyed.token_hash)
    .bind::<Text, _>(&keyed.key)
    .bind::<Bytea, _>(&keyed.request_hash)
    .execute(conn)
    .map(|n| n == 1)
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
