//! Stripe's endpoints: one module per resource; each handler validates its parameters first
//! (errors not stored under an idempotency key), then executes against the store.

pub mod customers;
mod events;
mod invoices;
mod search;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::form::{Param, Params};
use crate::store::{Cause, Scope, Start, Store, Table};

/// A recognised endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateCustomer,
    ListCustomers,
    SearchCustomers,
    RetrieveCustomer(String),
    UpdateCustomer(String),
    DeleteCustomer(String),
    CreateInvoiceItem,
    ListInvoiceItems,
    RetrieveInvoiceItem(String),
    CreateInvoice,
    ListInvoices,
    SearchInvoices,
    RetrieveInvoice(String),
    UpdateInvoice(String),
    DeleteInvoice(String),
    InvoiceAction(String, invoices::Action),
    ListInvoiceLines(String),
    ListEvents,
    RetrieveEvent(String),
}

impl Route {
    /// Matches a method and path; `None` is Stripe's "Unrecognized request URL".
    pub fn recognise(method: &str, path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let id = |s: &str| s.to_owned();
        Some(match (method, parts.as_slice()) {
            ("POST", ["v1", "customers"]) => Self::CreateCustomer,
            ("GET", ["v1", "customers"]) => Self::ListCustomers,
            ("GET", ["v1", "customers", "search"]) => Self::SearchCustomers,
            ("GET", ["v1", "customers", c]) => Self::RetrieveCustomer(id(c)),
            ("POST", ["v1", "customers", c]) => Self::UpdateCustomer(id(c)),
            ("DELETE", ["v1", "customers", c]) => Self::DeleteCustomer(id(c)),
            ("POST", ["v1", "invoiceitems"]) => Self::CreateInvoiceItem,
            ("GET", ["v1", "invoiceitems"]) => Self::ListInvoiceItems,
            ("GET", ["v1", "invoiceitems", i]) => Self::RetrieveInvoiceItem(id(i)),
            ("POST", ["v1", "invoices"]) => Self::CreateInvoice,
            ("GET", ["v1", "invoices"]) => Self::ListInvoices,
            ("GET", ["v1", "invoices", "search"]) => Self::SearchInvoices,
            ("GET", ["v1", "invoices", i]) => Self::RetrieveInvoice(id(i)),
            ("POST", ["v1", "invoices", i]) => Self::UpdateInvoice(id(i)),
            ("DELETE", ["v1", "invoices", i]) => Self::DeleteInvoice(id(i)),
            ("GET", ["v1", "invoices", i, "lines"]) => Self::ListInvoiceLines(id(i)),
            ("POST", ["v1", "invoices", i, action]) => {
                Self::InvoiceAction(id(i), invoices::Action::parse(action)?)
            }
            ("GET", ["v1", "events"]) => Self::ListEvents,
            ("GET", ["v1", "events", e]) => Self::RetrieveEvent(id(e)),
            _ => return None,
        })
    }

    /// Whether the endpoint changes anything (and so may fail after committing).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Self::ListCustomers
                | Self::SearchCustomers
                | Self::SearchInvoices
                | Self::RetrieveCustomer(_)
                | Self::ListInvoiceItems
                | Self::RetrieveInvoiceItem(_)
                | Self::ListInvoices
                | Self::RetrieveInvoice(_)
                | Self::ListInvoiceLines(_)
                | Self::ListEvents
                | Self::RetrieveEvent(_)
        )
    }

    /// Runs the endpoint: the body of a 200, or an error.
    pub fn execute(&self, store: &mut Store, p: &Params, cause: &Cause) -> Result<Value, ApiError> {
        match self {
            Self::CreateCustomer => customers::create(store, p, cause),
            Self::ListCustomers => customers::list(store, p),
            Self::SearchCustomers => search::customers(store, p),
            Self::RetrieveCustomer(id) => customers::retrieve(store, id, p),
            Self::UpdateCustomer(id) => customers::update(store, id, p, cause),
            Self::DeleteCustomer(id) => customers::delete(store, id, p, cause),
            Self::CreateInvoiceItem => invoices::create_item(store, p, cause),
            Self::ListInvoiceItems => invoices::list_items(store, p),
            Self::RetrieveInvoiceItem(id) => invoices::retrieve_item(store, id, p),
            Self::CreateInvoice => invoices::create(store, p, cause),
            Self::ListInvoices => invoices::list(store, p),
            Self::SearchInvoices => search::invoices(store, p),
            Self::RetrieveInvoice(id) => invoices::retrieve(store, id, p),
            Self::UpdateInvoice(id) => invoices::update(store, id, p, cause),
            Self::DeleteInvoice(id) => invoices::delete(store, id, p, cause),
            Self::InvoiceAction(id, action) => invoices::act(store, id, *action, p, cause),
            Self::ListInvoiceLines(id) => invoices::lines(store, id, p),
            Self::ListEvents => events::list(store, p),
            Self::RetrieveEvent(id) => events::retrieve(store, id, p),
        }
    }
}

