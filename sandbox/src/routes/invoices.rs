//! `/v1/invoiceitems` and `/v1/invoices`: enough of Stripe's invoicing to drive an invoice
//! catalogue, with its status transitions (draft → open → paid | void | uncollectible,
//! uncollectible → paid | void) and the events each one emits.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::customers::live;
use super::{apply_metadata, created_filter, metadata_param, nullable, page};
use crate::error::ApiError;
use crate::form::Params;
use crate::store::{now, Cause, Invoice, InvoiceItem, InvoiceStatus, Scope, Store};

/// `POST /v1/invoices/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Finalize,
    Pay,
    Void,
    MarkUncollectible,
}

impl Action {
    pub fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "finalize" => Self::Finalize,
            "pay" => Self::Pay,
            "void" => Self::Void,
            "mark_uncollectible" => Self::MarkUncollectible,
            _ => return None,
        })
    }
}

fn currency(p: &Params) -> Result<Option<String>, ApiError> {
    match p.str("currency")? {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            Ok(Some(c.to_ascii_lowercase()))
        }
        Some(c) => Err(ApiError::invalid(format!("Invalid currency: {c}")).param("currency")),
    }
}

fn invoice_json(store: &Store, id: &str) -> Value {
    store.invoices.get(id).expect("exists").to_json(store)
}

/// Parameters Stripe accepts on an invoice create or update that the sandbox accepts and
/// ignores (taxes, discounts, payment settings, rendering: nothing it renders).
const INVOICE_IGNORED: &[&str] = &[
    "account_tax_ids",
    "application_fee_amount",
    "automatic_tax",
    "automatically_finalizes_at",
    "custom_fields",
    "default_payment_method",
    "default_source",
    "default_tax_rates",
    "discounts",
    "effective_at",
    "issuer",
    "on_behalf_of",
    "payment_settings",
    "rendering",
    "shipping_cost",
    "shipping_details",
    "statement_descriptor",
    "transfer_data",
];

pub fn create_item(store: &mut Store, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    p.allow(&[
        "customer",
        "amount",
        "currency",
        "description",
        "invoice",
        "metadata",
        "expand",
        // Accepted and ignored: nothing the sandbox renders depends on them.
        "customer_account",
        "discountable",
        "discounts",
        "period",
        "price_data",
        "pricing",
        "quantity",
        "quantity_decimal",
        "subscription",
        "tax_behavior",
        "tax_code",
        "tax_rates",
        "unit_amount_decimal",
    ])?;
    let customer_id = p.required("customer")?.to_owned();
    let amount = match (p.int("amount")?, p.str("unit_amount_decimal")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: amount, unit_amount_decimal.",
            ))
        }
        (Some(amount), None) => amount,
        // A unit amount times the quantity, as Stripe computes it.
        (None, Some(unit)) => {
            let unit: f64 = unit.parse().map_err(|_| {
                ApiError::invalid(format!("Invalid decimal: {unit}")).param("unit_amount_decimal")
            })?;
            let quantity = p.int("quantity")?.unwrap_or(1);
            (unit * quantity as f64).round() as i64
        }
        (None, None) => return Err(ApiError::missing_parameter("amount")),
    };
    let currency = currency(p)?.ok_or_else(|| ApiError::missing_parameter("currency"))?;
    let description = nullable(p, "description")?.flatten();
    let metadata = metadata_param(p)?;
    let invoice = p.str("invoice")?.map(str::to_owned);

    live(store, &customer_id, "customer")?;
    if let Some(invoice_id) = &invoice {
        let inv = store
            .invoices
            .get(invoice_id)
            .ok_or_else(|| ApiError::no_such("invoice", invoice_id, "invoice"))?;
        if inv.status != InvoiceStatus::Draft {
            return Err(ApiError::state(format!(
                "You can only add invoice items to draft invoices; {invoice_id} is {}.",
                inv.status.as_str()
            ))
            .param("invoice"));
        }
        if inv.customer != customer_id {
            return Err(ApiError::state(format!(
                "The invoice {invoice_id} belongs to another customer."
            ))
            .param("invoice"));
        }
        if inv.currency != currency {
            return Err(ApiError::state(format!(
                "The currency of the invoice item ({currency}) doesn't match the invoice's \
                 currency ({}).",
                inv.currency
            ))
            .param("currency"));
        }
    }
    let id = store.id("ii");
    let mut item = InvoiceItem {
        id: id.clone(),
        customer: customer_id.clone(),
        amount,
        currency: currency.clone(),
        description,
        metadata: BTreeMap::new(),
        invoice: invoice.clone(),
        created: now(),
    };
    if let Some(update) = metadata {
        apply_metadata(&mut item.metadata, update)?;
    }
    let object = item.to_json();
    store.invoice_items.insert(id.clone(), item);
    let customer = store.customers.get_mut(&customer_id).expect("live");
    customer.currency.get_or_insert(currency);
    store.emit("invoiceitem.created", object.clone(), None, cause);
    if let Some(invoice_id) = invoice {
        let before = invoice_json(store, &invoice_id);
        store
            .invoices
            .get_mut(&invoice_id)
            .expect("checked")
            .items
            .push(id);
        let after = invoice_json(store, &invoice_id);
        emit_updated(store, before, after, cause);
    }
    Ok(object)
}

