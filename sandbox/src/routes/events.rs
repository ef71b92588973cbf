//! `/v1/events`: retrieve and list with `type` (with `*` wildcards), `types`, `created`,
//! `delivery_success` and pagination.

use serde_json::Value;

use super::{created_filter, page};
use crate::error::ApiError;
use crate::form::Params;
use crate::store::{Scope, Store};

/// `customer.*` matches `customer.created`; `*` matches any run of characters.
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

pub fn retrieve(store: &Store, id: &str, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["expand"])?;
    store
        .events
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::no_such("event", id, "id"))
}

pub fn list(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&[
        "limit",
        "starting_after",
        "ending_before",
        "type",
        "types",
        "created",
        "delivery_success",
        "expand",
    ])?;
    let kind = p.str("type")?;
    let kinds = p.list("types")?;
    if kind.is_some() && kinds.is_some() {
        return Err(ApiError::invalid(
            "You may only specify one of these parameters: type, types.",
        ));
    }
    if kinds.as_ref().is_some_and(|k| k.len() > 20) {
        return Err(ApiError::invalid("You may pass at most 20 types.").param("types"));
    }
    let delivered = p.bool("delivery_success")?;
    let created = created_filter(p)?;
    let keep = |e: &Value| {
        let t = e["type"].as_str().unwrap_or_default();
        kind.is_none_or(|k| wildcard(k, t))
            && kinds.as_ref().is_none_or(|ks| ks.iter().any(|k| k == t))
            && delivered.is_none_or(|d| d == (e["pending_webhooks"] == 0))
            && created(e["created"].as_i64().unwrap_or_default())
    };
    page(
        &store.events,
        Scope::All,
        keep,
        Value::clone,
        p,
        "/v1/events",
        "event",
    )
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard("customer.*", "customer.created"));
        assert!(wildcard("*.created", "invoice.created"));
        assert!(wildcard("*", "anything"));
        assert!(!wildcard("customer.*", "invoice.created"));
        assert!(!wildcard("customer.created", "customer.created.x"));
        assert!(wildcard("invoice.*ed", "invoice.finalized"));
    }
}
