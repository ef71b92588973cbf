//! The `provider_budgets` table: each provider account's shared rate budget, as the time
//! of its next free slot (and a pause after a 429). Every time is PostgreSQL's clock, and
//! what a process gets back is an offset from it, so hosts' clocks need not agree.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Double, Text};

/// A reserved slice: its first slot is `starts_in` from now (zero when due already).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slice {
    pub starts_in: Duration,
}

/// Creates the account's row if it is new.
pub fn ensure(conn: &mut PgConnection, account: &str) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO provider_budgets (account) VALUES ($1) ON CONFLICT (account) DO NOTHING",
    )
    .bind::<Text, _>(account)
    .execute(conn)
    .map(drop)
}

/// Reserves `span` of slots: they start at the next free slot, or now if the budget was
/// idle (unused time does not accrue), and never before a pause ends.
pub fn reserve(conn: &mut PgConnection, account: &str, span: Duration) -> QueryResult<Slice> {
    #[derive(QueryableByName)]
    struct Reserved {
        #[diesel(sql_type = Double)]
        starts_in: f64,
    }
    let reserved: Reserved = diesel::sql_query(
        "WITH now AS (SELECT clock_timestamp() AS at) \
         UPDATE provider_budgets b \
            SET next_free = GREATEST(b.next_free, now.at, b.paused_until) \
                            + make_interval(secs => $2), \
                live_until = GREATEST(b.next_free, now.at, b.paused_until) \
                            + make_interval(secs => $2), \
                reservations = b.reservations + 1 \
           FROM now \
          WHERE b.account = $1 \
      RETURNING extract(epoch FROM (b.next_free - make_interval(secs => $2) - now.at))::float8 \
                AS starts_in",
    )
    .bind::<Text, _>(account)
    .bind::<Double, _>(span.as_secs_f64())
    .get_result(conn)?;
    Ok(Slice {
        starts_in: Duration::from_secs_f64(reserved.starts_in.max(0.0)),
    })
}

/// Reserves `span` of slots for background work, only if live traffic holds no slot
/// ahead of now, or if the background's floor is due: then the next floor slice comes due
/// after `span / floor`, so background work gets at least `floor` of the rate. `None`
/// when neither holds (or during a pause): ask again later.
pub fn reserve_background(
    conn: &mut PgConnection,
    account: &str,
    span: Duration,
    floor: f64,
) -> QueryResult<Option<Slice>> {
    #[derive(QueryableByName)]
    struct Reserved {
        #[diesel(sql_type = Double)]
        starts_in: f64,
    }
    let reserved: Option<Reserved> = diesel::sql_query(
        "WITH now AS (SELECT clock_timestamp() AS at) \
         UPDATE provider_budgets b \
            SET next_free = GREATEST(b.next_free, now.at) + make_interval(secs => $2), \
                reservations = b.reservations + 1, \
                floor_next = CASE WHEN b.live_until <= now.at THEN b.floor_next \
                             ELSE GREATEST(b.floor_next, now.at) + make_interval(secs => $2 / $3) END \
           FROM now \
          WHERE b.account = $1 AND b.paused_until <= now.at \
            AND (b.live_until <= now.at OR b.floor_next <= now.at) \
      RETURNING extract(epoch FROM (GREATEST(b.next_free - make_interval(secs => $2), now.at) \
                                    - now.at))::float8 AS starts_in",
    )
    .bind::<Text, _>(account)
    .bind::<Double, _>(span.as_secs_f64())
    .bind::<Double, _>(floor)
    .get_result(conn)
    .optional()?;
    Ok(reserved.map(|r| Slice {
        starts_in: Duration::from_secs_f64(r.starts_in.max(0.0)),
    }))
}

/// Slices reserved so far in every account's budget.
pub fn reservations(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Total {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let total: Total = diesel::sql_query(
        "SELECT coalesce(sum(reservations), 0)::bigint AS n FROM provider_budgets",
    )
    .get_result(conn)?;
    Ok(total.n)
}

/// Pauses the budget for every process until `for_` from now (a later pause stays), and
/// counts the 429 that asked for it.
pub fn pause(conn: &mut PgConnection, account: &str, for_: Duration) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE provider_budgets \
            SET paused_until = GREATEST(paused_until, clock_timestamp() + make_interval(secs => $2)), \
                rate_limited_total = rate_limited_total + 1, \
                last_rate_limited_at = clock_timestamp() \
          WHERE account = $1",
    )
    .bind::<Text, _>(account)
    .bind::<Double, _>(for_.as_secs_f64())
    .execute(conn)
    .map(drop)
}

/// One account's 429s: how many, the last, and how long every consumer still waits.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct RateLimits {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub rate_limited_total: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub last_rate_limited_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `None` when the budget is not paused now.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub paused_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every account's 429s, by account.
pub fn rate_limits(conn: &mut PgConnection) -> QueryResult<Vec<RateLimits>> {
    diesel::sql_query(
        "SELECT account, rate_limited_total, last_rate_limited_at, \
           CASE WHEN paused_until > clock_timestamp() THEN paused_until END AS paused_until \
         FROM provider_budgets ORDER BY account",
    )
    .load(conn)
}