/// `invoice.updated` with the top-level fields that changed as `previous_attributes`.
fn emit_updated(store: &mut Store, before: Value, after: Value, cause: &Cause) {
    let mut previous = Map::new();
    if let (Value::Object(b), Value::Object(a)) = (&before, &after) {
        for (k, v) in b {
            match (k.as_str(), v, a.get(k)) {
                (_, v, Some(now)) if now == v => {}
                // Hashes report only the keys that changed, null for added ones.
                ("metadata", Value::Object(old), Some(Value::Object(new))) => {
                    let changed: Map<String, Value> = old
                        .keys()
                        .chain(new.keys())
                        .filter(|key| old.get(*key) != new.get(*key))
                        .map(|key| (key.clone(), old.get(key).cloned().unwrap_or(Value::Null)))
                        .collect();
                    previous.insert(k.clone(), Value::Object(changed));
                }
                _ => {
                    previous.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !previous.is_empty() {
        store.emit(
            "invoice.updated",
            after,
            Some(Value::Object(previous)),
            cause,
        );
    }
}

pub fn list_items(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&[
        "customer",
        "customer_account",
        "invoice",
        "pending",
        "limit",
        "starting_after",
        "ending_before",
        "created",
        "expand",
    ])?;
    let customer = p.str("customer")?;
    let invoice = p.str("invoice")?;
    let pending = p.bool("pending")?;
    let created = created_filter(p)?;
    // No item here belongs to a customer account (Accounts v2): that filter leaves nothing.
    let by_account = p.str("customer_account")?.is_some();
    let keep = |i: &InvoiceItem| {
        !by_account
            && customer.is_none_or(|c| i.customer == c)
            && invoice.is_none_or(|inv| i.invoice.as_deref() == Some(inv))
            && pending.is_none_or(|pend| pend == i.invoice.is_none())
            && created(i.created)
    };
    page(
        &store.invoice_items,
        Scope::All,
        keep,
        InvoiceItem::to_json,
        p,
        "/v1/invoiceitems",
        "invoiceitem",
    )
}

pub fn retrieve_item(store: &Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["expand"])?;
    store
        .invoice_items
        .get(id)
        .map(InvoiceItem::to_json)
        .ok_or_else(|| ApiError::no_such("invoiceitem", id, "id"))
}

pub fn create(store: &mut Store, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    p.allow(
        &[
            &[
                "customer",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "due_date",
                "description",
                "footer",
                "metadata",
                "currency",
                "pending_invoice_items_behavior",
                "number",
                "subscription",
                "from_invoice",
                "customer_account",
                "expand",
            ][..],
            INVOICE_IGNORED,
        ]
        .concat(),
    )?;
    let customer_id = p.required("customer")?.to_owned();
    let collection_method = p
        .one_of(
            "collection_method",
            &["charge_automatically", "send_invoice"],
        )?
        .unwrap_or_else(|| "charge_automatically".into());
    let days_until_due = p.int("days_until_due")?;
    let due_date = p.int("due_date")?;
    payment_terms(&collection_method, days_until_due, due_date)?;
    let number = nullable(p, "number")?.flatten();
    if let Some(subscription) = p.str("subscription")? {
        // The sandbox has no subscriptions, so no id can name one.
        return Err(ApiError::no_such(
            "subscription",
            subscription,
            "subscription",
        ));
    }
    if p.get("from_invoice").is_some() {
        return Err(ApiError::invalid(
            "The sandbox does not make invoice revisions (from_invoice); create the invoice \
             anew instead.",
        )
        .param("from_invoice"));
    }
    // Stripe's default since 2022-08-01 is `exclude`: pending items stay pending.
    let include = p
        .one_of("pending_invoice_items_behavior", &["include", "exclude"])?
        .as_deref()
        == Some("include");
    let auto_advance = p.bool("auto_advance")?.unwrap_or(false);
    let description = nullable(p, "description")?.flatten();
    let footer = nullable(p, "footer")?.flatten();
    let metadata = metadata_param(p)?;
    let currency = currency(p)?;

    let customer = live(store, &customer_id, "customer")?;
    let currency = currency
        .or_else(|| customer.currency.clone())
        .unwrap_or_else(|| "usd".into());
    let pending: Vec<String> = if include {
        store
            .invoice_items
            .oldest_first()
            .filter(|i| i.customer == customer_id && i.invoice.is_none() && i.currency == currency)
            .map(|i| i.id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let id = store.id("in");
    let mut invoice = Invoice {
        id: id.clone(),
        customer: customer_id,
        created: now(),
        status: InvoiceStatus::Draft,
        currency,
        collection_method,
        days_until_due,
        description,
        footer,
        due_date,
        metadata: BTreeMap::new(),
        auto_advance,
        number,
        items: pending.clone(),
        amount_paid: 0,
        attempted: false,
        attempt_count: 0,
        finalized_at: None,
        paid_at: None,
        voided_at: None,
        marked_uncollectible_at: None,
        paid_out_of_band: false,
    };
    if let Some(update) = metadata {
        apply_metadata(&mut invoice.metadata, update)?;
    }
    for item in &pending {
        store.invoice_items.get_mut(item).expect("listed").invoice = Some(id.clone());
    }
    store.invoices.insert(id.clone(), invoice);
    let object = invoice_json(store, &id);
    store.emit("invoice.created", object.clone(), None, cause);
    Ok(object)
}

/// When a `send_invoice` invoice is due: in `days_until_due` days or on `due_date`, one of
/// them; an invoice charged automatically takes neither.
fn payment_terms(
    collection_method: &str,
    days_until_due: Option<i64>,
    due_date: Option<i64>,
) -> Result<(), ApiError> {
    match (collection_method, days_until_due, due_date) {
        ("send_invoice", None, None) => Err(ApiError::missing_parameter("days_until_due")),
        ("send_invoice", Some(_), Some(_)) => Err(ApiError::invalid(
            "You may only specify one of these parameters: days_until_due, due_date.",
        )),
        ("charge_automatically", Some(_), _) | ("charge_automatically", _, Some(_)) => {
            let param = if due_date.is_some() {
                "due_date"
            } else {
                "days_until_due"
            };
            Err(ApiError::invalid(format!(
                "You can only set {param} when collection_method is send_invoice."
            ))
            .param(param))
        }
        _ => Ok(()),
    }
}

fn existing<'a>(store: &'a Store, id: &str) -> Result<&'a Invoice, ApiError> {
    store
        .invoices
        .get(id)
        .ok_or_else(|| ApiError::no_such("invoice", id, "id"))
}

pub fn retrieve(store: &Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["expand"])?;
    existing(store, id)?;
    let expand = expansions(p, "")?;
    let mut invoice = invoice_json(store, id);
    expand_customer(store, &mut invoice, expand);
    Ok(invoice)
}

/// `expand[]`: whether the invoice's `customer` is to be expanded, `prefix` being `data.`
/// for a list. The only expansion the sandbox knows; any other path is refused as Stripe
/// refuses a property that cannot be expanded.
fn expansions(p: &Params, prefix: &str) -> Result<bool, ApiError> {
    let paths = p.list("expand")?.unwrap_or_default();
    let mut customer = false;
    for path in &paths {
        match path.strip_prefix(prefix) {
            Some("customer") => customer = true,
            _ => {
                return Err(ApiError::invalid(format!(
                    "This property cannot be expanded ({path}).",
                ))
                .param("expand"))
            }
        }
    }
    Ok(customer)
}

/// Replaces the invoice's `customer` id by the customer object (a deleted one as Stripe
/// renders it), when asked.
fn expand_customer(store: &Store, invoice: &mut Value, expand: bool) {
    if !expand {
        return;
    }
    let Some(id) = invoice["customer"].as_str().map(str::to_owned) else {
        return;
    };
    if let Some(customer) = store.customers.get(&id) {
        invoice["customer"] = if customer.deleted {
            customer.deleted_json()
        } else {
            customer.to_json()
        };
    }
}

/// `GET /v1/invoices/{id}/lines`: the invoice's lines in its order, a page at a time
/// (where every invoice's `lines.url` points).
pub fn lines(store: &Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["limit", "starting_after", "ending_before", "expand"])?;
    let limit = super::page_limit(p)?;
    let lines: Vec<Value> = existing(store, id)?
        .items
        .iter()
        .filter_map(|item| store.invoice_items.get(item))
        .map(InvoiceItem::line_json)
        .collect();
    let index = |param: &str| -> Result<Option<usize>, ApiError> {
        p.str(param)?
            .map(|cursor| {
                lines
                    .iter()
                    .position(|line| line["id"] == cursor)
                    .ok_or_else(|| ApiError::no_such("line_item", cursor, param))
            })
            .transpose()
    };
    let (from, to, has_more) = match (index("starting_after")?, index("ending_before")?) {
        (Some(_), Some(_)) => return Err(super::both_cursors()),
        (Some(after), None) => {
            let to = (after + 1 + limit).min(lines.len());
            (after + 1, to, to < lines.len())
        }
        (None, Some(before)) => (before.saturating_sub(limit), before, before > limit),
        (None, None) => (0, limit.min(lines.len()), lines.len() > limit),
    };
    Ok(json!({
        "object": "list",
        "data": &lines[from..to],
        "has_more": has_more,
        "url": format!("/v1/invoices/{id}/lines"),
    }))
}