/// A list's `limit`: 10 by default, 1 to 100.
pub fn page_limit(p: &Params) -> Result<usize, ApiError> {
    match p.int("limit")? {
        None => Ok(10),
        Some(n @ 1..=100) => Ok(n as usize),
        Some(_) => Err(
            ApiError::invalid("Invalid limit: must be an integer between 1 and 100").param("limit"),
        ),
    }
}

/// The one error for a list given both cursors.
pub fn both_cursors() -> ApiError {
    ApiError::invalid(
        "You may only specify one of these parameters: starting_after, ending_before.",
    )
}

/// One page of a newest-first list in Stripe's shape `{object, data, has_more, url}`.
///
/// The page starts at its cursor's position (found through the table's index, not by a
/// scan) and walks `scope`, keeping what `keep` accepts, until it has one object more than
/// `limit`; only the page's objects are rendered. So a page costs what it returns, not the
/// size of the list. A cursor is any object of the table, even one the filters leave out
/// (Stripe positions by the object); an unknown one is a 404 `resource_missing`.
/// `ending_before` gives the `limit` objects just newer than the cursor, still newest
/// first, with `has_more` telling whether newer ones remain.
pub fn page<'a, T>(
    table: &'a Table<T>,
    scope: Scope<'a>,
    keep: impl Fn(&T) -> bool,
    render: impl Fn(&T) -> Value,
    p: &Params,
    url: &str,
    resource: &str,
) -> Result<Value, ApiError> {
    let limit = page_limit(p)?;
    let position = |param: &str| -> Result<Option<i64>, ApiError> {
        match p.str(param)? {
            None => Ok(None),
            Some(cursor) => table
                .position(cursor)
                .map(Some)
                .ok_or_else(|| ApiError::no_such(resource, cursor, param)),
        }
    };
    let start = match (position("starting_after")?, position("ending_before")?) {
        (Some(_), Some(_)) => return Err(both_cursors()),
        (Some(after), None) => Start::OlderThan(after),
        (None, Some(before)) => Start::NewerThan(before),
        (None, None) => Start::Newest,
    };
    let mut items: Vec<&T> = table
        .walk(scope, start)
        .filter(|item| keep(item))
        .take(limit + 1)
        .collect();
    let has_more = items.len() > limit;
    items.truncate(limit);
    if let Start::NewerThan(_) = start {
        // Walked oldest first from the cursor; a page is newest first.
        items.reverse();
    }
    let data: Vec<Value> = items.into_iter().map(render).collect();
    Ok(json!({"object": "list", "data": data, "has_more": has_more, "url": url}))
}

/// The `created` filter: `created=N` or `created[gt|gte|lt|lte]=N`.
pub fn created_filter(p: &Params) -> Result<impl Fn(i64) -> bool, ApiError> {
    range_filter(p, "created")
}

