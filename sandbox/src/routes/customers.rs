//! `/v1/customers`: create, retrieve, update, delete, list.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{apply_metadata, created_filter, metadata_param, nullable, page, MetadataUpdate};
use crate::error::ApiError;
use crate::form::{Param, Params};
use crate::store::{now, Cause, Customer, Scope, Store, NOTHING};

const WRITABLE: &[&str] = &[
    "name",
    "email",
    "description",
    "phone",
    "metadata",
    "address",
    "preferred_locales",
    "balance",
    "tax_exempt",
    "invoice_prefix",
    "next_invoice_sequence",
    "expand",
];
/// Parameters Stripe accepts on a create that the sandbox accepts and ignores (nothing it
/// renders depends on them).
const CREATE_IGNORED: &[&str] = &[
    "business_name",
    "cash_balance",
    "individual_name",
    "invoice_settings",
    "payment_method",
    "shipping",
    "source",
    "tax",
    "tax_id_data",
    "test_clock",
    "validate",
];
/// The same for an update.
const UPDATE_IGNORED: &[&str] = &[
    "business_name",
    "cash_balance",
    "default_source",
    "individual_name",
    "invoice_settings",
    "shipping",
    "source",
    "tax",
    "validate",
];
const ADDRESS_FIELDS: &[&str] = &["city", "country", "line1", "line2", "postal_code", "state"];

/// The validated writable fields; `None` leaves a field unchanged.
struct Changes {
    name: Option<Option<String>>,
    email: Option<Option<String>>,
    description: Option<Option<String>>,
    phone: Option<Option<String>>,
    address: Option<Option<BTreeMap<String, Option<String>>>>,
    preferred_locales: Option<Vec<String>>,
    balance: Option<i64>,
    tax_exempt: Option<String>,
    invoice_prefix: Option<String>,
    next_invoice_sequence: Option<u64>,
    metadata: Option<MetadataUpdate>,
}

fn changes(p: &Params, ignored: &[&str]) -> Result<Changes, ApiError> {
    p.allow(&[WRITABLE, ignored].concat())?;
    let email = nullable(p, "email")?;
    if let Some(Some(email)) = &email {
        if email.chars().count() > 512 {
            return Err(
                ApiError::invalid("Invalid email address: must be at most 512 characters")
                    .param("email"),
            );
        }
        let valid = email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !email.chars().any(char::is_whitespace);
        if !valid {
            return Err(ApiError::invalid(format!("Invalid email address: {email}"))
                .code("email_invalid")
                .param("email"));
        }
    }
    let name = nullable(p, "name")?;
    if let Some(Some(name)) = &name {
        if name.chars().count() > 256 {
            return Err(
                ApiError::invalid("Invalid name: must be at most 256 characters").param("name"),
            );
        }
    }
    let address = match p.get("address") {
        None => None,
        Some(Param::Value(v)) if v.is_empty() => Some(None),
        Some(Param::Value(_)) => {
            return Err(ApiError::invalid("Invalid object").param("address"));
        }
        Some(Param::Hash(fields)) => {
            let mut address: BTreeMap<String, Option<String>> = ADDRESS_FIELDS
                .iter()
                .map(|f| (f.to_string(), None))
                .collect();
            for (k, v) in fields {
                let (true, Param::Value(v)) = (ADDRESS_FIELDS.contains(&k.as_str()), v) else {
                    return Err(ApiError::unknown_parameter(&format!("address[{k}]")));
                };
                address.insert(k.clone(), (!v.is_empty()).then(|| v.clone()));
            }
            Some(Some(address))
        }
    };
    Ok(Changes {
        name,
        email,
        description: nullable(p, "description")?,
        phone: nullable(p, "phone")?,
        address,
        preferred_locales: p.list("preferred_locales")?,
        balance: p.int("balance")?,
        // An empty value unsets it, as Stripe documents.
        tax_exempt: match p.str("tax_exempt")? {
            Some("") => Some("none".to_owned()),
            _ => p.one_of("tax_exempt", &["none", "exempt", "reverse"])?,
        },
        invoice_prefix: match p.str("invoice_prefix")? {
            None => None,
            Some(prefix)
                if (3..=12).contains(&prefix.len())
                    && prefix
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                Some(prefix.to_owned())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "Invalid invoice_prefix: must be 3 to 12 uppercase letters or digits",
                )
                .param("invoice_prefix"))
            }
        },
        next_invoice_sequence: match p.int("next_invoice_sequence")? {
            None => None,
            Some(n) if n >= 1 => Some(n as u64),
            Some(_) => {
                return Err(ApiError::invalid(
                    "Invalid next_invoice_sequence: must be a positive integer",
                )
                .param("next_invoice_sequence"))
            }
        },
        metadata: metadata_param(p)?,
    })
}