pub fn update(store: &mut Store, id: &str, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    // Description, footer and metadata stay editable after finalization, as in Stripe;
    // the number and the payment terms only on a draft.
    p.allow(
        &[
            INVOICE_IGNORED,
            &[
                "description",
                "footer",
                "metadata",
                "auto_advance",
                "number",
                "collection_method",
                "days_until_due",
                "due_date",
                "expand",
            ],
        ]
        .concat(),
    )?;
    let number = nullable(p, "number")?;
    let collection_method = p.one_of(
        "collection_method",
        &["charge_automatically", "send_invoice"],
    )?;
    let days_until_due = p.int("days_until_due")?;
    let due_date = p.int("due_date")?;
    let draft_only = [
        ("number", number.is_some()),
        ("collection_method", collection_method.is_some()),
        ("days_until_due", days_until_due.is_some()),
        ("due_date", due_date.is_some()),
    ];
    if let Some((param, _)) = draft_only.iter().find(|(_, given)| *given) {
        if existing(store, id)?.status != InvoiceStatus::Draft {
            return Err(ApiError::invalid(format!(
                "You can only update {param} on a draft invoice."
            ))
            .param(param));
        }
    }
    let description = nullable(p, "description")?;
    let footer = nullable(p, "footer")?;
    let metadata = metadata_param(p)?;
    let auto_advance = p.bool("auto_advance")?;
    existing(store, id)?;
    let before = invoice_json(store, id);
    let invoice = store.invoices.get_mut(id).expect("exists");
    let mut updated = invoice.clone();
    if let Some(update) = metadata {
        apply_metadata(&mut updated.metadata, update)?;
    }
    if let Some(description) = description {
        updated.description = description;
    }
    if let Some(footer) = footer {
        updated.footer = footer;
    }
    if let Some(auto_advance) = auto_advance {
        updated.auto_advance = auto_advance;
    }
    if let Some(number) = number {
        updated.number = number;
    }
    if collection_method.is_some() || days_until_due.is_some() || due_date.is_some() {
        // The terms given replace the old ones as a whole.
        if let Some(method) = collection_method {
            updated.collection_method = method;
        }
        updated.days_until_due = days_until_due;
        updated.due_date = due_date;
        payment_terms(&updated.collection_method, days_until_due, due_date)?;
    }
    *invoice = updated;
    let after = invoice_json(store, id);
    emit_updated(store, before, after.clone(), cause);
    Ok(after)
}

