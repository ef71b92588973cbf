//! The in-memory account: customers, invoices, invoice items and events, all behind one lock
//! so that a change and its event are one step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use crate::webhooks::Outbox;
// Events are rendered with the API version our client pins (Stripe uses the account's).
use shared::stripe::API_VERSION;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A random Stripe-style id: `cus_` and 14 alphanumerics.
pub fn new_id(rng: &mut impl Rng, prefix: &str, len: usize) -> String {
    let tail: String = (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}

/// Which request caused a change, for the event's `request` field.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A customer as stored.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub created: i64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub description: Option<String>,
    pub phone: Option<String>,
    pub address: Option<BTreeMap<String, Option<String>>>,
    pub metadata: BTreeMap<String, String>,
    pub preferred_locales: Vec<String>,
    pub balance: i64,
    pub tax_exempt: String,
    pub currency: Option<String>,
    pub invoice_prefix: String,
    pub next_invoice_sequence: u64,
    pub deleted: bool,
    /// When it was last created or changed: search sees it `Store::search_delay` later.
    pub written_at: Instant,
}

impl Customer {
    /// A customer with nothing set but its id, creation time and invoice prefix.
    pub fn new(id: String, created: i64, invoice_prefix: String) -> Self {
        Self {
            id,
            created,
            name: None,
            email: None,
            description: None,
            phone: None,
            address: None,
            metadata: BTreeMap::new(),
            preferred_locales: Vec::new(),
            balance: 0,
            tax_exempt: "none".into(),
            currency: None,
            invoice_prefix,
            next_invoice_sequence: 1,
            deleted: false,
            written_at: Instant::now(),
        }
    }

    /// Stripe's customer object, with every key of `stripe-fixtures/customer.json`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "customer",
            "address": self.address,
            "balance": self.balance,
            "created": self.created,
            "currency": self.currency,
            "default_source": null,
            "delinquent": false,
            "description": self.description,
            "discount": null,
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null
            },
            "livemode": false,
            "metadata": self.metadata,
            "name": self.name,
            "next_invoice_sequence": self.next_invoice_sequence,
            "phone": self.phone,
            "preferred_locales": self.preferred_locales,
            "shipping": null,
            "tax_exempt": self.tax_exempt,
            "test_clock": null
        })
    }

    /// What a deleted customer answers with (`stripe-fixtures/deleted_customer.json`).
    pub fn deleted_json(&self) -> Value {
        json!({"id": self.id, "object": "customer", "deleted": true})
    }
}

/// An invoice item: pending on the customer until an invoice takes it.
#[derive(Debug, Clone)]
pub struct InvoiceItem {
    pub id: String,
    pub customer: String,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub invoice: Option<String>,
    pub created: i64,
}

impl InvoiceItem {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "invoiceitem",
            "amount": self.amount,
            "currency": self.currency,
            "customer": self.customer,
            "customer_account": null,
            "date": self.created,
            "description": self.description,
            "discountable": true,
            "discounts": [],
            "invoice": self.invoice,
            "livemode": false,
            "metadata": self.metadata,
            "parent": null,
            "period": {"end": self.created, "start": self.created},
            "pricing": {"type": "price_details", "unit_amount_decimal": self.amount.to_string()},
            "proration": false,
            "quantity": 1,
            "quantity_decimal": "1",
            "tax_rates": [],
            "test_clock": null
        })
    }

    /// The item as a line of its invoice.
    pub fn line_json(&self) -> Value {
        json!({
            "id": format!("il_{}", &self.id[3..]),
            "object": "line_item",
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "discount_amounts": [],
            "discountable": true,
            "discounts": [],
            "invoice": self.invoice,
            "livemode": false,
            "metadata": self.metadata,
            "period": {"end": self.created, "start": self.created},
            "quantity": 1,
            "quantity_decimal": "1",
            "subscription": null,
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": self.id, "proration": false,
                                         "proration_details": {"credited_items": null},
                                         "subscription": null},
                "subscription_item_details": null
            },
            "pricing": {"type": "price_details", "unit_amount_decimal": self.amount.to_string()},
            "subtotal": self.amount,
            "taxes": [],
            "pretax_credit_amounts": []
        })
    }
}

