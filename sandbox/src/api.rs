//! What every Stripe endpoint shares, in Stripe's order: `Request-Id`, authentication, the
//! rate limiter, injected failures, parameter parsing, the idempotency layer, latency,
//! execution, and failures after commit. Then the routes in `routes/` do the work.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;

use crate::error::ApiError;
use crate::form::Params;
use crate::routes::Route;
use crate::store::{new_id, Cause, Store};
use crate::webhooks::Outbox;
use shared::stripe::API_VERSION;

/// One API request as the sandbox answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub status: u16,
    /// Answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The `Request-Id` header sent back.
    pub request_id: String,
    /// The query and form parameters, in the order sent.
    pub params: Vec<(String, String)>,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
}

/// The knobs a test may turn while the sandbox runs, and the generator they draw from.
pub struct Knobs {
    pub latency_ms: u64,
    pub fail_rate: f64,
    pub fail_after_commit_rate: f64,
    pub fail_next: VecDeque<ApiError>,
    pub rng: StdRng,
    bucket: Option<TokenBucket>,
}

impl Knobs {
    pub fn new(config: &crate::SandboxConfig, rng: StdRng) -> Self {
        Self {
            latency_ms: config.latency_ms,
            fail_rate: config.fail_rate,
            fail_after_commit_rate: config.fail_after_commit_rate,
            fail_next: VecDeque::new(),
            rng,
            bucket: config.max_rps.map(TokenBucket::new),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }
}

/// `max_rps` tokens, refilled continuously; a burst of `max_rps` is allowed.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rps: u32) -> Self {
        Self {
            rate: f64::from(rps.max(1)),
            tokens: f64::from(rps.max(1)),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long an idempotency key's answer is kept.
const KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A response as stored under an idempotency key.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    request_id: String,
}

enum KeyState {
    Executing,
    Done {
        fingerprint: String,
        answer: Answer,
        at: Instant,
    },
}

/// Everything the handlers share.
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub knobs: Mutex<Knobs>,
    keys: Mutex<HashMap<String, KeyState>>,
    pub log: Mutex<Vec<RequestRecord>>,
    /// The webhook queue; none without a webhook URL.
    pub outbox: Option<Arc<Outbox>>,
    started: Instant,
}

impl Shared {
    pub fn new(store: Arc<Mutex<Store>>, knobs: Knobs, outbox: Option<Arc<Outbox>>) -> Self {
        Self {
            store,
            knobs: Mutex::new(knobs),
            keys: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            outbox,
            started: Instant::now(),
        }
    }

    /// Forgets every stored idempotency key's answer, as if 24 hours had passed: a key
    /// sent again starts a new request. Keys of requests still running are kept. Returns
    /// how many were forgotten.
    pub fn expire_idempotency_keys(&self) -> usize {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let before = keys.len();
        keys.retain(|_, state| !matches!(state, KeyState::Done { .. }));
        before - keys.len()
    }

    pub fn pending_deliveries(&self) -> usize {
        self.outbox.as_ref().map_or(0, |outbox| outbox.pending())
    }
}

/// Forgets a key still marked as executing if the request never finished (a dropped
/// connection), so that it does not answer 409 for ever.
struct ExecutingGuard<'a> {
    keys: &'a Mutex<HashMap<String, KeyState>>,
    key: Option<String>,
}

impl ExecutingGuard<'_> {
    fn finish(mut self, fingerprint: String, answer: Option<Answer>) {
        if let Some(key) = self.key.take() {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            match answer {
                Some(answer) => {
                    let at = Instant::now();
                    keys.insert(
                        key,
                        KeyState::Done {
                            fingerprint,
                            answer,
                            at,
                        },
                    );
                }
                None => {
                    keys.remove(&key);
                }
            }
        }
    }
}

impl Drop for ExecutingGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(keys.get(&key), Some(KeyState::Executing)) {
                keys.remove(&key);
            }
        }
    }
}

/// The API versions Stripe released since 2022-11-15, as the official SDKs pinned them
/// (stripe-node 11 to 23). Older ones are plain dates the sandbox cannot list, so any real
/// date before these is accepted.
const RELEASED_VERSIONS: &[&str] = &[
    "2022-11-15",
    "2023-08-16",
    "2023-10-16",
    "2024-04-10",
    "2024-06-20",
    "2024-09-30.acacia",
    "2024-10-28.acacia",
    "2024-11-20.acacia",
    "2024-12-18.acacia",
    "2025-01-27.acacia",
    "2025-02-24.acacia",
    "2025-03-31.basil",
    "2025-04-30.basil",
    "2025-05-28.basil",
    "2025-06-30.basil",
    "2025-07-30.basil",
    "2025-08-27.basil",
    "2025-09-30.clover",
    "2025-10-29.clover",
    "2025-11-17.clover",
    "2025-12-15.clover",
    "2026-01-28.clover",
    "2026-02-25.clover",
    "2026-03-25.dahlia",
    "2026-04-22.dahlia",
    "2026-05-27.dahlia",
    "2026-06-24.dahlia",
    "2026-07-29.dahlia",
    "2026-08-26.dahlia",
    "2026-09-30.endive",
    "2026-10-28.endive",
    "2026-11-18.endive",
];