pub fn delete(store: &mut Store, id: &str, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    p.allow(&[])?;
    if existing(store, id)?.status != InvoiceStatus::Draft {
        return Err(ApiError::state(
            "You can only delete draft invoices. Void a finalized invoice instead.",
        ));
    }
    let object = invoice_json(store, id);
    let invoice = store.invoices.remove(id).expect("exists");
    for item in invoice.items {
        if let Some(item) = store.invoice_items.get_mut(&item) {
            item.invoice = None;
        }
    }
    store.emit("invoice.deleted", object, None, cause);
    Ok(json!({"id": id, "object": "invoice", "deleted": true}))
}

/// Finalizes a draft: number, URLs, `finalized_at`; a zero-amount invoice is paid at once.
fn finalize(store: &mut Store, id: &str, cause: &Cause) {
    let at = now();
    let draft = store.invoices.get(id).expect("exists");
    let (customer_id, given) = (draft.customer.clone(), draft.number.clone());
    // A number set on the draft is kept; otherwise the customer's sequence gives one.
    let number = given.or_else(|| {
        store.customers.get_mut(&customer_id).map(|c| {
            let number = format!("{}-{:04}", c.invoice_prefix, c.next_invoice_sequence);
            c.next_invoice_sequence += 1;
            number
        })
    });
    store.invoice_sequence += 1;
    let invoice = store.invoices.get_mut(id).expect("exists");
    invoice.status = InvoiceStatus::Open;
    invoice.finalized_at = Some(at);
    invoice.number = number;
    let object = invoice_json(store, id);
    store.emit("invoice.finalized", object, None, cause);
    if store.invoices.get(id).expect("exists").amount_due(store) == 0 {
        mark_paid(store, id, true, cause);
    }
}