/// A timestamp filter `name` (`name=t` or `name[gt|gte|lt|lte]=t`); no parameter keeps all.
pub fn range_filter(p: &Params, name: &str) -> Result<impl Fn(i64) -> bool, ApiError> {
    let invalid = |v: &str| {
        ApiError::invalid(format!("Invalid integer: {v}"))
            .code("parameter_invalid_integer")
            .param(name)
    };
    let mut bounds: Vec<(String, i64)> = Vec::new();
    match p.get(name) {
        None => {}
        Some(Param::Value(v)) => bounds.push(("eq".into(), v.parse().map_err(|_| invalid(v))?)),
        Some(Param::Hash(ops)) => {
            for (op, v) in ops {
                let Param::Value(v) = v else {
                    return Err(invalid("{...}"));
                };
                if !["gt", "gte", "lt", "lte"].contains(&op.as_str()) {
                    return Err(ApiError::unknown_parameter(&format!("{name}[{op}]")));
                }
                bounds.push((op.clone(), v.parse().map_err(|_| invalid(v))?));
            }
        }
    }
    Ok(move |t: i64| {
        bounds.iter().all(|(op, n)| match op.as_str() {
            "eq" => t == *n,
            "gt" => t > *n,
            "gte" => t >= *n,
            "lt" => t < *n,
            _ => t <= *n,
        })
    })
}

/// A metadata change: `metadata=` clears every key, `metadata[k]=` removes one.
pub enum MetadataUpdate {
    ClearAll,
    Keys(BTreeMap<String, Option<String>>),
}

/// Validates `metadata` against Stripe's limits (50 keys, 40-char keys, 500-char values).
pub fn metadata_param(p: &Params) -> Result<Option<MetadataUpdate>, ApiError> {
    match p.get("metadata") {
        None => Ok(None),
        Some(Param::Value(v)) if v.is_empty() => Ok(Some(MetadataUpdate::ClearAll)),
        Some(Param::Value(_)) => Err(ApiError::invalid("Invalid object").param("metadata")),
        Some(Param::Hash(map)) => {
            let mut keys = BTreeMap::new();
            for (k, v) in map {
                let Param::Value(v) = v else {
                    return Err(ApiError::invalid(format!(
                        "Invalid value for metadata[{k}]: nested objects are not allowed"
                    ))
                    .param(&format!("metadata[{k}]")));
                };
                if k.chars().count() > 40 {
                    return Err(ApiError::invalid(format!(
                        "Metadata keys can have up to 40 characters. You passed in a key \
                         with {} characters.",
                        k.chars().count()
                    ))
                    .param(&format!("metadata[{k}]")));
                }
                if v.chars().count() > 500 {
                    return Err(ApiError::invalid(
                        "Metadata values can have up to 500 characters.",
                    )
                    .param(&format!("metadata[{k}]")));
                }
                keys.insert(k.clone(), (!v.is_empty()).then(|| v.clone()));
            }
            Ok(Some(MetadataUpdate::Keys(keys)))
        }
    }
}

/// Applies a metadata change; returns the `previous_attributes.metadata` entries (old values
/// of changed keys, null for added ones), or an error past 50 keys.
pub fn apply_metadata(
    metadata: &mut BTreeMap<String, String>,
    update: MetadataUpdate,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut next = metadata.clone();
    match update {
        MetadataUpdate::ClearAll => next.clear(),
        MetadataUpdate::Keys(keys) => {
            for (k, v) in keys {
                match v {
                    Some(v) => next.insert(k, v),
                    None => next.remove(&k),
                };
            }
        }
    }
    if next.len() > 50 {
        return Err(ApiError::invalid(
            "You can have up to 50 metadata keys. Remove some keys before adding more.",
        )
        .param("metadata"));
    }
    let mut previous = serde_json::Map::new();
    for k in metadata.keys().chain(next.keys()) {
        if metadata.get(k) != next.get(k) {
            previous.insert(k.clone(), json!(metadata.get(k)));
        }
    }
    *metadata = next;
    Ok(previous)
}

/// A nullable string parameter: absent is `None`, empty unsets (`Some(None)`).
pub fn nullable(p: &Params, name: &str) -> Result<Option<Option<String>>, ApiError> {
    Ok(p.str(name)?.map(|v| (!v.is_empty()).then(|| v.to_owned())))
}
