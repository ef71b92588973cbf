//! The inbound rules, decided on values alone (no database): what a customer event does
//! to a customer we link, when a same-second event follows from the state we hold, and
//! when an invoice event is older than the row it would overwrite. The appliers read the
//! locked rows, ask these rules, and write what they answer.

use crate::db::customers::CustomerRow;
use crate::db::links::LinkRow;
use crate::domain::Provider;
use crate::stripe::{Customer, Event};

/// What a customer event does to a customer we link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
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

/// Decides an event about a linked customer, on its locked rows. `current` (the customer
/// as Stripe holds it now, read to settle a tie) skips the ordering checks.
pub fn verdict(
    customer: &CustomerRow,
    link: &LinkRow,
    event: &Event,
    remote: &Customer,
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

/// For a same-second tie: whether the event's prior state is the one we last applied.
fn follows(link: &LinkRow, event: &Event, remote: &Customer) -> bool {
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

/// How far along its life an invoice status is; terminal statuses rank highest.
fn status_rank(status: Option<&str>) -> u8 {
    match status {
        None | Some("draft") => 0,
        Some("open") => 1,
        Some(_) => 2,
    }
}

/// Whether an invoice event (its time and the status it carries) must not overwrite the
/// stored row: it is older, or it would take a terminal status back to an earlier one.
pub fn invoice_is_stale(
    stored_status: Option<&str>,
    stored_event_created: i64,
    status: Option<&str>,
    created: i64,
) -> bool {
    let (old, new) = (status_rank(stored_status), status_rank(status));
    let terminal_kept = old == 2 && new < 2;
    let older = created < stored_event_created || (created == stored_event_created && new < old);
    terminal_kept || older
}

/// The providers a change from Stripe is passed on to: every other one, never Stripe.
pub fn passed_on_to(providers: &[Provider]) -> Vec<Provider> {
    providers
        .iter()
        .copied()
        .filter(|p| *p != Provider::Stripe)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CustomerId;
    use serde_json::json;

    fn customer(version: i64, name: &str, email: &str, deleted: bool) -> CustomerRow {
        let now = chrono::Utc::now();
        CustomerRow {
            id: CustomerId::parse("c-1").unwrap(),
            name: name.into(),
            email: email.into(),
            version,
            created_at: now,
            updated_at: now,
            deleted_at: deleted.then_some(now),
        }
    }

    fn link(synced: i64, last: Option<i64>, name: &str, email: &str) -> LinkRow {
        let now = chrono::Utc::now();
        LinkRow {
            customer_id: CustomerId::parse("c-1").unwrap(),
            provider: Provider::Stripe,
            external_id: Some("cus_1".into()),
            synced_version: synced,
            remote_event_created: last,
            remote_event_id: None,
            remote_name: Some(name.into()),
            remote_email: Some(email.into()),
            created_at: now,
            updated_at: now,
        }
    }

    fn event(kind: &str, created: i64, name: &str, previous: Option<serde_json::Value>) -> Event {
        serde_json::from_value(json!({
            "id": "evt_1", "type": kind, "created": created,
            "data": {
                "object": {"id": "cus_1", "object": "customer", "name": name, "email": "a@x.io"},
                "previous_attributes": previous,
            }
        }))
        .unwrap()
    }

    fn decide(c: &CustomerRow, l: &LinkRow, e: &Event, current: bool) -> Verdict {
        verdict(c, l, e, &e.customer().unwrap(), current)
    }

    #[test]
    fn an_older_event_is_stale_and_a_newer_one_applies() {
        let c = customer(2, "Old", "a@x.io", false);
        let l = link(2, Some(100), "Old", "a@x.io");
        assert_eq!(
            decide(&c, &l, &event("customer.updated", 99, "New", None), false),
            Verdict::Stale
        );
        assert_eq!(
            decide(&c, &l, &event("customer.updated", 101, "New", None), false),
            Verdict::Apply
        );
        // Read from Stripe now: the ordering checks do not apply.
        assert_eq!(
            decide(&c, &l, &event("customer.updated", 99, "New", None), true),
            Verdict::Apply
        );
    }

    #[test]
    fn a_same_second_event_applies_only_when_it_follows_from_what_we_hold() {
        let c = customer(2, "Old", "a@x.io", false);
        let l = link(2, Some(100), "Old", "a@x.io");
        let follows = event("customer.updated", 100, "New", Some(json!({"name": "Old"})));
        let other = event(
            "customer.updated",
            100,
            "New",
            Some(json!({"name": "Else"})),
        );
        assert_eq!(decide(&c, &l, &follows, false), Verdict::Apply);
        assert_eq!(decide(&c, &l, &other, false), Verdict::Tie);
        assert_eq!(
            decide(&c, &l, &event("customer.created", 100, "New", None), false),
            Verdict::Stale
        );
    }

    #[test]
    fn echoes_tombstones_and_pending_local_changes_are_not_overwritten() {
        let l = link(2, Some(100), "Old", "a@x.io");
        let e = event("customer.updated", 101, "New", None);
        assert_eq!(
            decide(&customer(2, "New", "a@x.io", false), &l, &e, false),
            Verdict::InSync
        );
        assert_eq!(
            decide(&customer(3, "Old", "a@x.io", true), &l, &e, false),
            Verdict::DeletedLocally
        );
        assert_eq!(
            decide(&customer(3, "Mine", "a@x.io", false), &l, &e, false),
            Verdict::OlderThanLocal
        );
    }

    #[test]
    fn an_invoice_never_goes_back_in_time_or_out_of_a_terminal_status() {
        assert!(invoice_is_stale(Some("open"), 100, Some("draft"), 99));
        assert!(invoice_is_stale(Some("paid"), 100, Some("open"), 101));
        assert!(invoice_is_stale(Some("open"), 100, Some("draft"), 100));
        assert!(!invoice_is_stale(Some("open"), 100, Some("paid"), 100));
        assert!(!invoice_is_stale(Some("draft"), 100, Some("open"), 101));
        assert!(!invoice_is_stale(Some("paid"), 100, Some("void"), 101));
    }

    #[test]
    fn changes_from_stripe_go_to_every_other_provider() {
        assert_eq!(passed_on_to(&Provider::ALL), vec![Provider::Salesforce]);
        assert!(passed_on_to(&[Provider::Stripe]).is_empty());
    }
}