/// `draft → open → paid | void | uncollectible`, `uncollectible → paid | void`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Void,
    Uncollectible,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Open => "open",
            Self::Paid => "paid",
            Self::Void => "void",
            Self::Uncollectible => "uncollectible",
        }
    }
}

/// An invoice as stored.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: String,
    pub customer: String,
    pub created: i64,
    pub status: InvoiceStatus,
    pub currency: String,
    pub collection_method: String,
    pub days_until_due: Option<i64>,
    pub description: Option<String>,
    /// Shown at the bottom of the invoice; editable after finalization.
    pub footer: Option<String>,
    /// A due date given at creation (`send_invoice`), instead of `days_until_due`.
    pub due_date: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    pub auto_advance: bool,
    pub number: Option<String>,
    pub items: Vec<String>,
    pub amount_paid: i64,
    pub attempted: bool,
    /// Payment attempts so far, failed ones included.
    pub attempt_count: u32,
    pub finalized_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub voided_at: Option<i64>,
    pub marked_uncollectible_at: Option<i64>,
    pub paid_out_of_band: bool,
}

impl Invoice {
    /// When payment is due: the date given, or `days_until_due` after creation, for an
    /// invoice sent to the customer; none for one charged automatically.
    pub fn due_date(&self) -> Option<i64> {
        match (self.collection_method.as_str(), self.days_until_due) {
            ("send_invoice", _) if self.due_date.is_some() => self.due_date,
            ("send_invoice", Some(days)) => Some(self.created + days * 86_400),
            _ => None,
        }
    }

    /// Stripe's invoice object (`stripe-fixtures/invoice.json`), computed from the items.
    pub fn to_json(&self, store: &Store) -> Value {
        let lines: Vec<&InvoiceItem> = self
            .items
            .iter()
            .filter_map(|id| store.invoice_items.get(id))
            .collect();
        let subtotal: i64 = lines.iter().map(|l| l.amount).sum();
        let customer = store.customers.get(&self.customer);
        let finalized = self.finalized_at.is_some();
        let due_date = self.due_date();
        let slug = &self.id[3..];
        json!({
            "id": self.id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "customer-sync sandbox",
            "account_tax_ids": null,
            "amount_due": subtotal,
            "amount_overpaid": 0,
            "amount_paid": self.amount_paid,
            "amount_remaining": subtotal - self.amount_paid,
            "amount_shipping": 0,
            "application": null,
            "attempt_count": self.attempt_count,
            "attempted": self.attempted,
            "auto_advance": self.auto_advance,
            "automatic_tax": {"enabled": false, "liability": null, "status": null,
                              "disabled_reason": null, "provider": null},
            "automatically_finalizes_at": null,
            "billing_reason": "manual",
            "collection_method": self.collection_method,
            "created": self.created,
            "currency": self.currency,
            "custom_fields": null,
            "customer": self.customer,
            "customer_account": null,
            "customer_address": customer.and_then(|c| c.address.clone()),
            "customer_email": customer.and_then(|c| c.email.clone()),
            "customer_name": customer.and_then(|c| c.name.clone()),
            "customer_phone": customer.and_then(|c| c.phone.clone()),
            "customer_shipping": null,
            "customer_tax_exempt": customer.map_or("none", |c| c.tax_exempt.as_str()),
            "customer_tax_ids": [],
            "default_payment_method": null,
            "default_source": null,
            "default_tax_rates": [],
            "description": self.description,
            "discounts": [],
            "due_date": due_date,
            "effective_at": self.finalized_at,
            "ending_balance": if finalized { Some(0) } else { None },
            "footer": self.footer,
            "from_invoice": null,
            "hosted_invoice_url": finalized.then(|| format!(
                "https://invoice.stripe.com/i/acct_sandbox/test_{slug}")),
            "invoice_pdf": finalized.then(|| format!(
                "https://pay.stripe.com/invoice/acct_sandbox/test_{slug}/pdf?s=ap")),
            "issuer": {"type": "self"},
            "last_finalization_error": null,
            "latest_revision": null,
            "lines": {
                "object": "list",
                "data": lines.iter().map(|l| l.line_json()).collect::<Vec<_>>(),
                "has_more": false,
                "url": format!("/v1/invoices/{}/lines", self.id)
            },
            "livemode": false,
            "metadata": self.metadata,
            "next_payment_attempt": null,
            "number": self.number,
            "on_behalf_of": null,
            "parent": null,
            "payment_settings": {"default_mandate": null, "payment_method_options": null,
                                 "payment_method_types": null},
            "period_end": self.created,
            "period_start": self.created,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": null,
            "rendering": null,
            "shipping_cost": null,
            "shipping_details": null,
            "starting_balance": 0,
            "statement_descriptor": null,
            "status": self.status.as_str(),
            "status_transitions": {
                "finalized_at": self.finalized_at,
                "marked_uncollectible_at": self.marked_uncollectible_at,
                "paid_at": self.paid_at,
                "voided_at": self.voided_at
            },
            "subscription": null,
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "test_clock": null,
            "total": subtotal,
            "total_discount_amounts": [],
            "total_excluding_tax": subtotal,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": null
        })
    }

