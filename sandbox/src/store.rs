//! The in-memory account: customers, invoices, invoice items and events, all behind one lock
//! so that a change and its event are one step.

use std::collections::{BTreeMap, HashMap};

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
}

impl Customer {
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
            "date": self.created,
            "description": self.description,
            "discountable": true,
            "invoice": self.invoice,
            "livemode": false,
            "metadata": self.metadata,
            "period": {"end": self.created, "start": self.created},
            "proration": false,
            "quantity": 1,
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
    pub metadata: BTreeMap<String, String>,
    pub auto_advance: bool,
    pub number: Option<String>,
    pub items: Vec<String>,
    pub amount_paid: i64,
    pub attempted: bool,
    pub finalized_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub voided_at: Option<i64>,
    pub marked_uncollectible_at: Option<i64>,
    pub paid_out_of_band: bool,
}

impl Invoice {
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
        let due_date = match (self.collection_method.as_str(), self.days_until_due) {
            ("send_invoice", Some(days)) => Some(self.created + days * 86_400),
            _ => None,
        };
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
            "attempt_count": u8::from(self.attempted),
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
            "footer": null,
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
                "total_count": lines.len(),
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

/// Objects in creation order plus an index by id.
#[derive(Debug)]
pub struct Table<T> {
    pub by_id: HashMap<String, T>,
    pub order: Vec<String>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            order: Vec::new(),
        }
    }
}

impl<T> Table<T> {
    pub fn insert(&mut self, id: String, value: T) {
        self.order.push(id.clone());
        self.by_id.insert(id, value);
    }

    pub fn get(&self, id: &str) -> Option<&T> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.by_id.get_mut(id)
    }

    /// Newest first, as Stripe lists.
    pub fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.order.iter().rev().filter_map(|id| self.by_id.get(id))
    }
}

/// The account's state.
pub struct Store {
    pub customers: Table<Customer>,
    pub invoices: Table<Invoice>,
    pub invoice_items: Table<InvoiceItem>,
    pub events: Table<Value>,
    pub invoice_sequence: u64,
    pub rng: StdRng,
    outbox: Option<Outbox>,
}

impl Store {
    pub fn new(rng: StdRng, outbox: Option<Outbox>) -> Self {
        Self {
            customers: Table::default(),
            invoices: Table::default(),
            invoice_items: Table::default(),
            events: Table::default(),
            invoice_sequence: 0,
            rng,
            outbox,
        }
    }

    pub fn id(&mut self, prefix: &str) -> String {
        let len = if prefix == "cus" { 14 } else { 24 };
        new_id(&mut self.rng, prefix, len)
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

    /// A delivery was answered 2xx: the event no longer waits on the endpoint.
    pub fn mark_delivered(&mut self, event_id: &str) {
        if let Some(event) = self.events.get_mut(event_id) {
            event["pending_webhooks"] = json!(0);
        }
    }
}