/// The decline of one of Stripe's test payment methods or tokens that always fail
/// (`pm_card_chargeDeclined`, `pm_card_chargeDeclinedInsufficientFunds`,
/// `tok_chargeDeclined`, ...); `None` for one that pays.
fn decline_code(instrument: &str) -> Option<&'static str> {
    let reason = instrument
        .strip_prefix("pm_card_visa_chargeDeclined")
        .or_else(|| instrument.strip_prefix("pm_card_chargeDeclined"))
        .or_else(|| instrument.strip_prefix("tok_chargeDeclined"))?;
    Some(match reason {
        "InsufficientFunds" => "insufficient_funds",
        "LostCard" => "lost_card",
        "StolenCard" => "stolen_card",
        "ExpiredCard" => "expired_card",
        _ => "generic_decline",
    })
}

/// Pays an open invoice, or records a declined attempt: the invoice stays open, its
/// `attempt_count` grows, `invoice.payment_failed` is emitted, and the caller gets a 402.
fn charge(
    store: &mut Store,
    id: &str,
    out_of_band: bool,
    declined: Option<&str>,
    cause: &Cause,
) -> Result<(), ApiError> {
    let due = store.invoices.get(id).expect("exists").amount_due(store);
    let Some(decline_code) = declined.filter(|_| due > 0) else {
        mark_paid(store, id, out_of_band, cause);
        return Ok(());
    };
    let invoice = store.invoices.get_mut(id).expect("exists");
    invoice.attempted = true;
    invoice.attempt_count += 1;
    let object = invoice_json(store, id);
    store.emit("invoice.payment_failed", object, None, cause);
    Err(ApiError::card_declined(decline_code))
}

fn mark_paid(store: &mut Store, id: &str, out_of_band: bool, cause: &Cause) {
    let due = store.invoices.get(id).expect("exists").amount_due(store);
    let invoice = store.invoices.get_mut(id).expect("exists");
    invoice.status = InvoiceStatus::Paid;
    invoice.amount_paid = due;
    invoice.paid_at = Some(now());
    invoice.paid_out_of_band = out_of_band;
    if !out_of_band {
        invoice.attempted = true;
        invoice.attempt_count += 1;
    }
    let object = invoice_json(store, id);
    store.emit("invoice.paid", object.clone(), None, cause);
    if !out_of_band && due > 0 {
        store.emit("invoice.payment_succeeded", object, None, cause);
    }
}