/// A `Stripe-Version` Stripe never released is refused, as Stripe refuses it; without the
/// header the account's default applies.
fn known_version(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(header) = req.headers().get("stripe-version") else {
        return Ok(());
    };
    let version = header.to_str().unwrap_or_default();
    let before_the_list = chrono::NaiveDate::parse_from_str(version, "%Y-%m-%d")
        .is_ok_and(|d| d.to_string() == version && version < RELEASED_VERSIONS[0]);
    if RELEASED_VERSIONS.contains(&version) || before_the_list {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "Invalid Stripe API version: {}",
        String::from_utf8_lossy(header.as_bytes())
    )))
}

/// The key from `Authorization: Bearer sk_test_...` or HTTP Basic with the key as username.
fn authenticate(req: &HttpRequest) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let key = if let Some(token) = header.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(encoded) = header.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        decoded.split(':').next().unwrap_or_default().to_owned()
    } else {
        String::new()
    };
    if key.is_empty() {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, \
             or we can help at https://support.stripe.com/.",
        ));
    }
    let valid = ["sk_test_", "rk_test_"].iter().any(|prefix| {
        key.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    });
    if !valid {
        let tail: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let head: String = key.chars().take(8).collect();
        return Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: {head}****{tail}"
        )));
    }
    Ok(())
}

/// Query string and (for POST) the form body, merged.
pub fn parameters(req: &HttpRequest, body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let unparsable = || ApiError::invalid("Invalid request: the parameters could not be parsed.");
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).map_err(|_| unparsable())?;
    if !body.is_empty() {
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(ApiError::invalid(format!(
                "Invalid request: unsupported Content-Type {content_type}. If error persists \
                 and you need assistance, please contact support@stripe.com."
            )));
        }
        let form: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|_| unparsable())?;
        pairs.extend(form);
    }
    Ok(pairs)
}

async fn pad(started: Instant, latency: Duration) {
    let elapsed = started.elapsed();
    if elapsed < latency {
        tokio::time::sleep(latency - elapsed).await;
    }
}

/// The outcome of one request before it becomes an HTTP response.
struct Outcome {
    status: u16,
    body: Value,
    request_id: String,
    replayed: bool,
    params: Vec<(String, String)>,
}

impl Outcome {
    fn error(error: &ApiError, request_id: &str) -> Self {
        Self {
            status: error.status,
            body: error.body(),
            request_id: request_id.to_owned(),
            replayed: false,
            params: Vec::new(),
        }
    }
}

/// The one handler behind every Stripe URL.
pub async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = new_id(&mut rand::thread_rng(), "req", 14);
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let sent_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // On GET and DELETE a key has no effect (it is still logged, as sent).
    let key = sent_key.clone().filter(|_| method == "POST");
    let latency = Duration::from_millis(
        shared
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latency_ms,
    );
    let outcome = process(
        &shared,
        &req,
        &body,
        &method,
        &path,
        key.as_deref(),
        &request_id,
        started,
        latency,
    )
    .await;
    pad(started, latency).await;

    tracing::debug!(%method, %path, status = outcome.status, replayed = outcome.replayed,
        request_id = %outcome.request_id, "stripe request");
    shared
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RequestRecord {
            method,
            path,
            idempotency_key: sent_key,
            status: outcome.status,
            replayed: outcome.replayed,
            request_id: outcome.request_id.clone(),
            params: outcome.params,
            at_ms: shared.started.elapsed().as_millis() as u64,
        });

    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response
        .insert_header(("Request-Id", outcome.request_id.as_str()))
        .insert_header((
            "Stripe-Version",
            req.headers()
                .get("stripe-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(API_VERSION),
        ))
        .content_type("application/json");
    if let Some(key) = &key {
        response
            .insert_header(("Idempotency-Key", key.as_str()))
            .insert_header(("Original-Request", outcome.request_id.as_str()));
    }
    if outcome.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    if outcome.status == 401 {
        response.insert_header(("WWW-Authenticate", "Bearer realm=\"Stripe\""));
    }
    response.body(serde_json::to_string_pretty(&outcome.body).expect("JSON serialises"))
}