    /// What the customer still owes.
    pub fn amount_due(&self, store: &Store) -> i64 {
        self.items
            .iter()
            .filter_map(|id| store.invoice_items.get(id))
            .map(|l| l.amount)
            .sum()
    }
}

/// Where a newest-first walk through a table starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the newest object, towards older ones.
    Newest,
    /// From the object just older than this position, towards older ones.
    OlderThan(i64),
    /// From the object just newer than this position, towards newer ones (oldest first).
    NewerThan(i64),
}

/// Which positions of a table a walk visits: all, or those of an index.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Only(&'a BTreeSet<i64>),
}

/// An index with nothing in it, for a filter value no object has.
pub static NOTHING: BTreeSet<i64> = BTreeSet::new();

/// Objects in creation order plus an index by id. Each object has a position (its place in
/// the order), so that a page starts at a cursor in O(log n) rather than by a scan.
#[derive(Debug)]
pub struct Table<T> {
    by_id: HashMap<String, (i64, T)>,
    order: BTreeMap<i64, String>,
    next: i64,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<T> Table<T> {
    /// Adds an object after every other one; returns its position.
    pub fn insert(&mut self, id: String, value: T) -> i64 {
        let position = self.next;
        self.next += 1;
        self.order.insert(position, id.clone());
        self.by_id.insert(id, (position, value));
        position
    }

    /// Adds objects (oldest first) before every existing one, as history that predates
    /// them; returns the position of the first.
    pub fn prepend(&mut self, items: Vec<(String, T)>) -> i64 {
        let first = self.order.keys().next().copied().unwrap_or(self.next);
        let start = first - items.len() as i64;
        self.by_id.reserve(items.len());
        for (offset, (id, value)) in items.into_iter().enumerate() {
            let position = start + offset as i64;
            self.order.insert(position, id.clone());
            self.by_id.insert(id, (position, value));
        }
        start
    }

    /// Takes an object out; its position is not reused.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        let (position, value) = self.by_id.remove(id)?;
        self.order.remove(&position);
        Some(value)
    }

    /// Forgets every object; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let count = self.by_id.len();
        self.by_id.clear();
        self.order.clear();
        count
    }

    pub fn get(&self, id: &str) -> Option<&T> {
        self.by_id.get(id).map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.by_id.get_mut(id).map(|(_, value)| value)
    }

    /// The object's place in the order.
    pub fn position(&self, id: &str) -> Option<i64> {
        self.by_id.get(id).map(|(position, _)| *position)
    }

    fn at(&self, position: i64) -> Option<&T> {
        self.order.get(&position).and_then(|id| self.get(id))
    }

    /// Oldest first.
    pub fn oldest_first(&self) -> impl Iterator<Item = &T> {
        self.order.values().filter_map(|id| self.get(id))
    }

    /// The objects of `scope` from `start` on, one step per object visited.
    pub fn walk<'a>(
        &'a self,
        scope: Scope<'a>,
        start: Start,
    ) -> Box<dyn Iterator<Item = &'a T> + 'a> {
        let positions: Box<dyn Iterator<Item = i64> + 'a> = match (scope, start) {
            (Scope::All, Start::Newest) => Box::new(self.order.keys().rev().copied()),
            (Scope::All, Start::OlderThan(p)) => {
                Box::new(self.order.range(..p).rev().map(|(k, _)| *k))
            }
            (Scope::All, Start::NewerThan(p)) => {
                Box::new(self.order.range(p + 1..).map(|(k, _)| *k))
            }
            (Scope::Only(set), Start::Newest) => Box::new(set.iter().rev().copied()),
            (Scope::Only(set), Start::OlderThan(p)) => Box::new(set.range(..p).rev().copied()),
            (Scope::Only(set), Start::NewerThan(p)) => Box::new(set.range(p + 1..).copied()),
        };
        Box::new(positions.filter_map(move |p| self.at(p)))
    }
}

