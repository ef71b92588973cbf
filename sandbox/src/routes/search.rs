//! Stripe's search, `GET /v1/customers/search` and `GET /v1/invoices/search`, with the
//! part of its query language that matters here: `field:value` (exact, ignoring case),
//! `field~value` (contains, ignoring case, at least 3 characters), `-` to negate a clause,
//! `metadata['key']:value`, and clauses joined by `AND` or by `OR` (not both), at most 10.
//! Values are quoted with `"` or `'`, or bare words. Results are newest first, a page of
//! `limit` at a time, continued with `page` set to the previous `next_page`. A customer
//! shows in search `--search-delay-ms` after it was created or changed (Stripe's search
//! lags its writes by up to a minute); until then it is not found at all.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::form::Params;
use crate::store::{Customer, Invoice, Scope, Start, Store, Table};

/// The most clauses a query may have (Stripe's limit).
const MAX_CLAUSES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Named(String),
    Metadata(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    negated: bool,
    field: Field,
    contains: bool,
    value: String,
}

/// A parsed query: its clauses, and whether any (OR) or all (AND) must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    clauses: Vec<Clause>,
    any: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).param("query")
}

/// Reads a quoted or bare value at the start of `rest`; answers it and what follows.
fn value(rest: &str) -> Result<(String, &str), ApiError> {
    match rest.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let body = &rest[1..];
            let end = body
                .find(quote)
                .ok_or_else(|| invalid("Invalid query: a quoted value is not closed"))?;
            Ok((body[..end].to_owned(), &body[end + 1..]))
        }
        Some(_) => {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            Ok((rest[..end].to_owned(), &rest[end..]))
        }
        None => Err(invalid("Invalid query: a clause has no value")),
    }
}

fn parse(query: &str, fields: &[&str], resource: &str) -> Result<Query, ApiError> {
    let mut rest = query.trim();
    if rest.is_empty() {
        return Err(invalid("Invalid query: the query is empty"));
    }
    let mut clauses = Vec::new();
    let mut joiner: Option<&str> = None;
    loop {
        let negated = rest.starts_with('-');
        if negated {
            rest = &rest[1..];
        }
        let (field, after) = if let Some(after) = rest.strip_prefix("metadata[") {
            let (key, after) = value(after)?;
            let after = after
                .strip_prefix(']')
                .ok_or_else(|| invalid("Invalid query: metadata['key'] is not closed"))?;
            (Field::Metadata(key), after)
        } else {
            let end = rest
                .find([':', '~'])
                .ok_or_else(|| invalid(format!("Invalid query: no `:` or `~` in {rest:?}")))?;
            let name = &rest[..end];
            if !fields.contains(&name) {
                return Err(invalid(format!(
                    "Field `{name}` is an unsupported search field for resource `{resource}`. \
                     See https://stripe.com/docs/search#query-fields-for-{resource} for a \
                     list of supported fields."
                )));
            }
            (Field::Named(name.to_owned()), &rest[end..])
        };
        let contains = after.starts_with('~');
        let after = after
            .strip_prefix([':', '~'])
            .ok_or_else(|| invalid("Invalid query: expected `:` or `~` after the field"))?;
        let (value, after) = value(after)?;
        if contains && value.chars().count() < 3 {
            return Err(invalid(
                "Invalid query: a substring match (`~`) needs at least 3 characters",
            ));
        }
        clauses.push(Clause {
            negated,
            field,
            contains,
            value,
        });
        if clauses.len() > MAX_CLAUSES {
            return Err(invalid(format!(
                "Invalid query: at most {MAX_CLAUSES} clauses are allowed"
            )));
        }
        rest = after.trim_start();
        if rest.is_empty() {
            break;
        }
        let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if word != "AND" && word != "OR" {
            return Err(invalid(format!(
                "Invalid query: expected AND or OR between clauses, found {word:?}"
            )));
        }
        if joiner.is_some_and(|j| j != word) {
            return Err(invalid(
                "Invalid query: AND and OR cannot be combined in one query",
            ));
        }
        joiner = Some(word);
        rest = after.trim_start();
    }
    Ok(Query {
        clauses,
        any: joiner == Some("OR"),
    })
}

impl Query {
    /// Whether an object whose field values `get` answers satisfies the query.
    fn matches(&self, get: impl Fn(&Field) -> Option<String>) -> bool {
        let holds = |clause: &Clause| {
            let found = get(&clause.field).is_some_and(|actual| {
                let (actual, wanted) = (actual.to_lowercase(), clause.value.to_lowercase());
                if clause.contains {
                    actual.contains(&wanted)
                } else {
                    actual == wanted
                }
            });
            found != clause.negated
        };
        if self.any {
            self.clauses.iter().any(holds)
        } else {
            self.clauses.iter().all(holds)
        }
    }
}

