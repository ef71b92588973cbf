//! The writes of a link made by hand (`PUT /api/v1/customers/{id}/links/stripe`): the
//! customer's Stripe link pointed at the operator's choice, and the dead Stripe tasks it
//! settles. `crate::catalog::link_stripe` runs them in one transaction.

use diesel::prelude::*;
use diesel::sql_types::Text;

use super::statement::statement;
use crate::domain::CustomerId;

/// The prefix of `last_error` on a dead task that a manual link settled.
pub const SUPERSEDED: &str = "superseded by a manual link: ";

/// Points the customer's Stripe link at `external_id` (replacing any other) as never
/// synced, forgetting the remote state applied from the previous Stripe customer.
pub fn set_stripe_link(
    conn: &mut PgConnection,
    customer: &CustomerId,
    external_id: &str,
) -> QueryResult<()> {
    statement(
        "INSERT INTO provider_links (customer_id, provider, external_id) VALUES ($1, 'stripe', $2) \
         ON CONFLICT (customer_id, provider) DO UPDATE SET external_id = excluded.external_id, \
           synced_version = 0, remote_event_created = NULL, remote_event_id = NULL, \
           remote_name = NULL, remote_email = NULL, updated_at = now()",
    )
    .bind::<Text, _>(customer.as_str())
    .bind::<Text, _>(external_id)
    .execute(conn)
    .map(drop)
}

/// Marks the customer's `dead` Stripe tasks succeeded, their error kept after
/// [`SUPERSEDED`]; answers how many there were.
pub fn supersede_dead_stripe_tasks(
    conn: &mut PgConnection,
    customer: &CustomerId,
) -> QueryResult<usize> {
    statement(
        "UPDATE sync_tasks SET status = 'succeeded', \
           last_error = $1 || COALESCE(last_error, ''), \
           completed_at = now(), updated_at = now() \
         WHERE customer_id = $2 AND provider = 'stripe' AND status = 'dead'",
    )
    .bind::<Text, _>(SUPERSEDED)
    .bind::<Text, _>(customer.as_str())
    .execute(conn)
}