pub fn act(
    store: &mut Store,
    id: &str,
    action: Action,
    p: &Params,
    cause: &Cause,
) -> Result<Value, ApiError> {
    let mut declined = None;
    let out_of_band = match action {
        Action::Pay => {
            p.allow(&[
                "paid_out_of_band",
                "payment_method",
                "source",
                "forgive",
                "mandate",
                "off_session",
                "expand",
            ])?;
            let out_of_band = p.bool("paid_out_of_band")?.unwrap_or(false);
            let instrument = p.str("payment_method")?.or(p.str("source")?);
            declined = instrument.filter(|_| !out_of_band).and_then(decline_code);
            out_of_band
        }
        Action::Finalize => {
            p.allow(&["auto_advance", "expand"])?;
            false
        }
        Action::Void | Action::MarkUncollectible => {
            p.allow(&["expand"])?;
            false
        }
    };
    let status = existing(store, id)?.status;
    use InvoiceStatus::*;
    match (action, status) {
        (Action::Finalize, Draft) => finalize(store, id, cause),
        (Action::Finalize, _) => {
            return Err(ApiError::state(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            ))
        }
        (Action::Pay, Draft) => {
            // Paying a draft finalizes it first, as Stripe does.
            finalize(store, id, cause);
            if existing(store, id)?.status == Open {
                charge(store, id, out_of_band, declined, cause)?;
            }
        }
        (Action::Pay, Open | Uncollectible) => charge(store, id, out_of_band, declined, cause)?,
        (Action::Pay, Paid) => return Err(ApiError::state("Invoice is already paid")),
        (Action::Pay, Void) => {
            return Err(ApiError::state(
                "This invoice has been voided and can no longer be paid.",
            ))
        }
        (Action::Void, Open | Uncollectible) => {
            store.invoices.get_mut(id).expect("exists").status = Void;
            store.invoices.get_mut(id).expect("exists").voided_at = Some(now());
            let object = invoice_json(store, id);
            store.emit("invoice.voided", object, None, cause);
        }
        (Action::Void, Draft) => {
            return Err(ApiError::state(
                "You can't void a draft invoice. Delete it instead.",
            ))
        }
        (Action::Void, _) => {
            return Err(ApiError::state(format!(
                "You can only void an open or uncollectible invoice; this one is {}.",
                status.as_str()
            )))
        }
        (Action::MarkUncollectible, Open) => {
            let invoice = store.invoices.get_mut(id).expect("exists");
            invoice.status = Uncollectible;
            invoice.marked_uncollectible_at = Some(now());
            let object = invoice_json(store, id);
            store.emit("invoice.marked_uncollectible", object, None, cause);
        }
        (Action::MarkUncollectible, _) => {
            return Err(ApiError::state(format!(
                "You can only mark an open invoice as uncollectible; this one is {}.",
                status.as_str()
            )))
        }
    }
    Ok(invoice_json(store, id))
}

pub fn list(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&[
        "customer",
        "status",
        "collection_method",
        "limit",
        "starting_after",
        "ending_before",
        "created",
        "expand",
        "due_date",
        "subscription",
        "customer_account",
    ])?;
    let customer = p.str("customer")?;
    // No invoice here belongs to a subscription or a customer account: either filter
    // leaves nothing, as it would in an account without them.
    let none_match = p.str("subscription")?.is_some() || p.str("customer_account")?.is_some();
    let due = super::range_filter(p, "due_date")?;
    let by_due = p.get("due_date").is_some();
    let status = p.one_of(
        "status",
        &["draft", "open", "paid", "uncollectible", "void"],
    )?;
    let method = p.str("collection_method")?;
    let created = created_filter(p)?;
    let keep = |i: &Invoice| {
        !none_match
            && (!by_due || i.due_date().is_some_and(&due))
            && customer.is_none_or(|c| i.customer == c)
            && status.as_deref().is_none_or(|s| i.status.as_str() == s)
            && method.is_none_or(|m| i.collection_method == m)
            && created(i.created)
    };
    let expand = expansions(p, "data.")?;
    let render = |i: &Invoice| {
        let mut invoice = i.to_json(store);
        expand_customer(store, &mut invoice, expand);
        invoice
    };
    page(
        &store.invoices,
        Scope::All,
        keep,
        render,
        p,
        "/v1/invoices",
        "invoice",
    )
}
