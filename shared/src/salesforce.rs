//! Salesforce's REST client: OAuth 2.0 client credentials (one cached token shared by all
//! tasks, refreshed once on `INVALID_SESSION_ID`), Contacts upserted and deleted by an
//! external-id field holding the local customer id.

use std::time::Duration;

use crate::config::SalesforceSettings;
use crate::salesforce_allocation::{Allocation, Allowance};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, RwLock};

/// How long to wait after `REQUEST_LIMIT_EXCEEDED`: the daily window rolls slowly.
pub const LIMIT_BACKOFF: Duration = Duration::from_secs(300);

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceError {
    /// The request may not have arrived: retry.
    #[error("network error: {0}")]
    Transport(String),
    /// Salesforce answered with an error.
    #[error("Salesforce answered {status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
}

impl SalesforceError {
    /// Whether a later attempt may succeed; permanent errors send the task to `dead`.
    pub fn retryable(&self) -> bool {
        match self {
            SalesforceError::Transport(_) => true,
            SalesforceError::Api { status, code, .. } => {
                *status >= 500
                    || code == "UNABLE_TO_LOCK_ROW"
                    || code == "REQUEST_LIMIT_EXCEEDED"
                    || code == "INVALID_SESSION_ID"
            }
        }
    }

    /// The wait the error itself asks for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SalesforceError::Api { code, .. } if code == "REQUEST_LIMIT_EXCEEDED" => {
                Some(LIMIT_BACKOFF)
            }
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Token {
    access_token: SecretString,
    instance_url: String,
    generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: String,
    #[serde(rename = "errorCode", default)]
    error_code: String,
}

#[derive(Deserialize)]
struct UpsertResult {
    id: String,
    /// Absent before API 46.0.
    #[serde(default)]
    created: Option<bool>,
}

#[derive(Deserialize)]
struct Describe {
    fields: Vec<DescribedField>,
}

#[derive(Deserialize)]
struct DescribedField {
    name: String,
    #[serde(rename = "caseSensitive", default)]
    case_sensitive: bool,
}

/// The error code of a refused case-only collision (ours; Salesforce has none).
pub const CASE_COLLISION: &str = "CASE_ONLY_COLLISION";

/// A Salesforce REST client for one org.
pub struct SalesforceClient {
    http: reqwest::Client,
    settings: SalesforceSettings,
    token: RwLock<Option<Token>>,
    refreshing: Mutex<u64>,
    allocation: Allocation,
    /// Whether the external id field tells `Ada-1` from `ada-1`, read once.
    case_sensitive: tokio::sync::OnceCell<bool>,
}

/// Splits a display name into Contact's FirstName and (required) LastName.
pub fn split_name(name: &str) -> (Option<String>, String) {
    let name = name.trim();
    match name.rsplit_once(char::is_whitespace) {
        Some((first, last)) if !first.trim().is_empty() => (
            Some(first.trim().chars().take(40).collect()),
            last.chars().take(80).collect(),
        ),
        _ => (None, name.chars().take(80).collect()),
    }
}

impl SalesforceClient {
    pub fn new(settings: &SalesforceSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(Self {
            http,
            settings: settings.clone(),
            token: RwLock::new(None),
            refreshing: Mutex::new(0),
            allocation: Allocation::new(settings.slow_background_percent),
            case_sensitive: tokio::sync::OnceCell::new(),
        })
    }

    /// What the org's daily allocation still allows, as the last response reported it.
    pub fn allowance(&self) -> Allowance {
        self.allocation.allowance()
    }

    /// The cached token, fetching one if there is none.
    async fn token(&self) -> Result<Token, SalesforceError> {
        if let Some(token) = self.token.read().await.clone() {
            return Ok(token);
        }
        self.refresh(0).await
    }