/// One page of results in Stripe's `search_result` shape.
fn results<'a, T: 'a>(
    table: &'a Table<T>,
    p: &Params,
    url: &str,
    id_of: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
    render: impl Fn(&T) -> Value,
) -> Result<Value, ApiError> {
    let limit = super::page_limit(p)?;
    let start = match p.str("page")? {
        None => Start::Newest,
        Some(page) => page
            .strip_prefix("page_")
            .and_then(|id| table.position(id))
            .map(Start::OlderThan)
            .ok_or_else(|| ApiError::invalid("Invalid page: not a page token").param("page"))?,
    };
    let mut found: Vec<&T> = table
        .walk(Scope::All, start)
        .filter(|item| keep(item))
        .take(limit + 1)
        .collect();
    let has_more = found.len() > limit;
    found.truncate(limit);
    let mut answer = json!({
        "object": "search_result",
        "data": found.iter().map(|item| render(item)).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_page": has_more
            .then(|| found.last().map(|last| format!("page_{}", id_of(last))))
            .flatten(),
        "url": url,
    });
    let expand = p.list("expand")?.unwrap_or_default();
    if let Some(other) = expand.iter().find(|e| *e != "total_count") {
        return Err(
            ApiError::invalid(format!("This property cannot be expanded ({other}).",))
                .param("expand"),
        );
    }
    if !expand.is_empty() {
        answer["total_count"] = json!(table
            .walk(Scope::All, Start::Newest)
            .filter(|i| keep(i))
            .count());
    }
    Ok(answer)
}

/// `GET /v1/customers/search`: live customers by `email`, `name`, `phone` and metadata.
pub fn customers(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["query", "limit", "page", "expand"])?;
    let query = parse(
        p.required("query")?,
        &["email", "name", "phone"],
        "customers",
    )?;
    let field = |c: &Customer, f: &Field| match f {
        Field::Named(name) => match name.as_str() {
            "email" => c.email.clone(),
            "name" => c.name.clone(),
            _ => c.phone.clone(),
        },
        Field::Metadata(key) => c.metadata.get(key).cloned(),
    };
    results(
        &store.customers,
        p,
        "/v1/customers/search",
        |c| &c.id,
        |c| {
            !c.deleted
                && c.written_at.elapsed() >= store.search_delay
                && query.matches(|f| field(c, f))
        },
        Customer::to_json,
    )
}

/// `GET /v1/invoices/search`: invoices by `customer`, `status`, `number`, `currency` and
/// metadata.
pub fn invoices(store: &Store, p: &Params) -> Result<Value, ApiError> {
    p.allow(&["query", "limit", "page", "expand"])?;
    let query = parse(
        p.required("query")?,
        &["customer", "status", "number", "currency"],
        "invoices",
    )?;
    let field = |i: &Invoice, f: &Field| match f {
        Field::Named(name) => match name.as_str() {
            "customer" => Some(i.customer.clone()),
            "status" => Some(i.status.as_str().to_owned()),
            "number" => i.number.clone(),
            _ => Some(i.currency.clone()),
        },
        Field::Metadata(key) => i.metadata.get(key).cloned(),
    };
    results(
        &store.invoices,
        p,
        "/v1/invoices/search",
        |i| &i.id,
        |i| query.matches(|f| field(i, f)),
        |i| i.to_json(store),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(negated: bool, field: Field, contains: bool, value: &str) -> Clause {
        Clause {
            negated,
            field,
            contains,
            value: value.into(),
        }
    }

    #[test]
    fn queries_parse_into_clauses_joined_by_and_or_or() {
        let fields = &["email", "name"];
        let q = parse(
            "email:'ada@example.com' AND -name~\"Love\" AND metadata['customer_sync_id']:c-1",
            fields,
            "customers",
        )
        .unwrap();
        assert!(!q.any);
        assert_eq!(
            q.clauses,
            [
                clause(
                    false,
                    Field::Named("email".into()),
                    false,
                    "ada@example.com"
                ),
                clause(true, Field::Named("name".into()), true, "Love"),
                clause(
                    false,
                    Field::Metadata("customer_sync_id".into()),
                    false,
                    "c-1"
                ),
            ]
        );
        assert!(parse("name:a OR name:b", fields, "customers").unwrap().any);
        for bad in [
            "",
            "name",
            "name:'open",
            "name:a AND name:b OR name:c",
            "name:a name:b",
            "phone:1",
            "name~ab",
            "metadata['k':v",
        ] {
            assert!(parse(bad, fields, "customers").is_err(), "{bad:?}");
        }
        let many = ["name:a"; 11].join(" AND ");
        assert!(parse(&many, fields, "customers").is_err());
    }

    #[test]
    fn matching_ignores_case_and_honours_negation() {
        let q = parse(
            "name~love AND -email:x@y.z",
            &["name", "email"],
            "customers",
        )
        .unwrap();
        let get = |name: &str, email: &str| {
            let (name, email) = (name.to_owned(), email.to_owned());
            move |f: &Field| match f {
                Field::Named(n) if n == "name" => Some(name.clone()),
                Field::Named(_) => Some(email.clone()),
                Field::Metadata(_) => None,
            }
        };
        assert!(q.matches(get("Ada LOVELACE", "a@b.c")));
        assert!(!q.matches(get("Ada Lovelace", "X@Y.Z")));
        assert!(!q.matches(get("Grace", "a@b.c")));
    }
}