/// The account's state.
pub struct Store {
    pub customers: Table<Customer>,
    /// Customer positions by exact email, so that listing by email does not scan every
    /// customer. Kept in step by [`Store::insert_customer`] and [`Store::replace_customer`]:
    /// change a customer's email only through those.
    pub customer_emails: HashMap<String, BTreeSet<i64>>,
    pub invoices: Table<Invoice>,
    pub invoice_items: Table<InvoiceItem>,
    pub events: Table<Value>,
    pub invoice_sequence: u64,
    /// How many customers seeding made, so that the next seeded one gets the next number.
    pub seeded_customers: usize,
    /// How long a customer's write takes to reach search.
    pub search_delay: Duration,
    pub rng: StdRng,
    outbox: Option<Arc<Outbox>>,
}

impl Store {
    pub fn new(rng: StdRng, outbox: Option<Arc<Outbox>>) -> Self {
        Self {
            customers: Table::default(),
            customer_emails: HashMap::new(),
            invoices: Table::default(),
            invoice_items: Table::default(),
            events: Table::default(),
            invoice_sequence: 0,
            seeded_customers: 0,
            search_delay: Duration::ZERO,
            rng,
            outbox,
        }
    }

    pub fn id(&mut self, prefix: &str) -> String {
        let len = if prefix == "cus" { 14 } else { 24 };
        new_id(&mut self.rng, prefix, len)
    }

    /// A random `invoice_prefix`: eight uppercase hexadecimal digits.
    pub fn invoice_prefix(&mut self) -> String {
        (0..8)
            .map(|_| {
                let n = self.rng.gen_range(0..16u32);
                char::from_digit(n, 16)
                    .expect("a hex digit")
                    .to_ascii_uppercase()
            })
            .collect()
    }

    /// Adds a customer after every other one, indexed by its email.
    pub fn insert_customer(&mut self, customer: Customer) {
        let email = customer.email.clone();
        let position = self.customers.insert(customer.id.clone(), customer);
        if let Some(email) = email {
            self.customer_emails
                .entry(email)
                .or_default()
                .insert(position);
        }
    }

    /// Adds customers (oldest first) before every existing one, indexed by their emails.
    pub fn prepend_customers(&mut self, customers: Vec<Customer>) {
        let emails: Vec<Option<String>> = customers.iter().map(|c| c.email.clone()).collect();
        let items = customers.into_iter().map(|c| (c.id.clone(), c)).collect();
        let first = self.customers.prepend(items);
        for (offset, email) in emails.into_iter().enumerate() {
            if let Some(email) = email {
                let position = first + offset as i64;
                self.customer_emails
                    .entry(email)
                    .or_default()
                    .insert(position);
            }
        }
    }

    /// Replaces a stored customer with a changed copy, moving it in the email index when
    /// its email changed.
    pub fn replace_customer(&mut self, mut customer: Customer) {
        customer.written_at = Instant::now();
        let Some(position) = self.customers.position(&customer.id) else {
            return;
        };
        let slot = self.customers.get_mut(&customer.id).expect("positioned");
        if slot.email != customer.email {
            if let Some(old) = &slot.email {
                if let Some(positions) = self.customer_emails.get_mut(old) {
                    positions.remove(&position);
                    if positions.is_empty() {
                        self.customer_emails.remove(old);
                    }
                }
            }
            if let Some(new) = &customer.email {
                self.customer_emails
                    .entry(new.clone())
                    .or_default()
                    .insert(position);
            }
        }
        *slot = customer;
    }

