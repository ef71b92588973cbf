//! Stripe's error body, `{"error": {type, code, message, param, doc_url}}`, and its statuses.

use serde_json::{json, Map, Value};

/// An error answered in Stripe's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// A card error's reason (`generic_decline`, `insufficient_funds`, ...).
    pub decline_code: Option<String>,
    /// Whether the idempotency layer keeps this answer under the request's key: true once the
    /// endpoint began executing, false for validation failures (Stripe lets those be retried).
    pub stored: bool,
}

impl ApiError {
    /// A 400 `invalid_request_error` found while validating parameters (never stored).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: None,
            decline_code: None,
            stored: false,
        }
    }

    /// A 400 found after execution began (an illegal state transition): stored under the key.
    pub fn state(message: impl Into<String>) -> Self {
        Self {
            stored: true,
            ..Self::invalid(message)
        }
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn unknown_parameter(name: &str) -> Self {
        Self::invalid(format!("Received unknown parameter: {name}"))
            .code("parameter_unknown")
            .param(name)
    }

    pub fn missing_parameter(name: &str) -> Self {
        Self::invalid(format!("Missing required param: {name}."))
            .code("parameter_missing")
            .param(name)
    }

    /// 404 `resource_missing`, e.g. "No such customer: 'cus_x'".
    pub fn no_such(resource: &str, id: &str, param: &str) -> Self {
        Self {
            stored: true,
            ..Self::invalid(format!("No such {resource}: '{id}'"))
                .status(404)
                .code("resource_missing")
                .param(param)
        }
    }

    /// 500 `api_error`, opaque as Stripe's are: the same body whether or not the change
    /// was made, so a client cannot tell the two apart.
    pub fn unknown() -> Self {
        Self {
            status: 500,
            kind: "api_error",
            code: None,
            message: "An unknown error occurred while processing this request.".to_owned(),
            param: None,
            decline_code: None,
            stored: true,
        }
    }

    /// 401 for a missing or unusable key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::invalid(message).status(401)
    }

    /// 429 `rate_limit`.
    pub fn rate_limited() -> Self {
        Self::invalid(
            "Request rate limit exceeded. Learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        )
        .status(429)
        .code("rate_limit")
    }

    pub fn idempotency(status: u16, message: impl Into<String>) -> Self {
        Self {
            kind: "idempotency_error",
            ..Self::invalid(message).status(status)
        }
    }

    /// An error chosen by a test (`Sandbox::fail_next`); the type follows the status.
    pub fn injected(status: u16, code: &str, message: &str) -> Self {
        let kind = match status {
            402 => "card_error",
            500.. => "api_error",
            _ => "invalid_request_error",
        };
        Self {
            status,
            kind,
            code: (!code.is_empty()).then(|| code.to_owned()),
            message: message.to_owned(),
            param: None,
            decline_code: None,
            stored: false,
        }
    }

    /// 402 `card_error` `card_declined`: the payment was attempted (and the attempt
    /// recorded), so the answer is stored under the key.
    pub fn card_declined(decline_code: &str) -> Self {
        Self {
            status: 402,
            kind: "card_error",
            code: Some("card_declined".to_owned()),
            message: "Your card was declined.".to_owned(),
            param: None,
            decline_code: Some(decline_code.to_owned()),
            stored: true,
        }
    }

    /// The JSON body; absent fields are left out, as Stripe does.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        if let Some(code) = &self.code {
            error.insert("code".into(), json!(code));
            error.insert(
                "doc_url".into(),
                json!(format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )),
            );
        }
        if let Some(decline_code) = &self.decline_code {
            error.insert("decline_code".into(), json!(decline_code));
        }
        error.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        error.insert("type".into(), json!(self.kind));
        json!({ "error": error })
    }
}
