//! Salesforce mode: a faithful subset of the REST API for Contacts keyed by an external id
//! (README "Connecting Salesforce"): the client-credentials token endpoint, upsert
//! (201 created / 200 updated) and delete (204 / 404) by external id, Salesforce's error
//! arrays, `Sforce-Limit-Info`, and tokens that can be expired on demand.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// The external id field the sandbox's describe names (the default of
/// `SALESFORCE_EXTERNAL_ID_FIELD`).
pub const EXTERNAL_ID_FIELD: &str = "Customer_Id__c";

/// The client id and secret the sandbox accepts.
pub const CLIENT_ID: &str = "sandbox-client-id";
/// The client secret the sandbox accepts.
pub const CLIENT_SECRET: &str = "sandbox-client-secret";

/// A Contact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Salesforce id (`003...`).
    pub id: String,
    /// The external id (our customer id).
    pub external_id: String,
    pub first_name: Option<String>,
    pub last_name: String,
    pub email: Option<String>,
    /// In the recycle bin.
    pub deleted: bool,
}

/// The Salesforce org's state.
#[derive(Default)]
pub struct SalesforceState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    contacts: BTreeMap<String, Contact>,
    /// A Contact to create right after the next read by external id is answered, as a
    /// concurrent writer would (tests of the race between a look-up and an upsert).
    after_next_lookup: Option<(String, String)>,
    /// The external id field matches values ignoring case (Salesforce's default for a
    /// unique text field; README "Connecting Salesforce" says to tick "case sensitive").
    case_insensitive: bool,
    tokens: HashSet<String>,
    /// The last Contact id's number; 0 until the first Contact.
    next_id: u64,
    api_calls: u64,
    tokens_issued: u64,
    fail_next: Vec<(u16, String, String)>,
    calls: Vec<(String, String, u16)>,
}

impl SalesforceState {
    /// Every contact, deleted ones included, in external-id order.
    pub fn contacts(&self) -> Vec<Contact> {
        self.inner
            .lock()
            .unwrap()
            .contacts
            .values()
            .cloned()
            .collect()
    }

    /// Makes the external id field match values ignoring case, as an org that left
    /// "case sensitive" unticked does; the contacts keep the value first written.
    pub fn set_case_insensitive(&self, insensitive: bool) {
        self.inner.lock().unwrap().case_insensitive = insensitive;
    }

    /// Creates a Contact (`external_id`, `last_name`) right after the next read by
    /// external id is answered, as another writer between a look-up and an upsert would.
    pub fn create_after_next_lookup(&self, external_id: &str, last_name: &str) {
        self.inner.lock().unwrap().after_next_lookup =
            Some((external_id.to_owned(), last_name.to_owned()));
    }

    /// Invalidates every issued token: the next call gets 401 `INVALID_SESSION_ID`.
    pub fn expire_tokens(&self) {
        self.inner.lock().unwrap().tokens.clear();
    }

    /// Sets today's API call count, as `Sforce-Limit-Info` reports it (of 15,000).
    pub fn set_api_calls(&self, calls: u64) {
        self.inner.lock().unwrap().api_calls = calls;
    }

    /// How many tokens were issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.inner.lock().unwrap().tokens_issued
    }

    /// Answers the next `count` sObject calls with this error instead of executing them.
    pub fn fail_next(&self, status: u16, code: &str, message: &str, count: usize) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..count {
            inner
                .fail_next
                .push((status, code.to_owned(), message.to_owned()));
        }
    }

    /// (method, path, status) of every sObject call.
    pub fn calls(&self) -> Vec<(String, String, u16)> {
        self.inner.lock().unwrap().calls.clone()
    }
}

fn errors(status: u16, code: &str, message: &str, fields: &[&str]) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!([{"message": message, "errorCode": code, "fields": fields}]))
}

impl Inner {
    /// A new Contact id (`003SB` and 13 digits). The numbers start at a random point, so
    /// that ids stay unique across sandbox processes, as Salesforce's are: a second
    /// `cargo run` keeps the database of the first, and its links name the first run's
    /// Contacts.
    fn new_contact_id(&mut self) -> String {
        if self.next_id == 0 {
            self.next_id = rand::Rng::gen_range(&mut rand::thread_rng(), 1..9_000_000_000_000);
        }
        self.next_id += 1;
        format!("003SB{:013}", self.next_id)
    }