    /// Records an event in Stripe's envelope and queues its webhook delivery.
    pub fn emit(&mut self, kind: &str, object: Value, previous: Option<Value>, cause: &Cause) {
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        let id = self.id("evt");
        let event = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": now(),
            "data": data,
            "livemode": false,
            "pending_webhooks": u8::from(self.outbox.is_some()),
            "request": {"id": cause.request_id, "idempotency_key": cause.idempotency_key},
            "type": kind
        });
        if let Some(outbox) = &self.outbox {
            let copies = if outbox.duplicate_rate > 0.0 && self.rng.gen_bool(outbox.duplicate_rate)
            {
                2
            } else {
                1
            };
            outbox.send(&event, copies);
        }
        self.events.insert(id, event);
    }

    /// Forgets every event so far, as 30 days of retention would, and drops the deliveries
    /// still queued for them; returns (events forgotten, deliveries dropped).
    pub fn expire_events(&mut self) -> (usize, usize) {
        let forgotten = self.events.clear();
        let dropped = self
            .outbox
            .as_ref()
            .map_or(0, |outbox| outbox.forget_queued());
        (forgotten, dropped)
    }

    /// A delivery was answered 2xx: the event no longer waits on the endpoint.
    pub fn mark_delivered(&mut self, event_id: &str) {
        if let Some(event) = self.events.get_mut(event_id) {
            event["pending_webhooks"] = json!(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn table(ids: &[&str]) -> Table<String> {
        let mut table = Table::default();
        for id in ids {
            table.insert((*id).to_owned(), (*id).to_owned());
        }
        table
    }

    fn walked(table: &Table<String>, scope: Scope<'_>, start: Start) -> Vec<String> {
        table.walk(scope, start).cloned().collect()
    }

    #[test]
    fn a_walk_starts_next_to_its_cursor_in_either_direction() {
        let table = table(&["a", "b", "c", "d"]);
        let c = table.position("c").unwrap();
        assert_eq!(
            walked(&table, Scope::All, Start::Newest),
            ["d", "c", "b", "a"]
        );
        assert_eq!(walked(&table, Scope::All, Start::OlderThan(c)), ["b", "a"]);
        assert_eq!(walked(&table, Scope::All, Start::NewerThan(c)), ["d"]);
        let only: BTreeSet<i64> = ["a", "c", "d"]
            .iter()
            .map(|id| table.position(id).unwrap())
            .collect();
        assert_eq!(
            walked(&table, Scope::Only(&only), Start::OlderThan(c)),
            ["a"]
        );
        let b = table.position("b").unwrap();
        assert_eq!(
            walked(&table, Scope::Only(&only), Start::NewerThan(b)),
            ["c", "d"]
        );
    }

    #[test]
    fn prepended_objects_come_before_existing_ones_and_removal_keeps_the_order() {
        let mut table = table(&["new"]);
        table.prepend(vec![
            ("old1".into(), "old1".into()),
            ("old2".into(), "old2".into()),
        ]);
        let inserted = ["later"].map(|id| table.insert(id.into(), id.into()));
        assert!(inserted[0] > table.position("new").unwrap());
        assert_eq!(
            table.oldest_first().cloned().collect::<Vec<_>>(),
            ["old1", "old2", "new", "later"]
        );
        assert_eq!(table.remove("new").as_deref(), Some("new"));
        assert_eq!(table.position("new"), None);
        let old2 = table.position("old2").unwrap();
        assert_eq!(
            walked(&table, Scope::All, Start::NewerThan(old2)),
            ["later"]
        );
        assert_eq!(table.clear(), 3);
        assert_eq!(table.oldest_first().count(), 0);
    }

    #[test]
    fn the_email_index_follows_a_customer_whose_email_changes() {
        let mut store = Store::new(StdRng::seed_from_u64(1), None);
        let mut ada = Customer::new("cus_ada".into(), 1, "AAAAAAAA".into());
        ada.email = Some("ada@example.com".into());
        store.insert_customer(ada.clone());
        let mut twin = Customer::new("cus_twin".into(), 2, "BBBBBBBB".into());
        twin.email = Some("ada@example.com".into());
        store.insert_customer(twin);
        assert_eq!(store.customer_emails["ada@example.com"].len(), 2);

        ada.email = Some("Ada@Example.com".into());
        store.replace_customer(ada.clone());
        let position = store.customers.position("cus_ada").unwrap();
        assert!(!store.customer_emails["ada@example.com"].contains(&position));
        assert!(store.customer_emails["Ada@Example.com"].contains(&position));

        ada.email = None;
        store.replace_customer(ada);
        assert!(
            !store.customer_emails.contains_key("Ada@Example.com"),
            "an emptied entry is removed"
        );
        assert_eq!(store.customer_emails["ada@example.com"].len(), 1);
    }
}
