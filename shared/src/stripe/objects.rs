//! The Stripe objects we read, as much of each as we use.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::{CUSTOMER_EVENTS, INVOICE_EVENTS, METADATA_KEY};

/// A Stripe customer (or the stub `{id, object, deleted: true}` of a deleted one).
#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Stripe's metadata values are strings; anything else is read and ignored.
    #[serde(default)]
    pub metadata: HashMap<String, Value>,
    #[serde(default)]
    pub deleted: bool,
}

impl Customer {
    /// The local customer this Stripe customer was created for (our metadata key).
    pub fn local_id(&self) -> Option<&str> {
        self.metadata.get(METADATA_KEY).and_then(Value::as_str)
    }

    /// Name and email, an unset field as the empty string.
    pub fn fields(&self) -> (String, String) {
        (
            self.name.clone().unwrap_or_default(),
            self.email.clone().unwrap_or_default(),
        )
    }
}

/// A Stripe invoice.
#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    /// The customer's id, or the customer itself when expanded.
    #[serde(default)]
    pub customer: Option<Value>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub amount_due: i64,
    #[serde(default)]
    pub amount_paid: i64,
    #[serde(default)]
    pub amount_remaining: i64,
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    #[serde(default)]
    pub due_date: Option<i64>,
    #[serde(default)]
    pub period_start: Option<i64>,
    #[serde(default)]
    pub period_end: Option<i64>,
    #[serde(default)]
    pub created: i64,
}

impl Invoice {
    /// The Stripe customer's id, whether `customer` is an id or an expanded object.
    pub fn customer_id(&self) -> Option<String> {
        match &self.customer {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }
}

/// A page of a list endpoint.
#[derive(Debug, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// Stripe's error body: `{"error": {...}}`.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an error body.
#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// An event envelope, as much as we read.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

/// `data` of an event.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
    #[serde(default)]
    pub previous_attributes: Option<Value>,
}

impl Event {
    /// Parses a verified body into the event and its raw JSON (as it is stored); anything
    /// that is not an event we can act on is refused with a reason for the sender.
    pub fn parse(body: &[u8]) -> Result<(Self, Value), String> {
        let raw: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        Self::from_value(raw)
    }

    /// [`Event::parse`] for an event already read as JSON (an Events API page).
    pub fn from_value(raw: Value) -> Result<(Self, Value), String> {
        let event: Event = serde_json::from_value(raw.clone())
            .map_err(|e| format!("body is not a Stripe event: {e}"))?;
        if raw
            .get("object")
            .and_then(Value::as_str)
            .is_some_and(|o| o != "event")
        {
            return Err("body is not a Stripe event: object is not \"event\"".into());
        }
        if event.id.is_empty() || event.id.len() > 255 || event.kind.is_empty() {
            return Err("body is not a Stripe event: empty id or type".into());
        }
        if !event.data.object.is_object() {
            return Err("body is not a Stripe event: data.object is not an object".into());
        }
        // A handled event whose object we could not read would fail inside the transaction
        // and be retried by Stripe forever: refuse it here, before anything is written.
        let kind = event.kind.as_str();
        let unreadable = if CUSTOMER_EVENTS.contains(&kind) {
            event.customer().err()
        } else if INVOICE_EVENTS.contains(&kind) {
            event.invoice().err()
        } else {
            None
        };
        if let Some(reason) = unreadable {
            return Err(format!("{kind} carries an object we cannot read: {reason}"));
        }
        Ok((event, raw))
    }

    /// The id of the object the event is about.
    pub fn object_id(&self) -> Option<&str> {
        self.data.object.get("id").and_then(Value::as_str)
    }

    /// The event's object read as a customer.
    pub fn customer(&self) -> Result<Customer, String> {
        serde_json::from_value(self.data.object.clone()).map_err(|e| e.to_string())
    }

    /// The event's object read as an invoice.
    pub fn invoice(&self) -> Result<Invoice, String> {
        serde_json::from_value(self.data.object.clone()).map_err(|e| e.to_string())
    }

    /// The Stripe customer the event is about (the object itself, or an invoice's
    /// customer); the event's own id for anything else.
    pub fn customer_key(&self) -> &str {
        let object = &self.data.object;
        let customer = match object.get("object").and_then(Value::as_str) {
            Some("customer") => object.get("id"),
            _ => object.get("customer"),
        };
        customer.and_then(Value::as_str).unwrap_or(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(object: &str) -> String {
        let body =
            format!(r#"{{"id":"evt_1","type":"x","created":1,"data":{{"object":{object}}}}}"#);
        Event::parse(body.as_bytes())
            .unwrap()
            .0
            .customer_key()
            .to_owned()
    }

    #[test]
    fn events_are_keyed_by_the_stripe_customer_they_concern() {
        assert_eq!(key_of(r#"{"id":"cus_A","object":"customer"}"#), "cus_A");
        assert_eq!(
            key_of(r#"{"id":"in_1","object":"invoice","customer":"cus_A"}"#),
            "cus_A"
        );
        assert_eq!(
            key_of(r#"{"id":"pi_1","object":"payment_intent"}"#),
            "evt_1"
        );
        assert_eq!(
            key_of(r#"{"id":"in_2","object":"invoice","customer":null}"#),
            "evt_1"
        );
    }

    #[test]
    fn our_metadata_names_the_local_customer() {
        let customer: Customer = serde_json::from_str(
            r#"{"id":"cus_1","metadata":{"customer_sync_id":"c-1","n":3},"deleted":false}"#,
        )
        .unwrap();
        assert_eq!(customer.local_id(), Some("c-1"));
        let invoice: Invoice =
            serde_json::from_str(r#"{"id":"in_1","customer":{"id":"cus_9"}}"#).unwrap();
        assert_eq!(invoice.customer_id().as_deref(), Some("cus_9"));
    }
}