    /// The key of the contact the external id `value` matches: exactly, or ignoring case
    /// when the field is case insensitive (a live contact first, as upsert matches).
    fn matching(&self, value: &str) -> Option<String> {
        if self.contacts.contains_key(value) || !self.case_insensitive {
            return self.contacts.contains_key(value).then(|| value.to_owned());
        }
        let mut candidates = self
            .contacts
            .values()
            .filter(|c| c.external_id.eq_ignore_ascii_case(value));
        let first = candidates.clone().find(|c| !c.deleted);
        first
            .or_else(|| candidates.next())
            .map(|c| c.external_id.clone())
    }
}

/// Registers the Salesforce routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services/oauth2/token", web::post().to(token))
        .route(
            "/services/data/{version}/sobjects/Contact/describe",
            web::get().to(describe),
        )
        .route(
            "/services/data/{version}/sobjects/Contact/describe/",
            web::get().to(describe),
        )
        .route(
            "/services/data/{version}/sobjects/Contact/{field}/{value}",
            web::get().to(get_by_external_id),
        )
        .route(
            "/services/data/{version}/sobjects/Contact/{field}/{value}",
            web::patch().to(upsert),
        )
        .route(
            "/services/data/{version}/sobjects/Contact/{field}/{value}",
            web::delete().to(delete),
        );
}

async fn token(
    state: web::Data<Arc<SalesforceState>>,
    req: HttpRequest,
    form: web::Bytes,
) -> HttpResponse {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&form).unwrap_or_default();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if get("grant_type") != Some("client_credentials") {
        return HttpResponse::BadRequest().json(
            json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}),
        );
    }
    if get("client_id") != Some(CLIENT_ID) || get("client_secret") != Some(CLIENT_SECRET) {
        return HttpResponse::BadRequest().json(
            json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        );
    }
    let mut inner = state.inner.lock().unwrap();
    inner.tokens_issued += 1;
    let access_token = format!("00Dsandbox!{}", uuid::Uuid::new_v4().simple());
    inner.tokens.insert(access_token.clone());
    let instance_url = format!("http://{}", req.connection_info().host().to_owned());
    let issued_at = chrono::Utc::now().timestamp_millis().to_string();
    HttpResponse::Ok().json(json!({
        "access_token": access_token,
        "instance_url": instance_url,
        "id": format!("{instance_url}/id/00Dsandbox/005sandbox"),
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": "sandbox",
        "scope": "api"
    }))
}

/// Checks the bearer token and the injected failures; `Err` is the response to send.
#[allow(clippy::result_large_err)] // an early answer, built once per call
fn admit(state: &SalesforceState, req: &HttpRequest) -> Result<(), HttpResponse> {
    let mut inner = state.inner.lock().unwrap();
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| inner.tokens.contains(t)) {
        return Err(errors(
            401,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
            &[],
        ));
    }
    inner.api_calls += 1;
    if !inner.fail_next.is_empty() {
        let (status, code, message) = inner.fail_next.remove(0);
        return Err(errors(status, &code, &message, &[]));
    }
    Ok(())
}

/// Answers an sObject call: the token and injected failures first, then `answer` on the
/// org's state (locked while it runs); every answer is recorded and carries
/// `Sforce-Limit-Info`.
fn respond(
    state: &SalesforceState,
    req: &HttpRequest,
    answer: impl FnOnce(&mut Inner) -> HttpResponse,
) -> HttpResponse {
    let response = match admit(state, req) {
        Err(refused) => refused,
        Ok(()) => answer(&mut state.inner.lock().unwrap()),
    };
    with_limit(state, req, response)
}

fn limit_info(state: &SalesforceState) -> String {
    format!("api-usage={}/15000", state.inner.lock().unwrap().api_calls)
}

fn record(state: &SalesforceState, req: &HttpRequest, status: u16) {
    state.inner.lock().unwrap().calls.push((
        req.method().to_string(),
        req.path().to_owned(),
        status,
    ));
}

fn with_limit(state: &SalesforceState, req: &HttpRequest, response: HttpResponse) -> HttpResponse {
    record(state, req, response.status().as_u16());
    let mut response = response;
    if let Ok(value) = limit_info(state).parse() {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("sforce-limit-info"),
            value,
        );
    }
    response
}

