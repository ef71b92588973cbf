//! Salesforce behind [`ProviderApi`]: Contacts upserted and deleted by the external-id
//! field holding our id, so every call is idempotent without a key.

use async_trait::async_trait;
use shared::db::customers::CustomerRow;
use shared::salesforce::{SalesforceClient, SalesforceError};

use super::{CallError, ProviderApi};

/// The Salesforce provider.
pub struct Salesforce {
    client: SalesforceClient,
}

impl Salesforce {
    /// Calls through `client`.
    pub fn new(client: SalesforceClient) -> Self {
        Self { client }
    }

    async fn upsert(
        &self,
        customer: &CustomerRow,
        linked: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        Ok(self
            .client
            .upsert_contact(
                customer.id.as_str(),
                &customer.name,
                &customer.email,
                linked,
            )
            .await?)
    }
}

impl From<SalesforceError> for CallError {
    fn from(e: SalesforceError) -> Self {
        if e.retryable() {
            CallError::Retry {
                retry_after: e.retry_after(),
                message: e.to_string(),
            }
        } else {
            CallError::Permanent(e.to_string())
        }
    }
}

#[async_trait]
impl ProviderApi for Salesforce {
    fn name(&self) -> &'static str {
        "salesforce (SALESFORCE_*)"
    }

    fn keyed_by_local_id(&self) -> bool {
        true
    }

    async fn create(
        &self,
        customer: &CustomerRow,
        _key: &str,
    ) -> Result<Option<String>, CallError> {
        self.upsert(customer, None).await
    }

    async fn update(
        &self,
        external_id: Option<&str>,
        customer: &CustomerRow,
        _key: &str,
    ) -> Result<Option<String>, CallError> {
        self.upsert(customer, external_id).await
    }

    async fn delete(
        &self,
        _external_id: Option<&str>,
        customer: &CustomerRow,
    ) -> Result<(), CallError> {
        Ok(self.client.delete_contact(customer.id.as_str()).await?)
    }

    async fn find_existing(
        &self,
        _customer: &CustomerRow,
        _emails: &[String],
    ) -> Result<Option<String>, CallError> {
        // An upsert by our id never creates a second Contact: there is nothing to find.
        Ok(None)
    }
}