#[allow(clippy::too_many_arguments)]
async fn process(
    shared: &Shared,
    req: &HttpRequest,
    body: &[u8],
    method: &str,
    path: &str,
    key: Option<&str>,
    request_id: &str,
    started: Instant,
    latency: Duration,
) -> Outcome {
    // Before execution: nothing here is stored under the key, so a retry may reuse it.
    if let Err(e) = authenticate(req).and_then(|()| known_version(req)) {
        return Outcome::error(&e, request_id);
    }
    {
        let mut knobs = shared.knobs.lock().unwrap_or_else(PoisonError::into_inner);
        if knobs.bucket.as_mut().is_some_and(|b| !b.take()) {
            return Outcome::error(&ApiError::rate_limited(), request_id);
        }
        let fail_rate = knobs.fail_rate;
        if knobs.chance(fail_rate) {
            return Outcome::error(&ApiError::unknown(), request_id);
        }
        if let Some(e) = knobs.fail_next.pop_front() {
            return Outcome::error(&e, request_id);
        }
    }
    let pairs = match parameters(req, body) {
        Ok(pairs) => pairs,
        Err(e) => return Outcome::error(&e, request_id),
    };
    let params = match Params::parse(pairs.clone()) {
        Ok(p) => p,
        Err(e) => return Outcome::error(&e, request_id),
    };
    let with_params = |mut o: Outcome| {
        o.params = pairs.clone();
        o
    };
    let Some(route) = Route::recognise(method, path) else {
        let e = ApiError::invalid(format!(
            "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
             or we can help at https://support.stripe.com/."
        ))
        .status(404);
        return with_params(Outcome::error(&e, request_id));
    };

    // The idempotency layer: replay, refuse a mismatch, or mark the key as executing.
    let fingerprint = format!("{method} {path}?{}", params.fingerprint());
    let mut guard = ExecutingGuard {
        keys: &shared.keys,
        key: None,
    };
    if let Some(key) = key {
        if key.len() > 255 {
            let e = ApiError::invalid(
                "Invalid Idempotency-Key: the key must be at most 255 characters long.",
            );
            return with_params(Outcome::error(&e, request_id));
        }
        let mut keys = shared.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Stripe prunes keys after 24 hours; a reused key then starts a new request.
        if matches!(keys.get(key), Some(KeyState::Done { at, .. }) if at.elapsed() > KEY_TTL) {
            keys.remove(key);
        }
        match keys.get(key) {
            Some(KeyState::Done {
                fingerprint: stored,
                answer,
                ..
            }) if *stored == fingerprint => {
                return with_params(Outcome {
                    status: answer.status,
                    body: answer.body.clone(),
                    request_id: answer.request_id.clone(),
                    replayed: true,
                    params: Vec::new(),
                });
            }
            Some(KeyState::Done {
                fingerprint: stored,
                ..
            }) => {
                let e = mismatch(key, stored, &fingerprint);
                return with_params(Outcome::error(&e, request_id));
            }
            Some(KeyState::Executing) => {
                let e = ApiError::idempotency(
                    409,
                    "There is currently another in-progress request using this Idempotent Key \
                     (that probably means you submitted twice, and the other request is still \
                     going through). Please try again later.",
                )
                .code("idempotency_key_in_use");
                return with_params(Outcome::error(&e, request_id));
            }
            None => {
                keys.insert(key.to_owned(), KeyState::Executing);
                guard.key = Some(key.to_owned());
            }
        }
    }

    pad(started, latency).await;
    let cause = Cause {
        request_id: Some(request_id.to_owned()),
        idempotency_key: key.map(str::to_owned),
    };
    let result = {
        let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
        route.execute(&mut store, &params, &cause)
    };
    let answer = match result {
        Err(e) if !e.stored => {
            guard.finish(fingerprint, None);
            return with_params(Outcome::error(&e, request_id));
        }
        Err(e) => Answer {
            status: e.status,
            body: e.body(),
            request_id: request_id.to_owned(),
        },
        Ok(body) => {
            let fail = route.mutates() && {
                let mut knobs = shared.knobs.lock().unwrap_or_else(PoisonError::into_inner);
                let rate = knobs.fail_after_commit_rate;
                knobs.chance(rate)
            };
            if fail {
                // The change and its event happened; the client cannot tell.
                Answer {
                    status: 500,
                    body: ApiError::unknown().body(),
                    request_id: request_id.to_owned(),
                }
            } else {
                Answer {
                    status: 200,
                    body,
                    request_id: request_id.to_owned(),
                }
            }
        }
    };
    guard.finish(fingerprint, Some(answer.clone()));
    with_params(Outcome {
        status: answer.status,
        body: answer.body,
        request_id: answer.request_id,
        replayed: false,
        params: Vec::new(),
    })
}

fn mismatch(key: &str, stored: &str, fingerprint: &str) -> ApiError {
    let endpoint = |f: &str| f.split('?').next().unwrap_or_default().to_owned();
    let message = if endpoint(stored) != endpoint(fingerprint) {
        format!(
            "Keys for idempotent requests can only be used for the same endpoint they were \
             first used for ('{}' vs '{}'). Try using a key other than '{key}' if you meant \
             to execute a different request.",
            endpoint(stored),
            endpoint(fingerprint)
        )
    } else {
        format!(
            "Keys for idempotent requests can only be used with the same parameters they were \
             first used with. Try using a key other than '{key}' if you meant to execute a \
             different request."
        )
    };
    ApiError::idempotency(400, message)
}