async fn upsert(
    state: web::Data<Arc<SalesforceState>>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (_, _, external_id) = path.into_inner();
    respond(&state, &req, |inner| {
        let Ok(fields @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
            return errors(
                400,
                "JSON_PARSER_ERROR",
                "The request body is not a JSON object",
                &[],
            );
        };
        let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
        let last_name = text("LastName").filter(|l| !l.trim().is_empty());
        let missing_last_name = || {
            errors(
                400,
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [LastName]",
                &["LastName"],
            )
        };
        let existing = inner
            .matching(&external_id)
            .and_then(|key| inner.contacts.get(&key))
            .filter(|c| !c.deleted)
            .cloned();
        match (existing, last_name) {
            (None, None) => missing_last_name(),
            (None, Some(last)) => {
                let id = inner.new_contact_id();
                inner.contacts.insert(
                    external_id.clone(),
                    Contact {
                        id: id.clone(),
                        external_id,
                        first_name: text("FirstName"),
                        last_name: last,
                        email: text("Email"),
                        deleted: false,
                    },
                );
                HttpResponse::Created()
                    .json(json!({"id": id, "success": true, "errors": [], "created": true}))
            }
            (Some(_), None) if fields.get("LastName").is_some() => missing_last_name(),
            (Some(mut contact), last) => {
                if let Some(last) = last {
                    contact.last_name = last;
                }
                if fields.get("FirstName").is_some() {
                    contact.first_name = text("FirstName");
                }
                if fields.get("Email").is_some() {
                    contact.email = text("Email");
                }
                let id = contact.id.clone();
                // The contact keeps the external id it was created with.
                inner.contacts.insert(contact.external_id.clone(), contact);
                HttpResponse::Ok()
                    .json(json!({"id": id, "success": true, "errors": [], "created": false}))
            }
        }
    })
}

async fn delete(
    state: web::Data<Arc<SalesforceState>>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (_, _, external_id) = path.into_inner();
    respond(&state, &req, |inner| {
        let key = inner.matching(&external_id).unwrap_or(external_id);
        match inner.contacts.get_mut(&key) {
            Some(contact) if contact.deleted => {
                errors(400, "ENTITY_IS_DELETED", "entity is deleted", &[])
            }
            Some(contact) => {
                contact.deleted = true;
                HttpResponse::NoContent().finish()
            }
            None => errors(
                404,
                "NOT_FOUND",
                "Provided external ID field does not exist or is not accessible",
                &[],
            ),
        }
    })
}

/// `GET .../sobjects/Contact/describe`: the fields that matter to an upsert by external
/// id, the external id field's `caseSensitive` as this org is set up.
async fn describe(state: web::Data<Arc<SalesforceState>>, req: HttpRequest) -> HttpResponse {
    respond(&state, &req, |inner| {
        let field = |name: &str, external: bool, case_sensitive: bool| {
            json!({"name": name, "type": if name == "Id" { "id" } else { "string" },
                   "externalId": external, "unique": external, "caseSensitive": case_sensitive,
                   "idLookup": external || name == "Id"})
        };
        HttpResponse::Ok().json(json!({
            "name": "Contact",
            "fields": [
                field("Id", false, false),
                field("FirstName", false, false),
                field("LastName", false, false),
                field("Email", false, false),
                field(EXTERNAL_ID_FIELD, true, !inner.case_insensitive),
            ]
        }))
    })
}

/// `GET .../sobjects/Contact/{field}/{value}`: the live contact the external id matches.
async fn get_by_external_id(
    state: web::Data<Arc<SalesforceState>>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (_, field, value) = path.into_inner();
    respond(&state, &req, |inner| {
        let contact = inner
            .matching(&value)
            .and_then(|key| inner.contacts.get(&key))
            .filter(|c| !c.deleted);
        let answer = match contact {
            Some(c) => HttpResponse::Ok().json(json!({
                "attributes": {"type": "Contact", "url": format!("/services/data/v60.0/sobjects/Contact/{}", c.id)},
                "Id": c.id, field: c.external_id, "FirstName": c.first_name,
                "LastName": c.last_name, "Email": c.email
            })),
            None => errors(
                404,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ),
        };
        if let Some((external_id, last_name)) = inner.after_next_lookup.take() {
            let id = inner.new_contact_id();
            inner.contacts.insert(
                external_id.clone(),
                Contact {
                    id,
                    external_id,
                    first_name: None,
                    last_name,
                    email: None,
                    deleted: false,
                },
            );
        }
        answer
    })
}