    /// Fetches a new token unless another task already replaced `stale` (single flight).
    async fn refresh(&self, stale: u64) -> Result<Token, SalesforceError> {
        let mut generation = self.refreshing.lock().await;
        if let Some(current) = self.token.read().await.clone() {
            if current.generation != stale {
                return Ok(current);
            }
        }
        let started = std::time::Instant::now();
        let answered = self
            .http
            .post(format!("{}/services/oauth2/token", self.settings.login_url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.settings.client_id.expose_secret()),
                ("client_secret", self.settings.client_secret.expose_secret()),
            ])
            .send()
            .await;
        let status = answered.as_ref().ok().map(|r| r.status().as_u16());
        crate::metrics::provider_call("salesforce", "token", status, started.elapsed());
        let response =
            answered.map_err(|e| SalesforceError::Transport(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| SalesforceError::Transport(e.without_url().to_string()))?;
        if status != 200 {
            #[derive(Deserialize)]
            struct OAuthError {
                #[serde(default)]
                error: String,
                #[serde(default)]
                error_description: String,
            }
            let detail: Option<OAuthError> = serde_json::from_slice(&body).ok();
            return Err(SalesforceError::Api {
                status,
                code: detail
                    .as_ref()
                    .map_or("oauth_error".into(), |d| d.error.clone()),
                message: detail.map_or_else(
                    || "the token request failed".into(),
                    |d| d.error_description,
                ),
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| SalesforceError::Api {
                status,
                code: "oauth_error".into(),
                message: format!("unreadable token response: {e}"),
            })?;
        *generation += 1;
        let token = Token {
            access_token: parsed.access_token.into(),
            instance_url: parsed.instance_url.trim_end_matches('/').to_owned(),
            generation: *generation,
        };
        *self.token.write().await = Some(token.clone());
        tracing::info!(
            generation = *generation,
            "obtained a Salesforce access token"
        );
        Ok(token)
    }

    /// Sends a request built for a token; on `INVALID_SESSION_ID` refreshes once and resends.
    /// Recorded under `operation` (a fixed name, never an id).
    async fn send(
        &self,
        operation: &'static str,
        build: impl Fn(&Token) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, SalesforceError> {
        let mut token = self.token().await?;
        for attempt in 0..2 {
            let started = std::time::Instant::now();
            let answered = build(&token)
                .bearer_auth(token.access_token.expose_secret())
                .send()
                .await;
            let status = answered.as_ref().ok().map(|r| r.status().as_u16());
            crate::metrics::provider_call("salesforce", operation, status, started.elapsed());
            let response =
                answered.map_err(|e| SalesforceError::Transport(e.without_url().to_string()))?;
            let status = response.status().as_u16();
            if let Some(usage) = response
                .headers()
                .get("sforce-limit-info")
                .and_then(|v| v.to_str().ok())
            {
                tracing::debug!(sforce_limit_info = usage, "salesforce API usage");
                self.allocation.report(usage);
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| SalesforceError::Transport(e.without_url().to_string()))?;
            if (200..300).contains(&status) {
                return Ok(body.to_vec());
            }
            let error = parse_error(status, &body);
            match &error {
                SalesforceError::Api { code, .. }
                    if code == "INVALID_SESSION_ID" && attempt == 0 =>
                {
                    tracing::info!("Salesforce session expired; refreshing the token once");
                    token = self.refresh(token.generation).await?;
                }
                _ => return Err(error),
            }
        }
        Err(SalesforceError::Api {
            status: 401,
            code: "INVALID_SESSION_ID".into(),
            message: "the session was still invalid after a token refresh".into(),
        })
    }

    fn contact_url(&self, token: &Token, local_id: &str) -> String {
        format!(
            "{}/services/data/v{}/sobjects/Contact/{}/{}",
            token.instance_url,
            self.settings.api_version,
            self.settings.external_id_field,
            percent_encode(local_id)
        )
    }

    /// Whether the external id field is case sensitive, from Contact's describe (read
    /// once per process).
    pub async fn external_id_case_sensitive(&self) -> Result<bool, SalesforceError> {
        self.case_sensitive
            .get_or_try_init(|| async {
                let body = self
                    .send("describe_contact", |token| {
                        self.http.get(format!(
                            "{}/services/data/v{}/sobjects/Contact/describe",
                            token.instance_url, self.settings.api_version
                        ))
                    })
                    .await?;
                let describe: Describe =
                    serde_json::from_slice(&body).map_err(|e| SalesforceError::Api {
                        status: 200,
                        code: "UNREADABLE_DESCRIBE".into(),
                        message: format!("Contact's describe could not be read: {e}"),
                    })?;
                let field = &self.settings.external_id_field;
                let found = describe
                    .fields
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case(field))
                    .ok_or_else(|| SalesforceError::Api {
                        status: 400,
                        code: "INVALID_FIELD".into(),
                        message: format!(
                            "Contact has no field {field} (SALESFORCE_EXTERNAL_ID_FIELD)"
                        ),
                    })?;
                if !found.case_sensitive {
                    tracing::warn!(
                        field = %field,
                        "the Salesforce external id field is not case sensitive: customers whose ids differ only in case cannot both reach Salesforce (README: Connecting Salesforce)"
                    );
                }
                Ok(found.case_sensitive)
            })
            .await
            .copied()
    }

    /// The external id stored on the live Contact that `local_id` matches, with its id.
    async fn matching_contact(
        &self,
        local_id: &str,
    ) -> Result<Option<(String, String)>, SalesforceError> {
        let field = &self.settings.external_id_field;
        let body = match self
            .send("retrieve_contact", |token| {
                self.http
                    .get(self.contact_url(token, local_id))
                    .query(&[("fields", format!("Id,{field}"))])
            })
            .await
        {
            Ok(body) => body,
            Err(SalesforceError::Api { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let contact: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| SalesforceError::Api {
                status: 200,
                code: "UNREADABLE_CONTACT".into(),
                message: format!("the Contact could not be read: {e}"),
            })?;
        let text = |key: &str| contact.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(text("Id").zip(text(field)))
    }

    fn case_collision(&self, local_id: &str, contact: &str, stored: &str) -> SalesforceError {
        SalesforceError::Api {
            status: 409,
            code: CASE_COLLISION.into(),
            message: format!(
                "customer id {local_id:?} matches Contact {contact}, whose {} is {stored:?}: \
                 the field is not case sensitive, so the two customers would share one \
                 Contact. Tick \"case sensitive\" on the field (README: Connecting \
                 Salesforce), then retry this task",
                self.settings.external_id_field
            ),
        }
    }

    /// Creates or updates the Contact whose external id is `local_id`; returns its
    /// Salesforce id. `linked` is the Contact a previous call recorded, if any.
    ///
    /// When the external id field is not case sensitive, a customer's id may match the
    /// Contact of another customer whose id differs only in case, and an upsert would
    /// merge the two: the first push (nothing linked) looks first and refuses such a
    /// match, and a later one refuses an answer naming another Contact than the linked.
    pub async fn upsert_contact(
        &self,
        local_id: &str,
        name: &str,
        email: &str,
        linked: Option<&str>,
    ) -> Result<Option<String>, SalesforceError> {
        let case_sensitive = self.external_id_case_sensitive().await?;
        // Whether the first push found no Contact for this id before it upserted.
        let mut found_none = false;
        if !case_sensitive && linked.is_none() {
            match self.matching_contact(local_id).await? {
                Some((contact, stored)) if stored != local_id => {
                    return Err(self.case_collision(local_id, &contact, &stored));
                }
                Some(_) => {}
                None => found_none = true,
            }
        }
        let (first, last) = split_name(name);
        let body = json!({"FirstName": first, "LastName": last, "Email": email});
        let response = self
            .send("upsert_contact", |token| {
                self.http
                    .patch(self.contact_url(token, local_id))
                    .json(&body)
            })
            .await?;
        // 201 and (API 46.0+) 200 carry the id; older versions answer 204 without a body.
        let result = serde_json::from_slice::<UpsertResult>(&response).ok();
        if let (false, Some(result)) = (case_sensitive, &result) {
            // An update of a Contact that is not the linked one, or of one that did not
            // exist a moment ago: a case variant's first push got there in between.
            let elsewhere = match linked {
                Some(linked) => result.id != linked,
                // Another attempt of this same task may have made it meanwhile: look.
                None if found_none && result.created == Some(false) => !matches!(
                    self.matching_contact(local_id).await?,
                    Some((_, stored)) if stored == local_id
                ),
                None => false,
            };
            if result.created == Some(false) && elsewhere {
                tracing::error!(contact = %result.id, ?linked, "an upsert reached another customer's Contact");
                return Err(self.case_collision(local_id, &result.id, "another customer's id"));
            }
        }
        Ok(result.map(|r| r.id))
    }

    /// Deletes the Contact whose external id is `local_id`; already gone counts as done.
    /// When the field is not case sensitive, a Contact whose external id differs in case
    /// is another customer's and is left alone.
    pub async fn delete_contact(&self, local_id: &str) -> Result<(), SalesforceError> {
        if !self.external_id_case_sensitive().await? {
            match self.matching_contact(local_id).await? {
                Some((_, stored)) if stored == local_id => {}
                _ => return Ok(()),
            }
        }
        match self
            .send("delete_contact", |token| {
                self.http.delete(self.contact_url(token, local_id))
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(SalesforceError::Api { status: 404, .. }) => Ok(()),
            Err(SalesforceError::Api { code, .. })
                if code == "ENTITY_IS_DELETED" || code == "NOT_FOUND" =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn parse_error(status: u16, body: &[u8]) -> SalesforceError {
    let items: Vec<ErrorItem> = serde_json::from_slice(body).unwrap_or_default();
    match items.into_iter().next() {
        Some(item) => SalesforceError::Api {
            status,
            code: item.error_code,
            message: item.message,
        },
        None => SalesforceError::Api {
            status,
            code: format!("HTTP_{status}"),
            message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        },
    }
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_first_and_required_last() {
        assert_eq!(
            split_name("Ada Lovelace"),
            (Some("Ada".into()), "Lovelace".into())
        );
        assert_eq!(
            split_name("Ada King Lovelace"),
            (Some("Ada King".into()), "Lovelace".into())
        );
        assert_eq!(split_name("Cher"), (None, "Cher".into()));
        assert_eq!(split_name(&"x".repeat(100)).1.len(), 80);
    }

    #[test]
    fn errors_are_sorted_by_what_to_do() {
        let api = |status, code: &str| SalesforceError::Api {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(api(503, "SERVER_UNAVAILABLE").retryable());
        assert!(api(400, "UNABLE_TO_LOCK_ROW").retryable());
        assert!(api(403, "REQUEST_LIMIT_EXCEEDED").retryable());
        assert_eq!(
            api(403, "REQUEST_LIMIT_EXCEEDED").retry_after(),
            Some(LIMIT_BACKOFF)
        );
        assert!(!api(400, "REQUIRED_FIELD_MISSING").retryable());
        assert!(!api(400, "DUPLICATE_VALUE").retryable());
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