/// Applies the changes; returns `previous_attributes` for the fields that changed.
fn apply(customer: &mut Customer, changes: Changes) -> Result<Map<String, Value>, ApiError> {
    let mut previous = Map::new();
    fn set<T: PartialEq + serde::Serialize + Clone>(
        previous: &mut Map<String, Value>,
        field: &str,
        slot: &mut T,
        new: Option<T>,
    ) {
        if let Some(new) = new {
            if *slot != new {
                previous.insert(field.to_owned(), json!(slot.clone()));
                *slot = new;
            }
        }
    }
    if let Some(update) = changes.metadata {
        let changed = apply_metadata(&mut customer.metadata, update)?;
        if !changed.is_empty() {
            previous.insert("metadata".into(), Value::Object(changed));
        }
    }
    set(&mut previous, "name", &mut customer.name, changes.name);
    set(&mut previous, "email", &mut customer.email, changes.email);
    set(
        &mut previous,
        "description",
        &mut customer.description,
        changes.description,
    );
    set(&mut previous, "phone", &mut customer.phone, changes.phone);
    set(
        &mut previous,
        "address",
        &mut customer.address,
        changes.address,
    );
    set(
        &mut previous,
        "preferred_locales",
        &mut customer.preferred_locales,
        changes.preferred_locales,
    );
    set(
        &mut previous,
        "balance",
        &mut customer.balance,
        changes.balance,
    );
    set(
        &mut previous,
        "tax_exempt",
        &mut customer.tax_exempt,
        changes.tax_exempt,
    );
    set(
        &mut previous,
        "invoice_prefix",
        &mut customer.invoice_prefix,
        changes.invoice_prefix,
    );
    set(
        &mut previous,
        "next_invoice_sequence",
        &mut customer.next_invoice_sequence,
        changes.next_invoice_sequence,
    );
    Ok(previous)
}

/// A customer that exists and is not deleted, or 404 `resource_missing`.
pub fn live<'a>(store: &'a Store, id: &str, param: &str) -> Result<&'a Customer, ApiError> {
    store
        .customers
        .get(id)
        .filter(|c| !c.deleted)
        .ok_or_else(|| ApiError::no_such("customer", id, param))
}

pub fn create(store: &mut Store, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    let changes = changes(p, CREATE_IGNORED)?;
    let id = store.id("cus");
    let prefix = store.invoice_prefix();
    let mut customer = Customer::new(id, now(), prefix);
    apply(&mut customer, changes)?;
    let object = customer.to_json();
    store.insert_customer(customer);
    store.emit("customer.created", object.clone(), None, cause);
    Ok(object)
}

pub fn retrieve(store: &Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["expand"])?;
    match store.customers.get(id) {
        Some(c) if c.deleted => Ok(c.deleted_json()),
        Some(c) => Ok(c.to_json()),
        None => Err(ApiError::no_such("customer", id, "id")),
    }
}

/// Validates and applies an update; returns the customer and `previous_attributes`.
fn change(
    store: &mut Store,
    id: &str,
    p: &Params,
) -> Result<(Value, Map<String, Value>), ApiError> {
    let changes = changes(p, UPDATE_IGNORED)?;
    let mut updated = live(store, id, "id")?.clone();
    let previous = apply(&mut updated, changes)?;
    let object = updated.to_json();
    store.replace_customer(updated);
    Ok((object, previous))
}

pub fn update(store: &mut Store, id: &str, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    let (object, previous) = change(store, id, p)?;
    if !previous.is_empty() {
        store.emit(
            "customer.updated",
            object.clone(),
            Some(Value::Object(previous)),
            cause,
        );
    }
    Ok(object)
}

/// An update validated as [`update`] but without an event, as if it happened longer ago
/// than events are kept (the sandbox's `/_sandbox/customers/{id}/silent`).
pub fn update_silently(store: &mut Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    change(store, id, p).map(|(object, _)| object)
}

pub fn delete(store: &mut Store, id: &str, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    p.allow(&[])?;
    let object = live(store, id, "id")?.to_json();
    let customer = store.customers.get_mut(id).expect("checked above");
    customer.deleted = true;
    let stub = customer.deleted_json();
    store.emit("customer.deleted", object, None, cause);
    Ok(stub)
}

pub fn list(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&[
        "limit",
        "starting_after",
        "ending_before",
        "email",
        "created",
        "test_clock",
        "expand",
    ])?;
    let email = p.str("email")?;
    if email.is_some_and(|e| e.chars().count() > 512) {
        return Err(
            ApiError::invalid("Invalid email: must be at most 512 characters").param("email"),
        );
    }
    let created = created_filter(p)?;
    // Stripe's email filter is an exact, case-sensitive match: the index's keys.
    let scope = match email {
        None => Scope::All,
        Some(email) => Scope::Only(store.customer_emails.get(email).unwrap_or(&NOTHING)),
    };
    let keep = |c: &Customer| {
        !c.deleted && email.is_none_or(|e| c.email.as_deref() == Some(e)) && created(c.created)
    };
    page(
        &store.customers,
        scope,
        keep,
        Customer::to_json,
        p,
        "/v1/customers",
        "customer",
    )
}
