//! `/v1/customers`: create, retrieve, update, delete, list.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{apply_metadata, created_filter, metadata_param, nullable, page, MetadataUpdate};
use crate::error::ApiError;
use crate::form::{Param, Params};
use crate::store::{now, Cause, Customer, Store};

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
    "expand",
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
    metadata: Option<MetadataUpdate>,
}

fn changes(p: &Params) -> Result<Changes, ApiError> {
    p.allow(WRITABLE)?;
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
        tax_exempt: p.one_of("tax_exempt", &["none", "exempt", "reverse"])?,
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
    let changes = changes(p)?;
    let id = store.id("cus");
    let prefix: String = (0..8)
        .map(|_| {
            let n = rand::Rng::gen_range(&mut store.rng, 0..16u8);
            char::from_digit(u32::from(n), 16)
                .unwrap()
                .to_ascii_uppercase()
        })
        .collect();
    let mut customer = Customer {
        id: id.clone(),
        created: now(),
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
        invoice_prefix: prefix,
        next_invoice_sequence: 1,
        deleted: false,
    };
    apply(&mut customer, changes)?;
    let object = customer.to_json();
    store.customers.insert(id, customer);
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

pub fn update(store: &mut Store, id: &str, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
    let changes = changes(p)?;
    live(store, id, "id")?;
    let customer = store.customers.get_mut(id).expect("checked above");
    let mut updated = customer.clone();
    let previous = apply(&mut updated, changes)?;
    *customer = updated;
    let object = customer.to_json();
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
    let items: Vec<&Customer> = store
        .customers
        .newest_first()
        .filter(|c| !c.deleted)
        // Stripe's email filter is case-sensitive.
        .filter(|c| email.is_none_or(|e| c.email.as_deref() == Some(e)))
        .filter(|c| created(c.created))
        .collect();
    let id: fn(&Customer) -> &str = |c| &c.id;
    page(items, id, Customer::to_json, p, "/v1/customers", "customer")
}
