//! Bearer-token authentication for the `/api/v1` routes, compared in constant time.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The expected token, or `None` when auth is disabled (`--insecure-no-auth`).
#[derive(Clone)]
pub struct ApiToken(Option<[u8; 32]>);

impl ApiToken {
    /// Keeps only the token's SHA-256, so tokens of any length compare in constant time.
    pub fn new(token: Option<&SecretString>) -> Self {
        Self(token.map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()))
    }

    fn admits(&self, header: Option<&str>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        given.ct_eq(expected).into()
    }
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <API_TOKEN>`.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let admitted = {
        let token = req
            .app_data::<web::Data<ApiToken>>()
            .expect("ApiToken is registered in startup");
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        token.admits(header)
    };
    if admitted {
        next.call(req)
            .await
            .map(ServiceResponse::map_into_left_body)
    } else {
        let response = ApiError::Unauthorized.error_response();
        Ok(req.into_response(response).map_into_right_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = ApiToken::new(Some(&SecretString::from("s3cret-token-0123456789")));
        assert!(token.admits(Some("Bearer s3cret-token-0123456789")));
        assert!(!token.admits(Some("Bearer s3cret-token-012345678")));
        assert!(!token.admits(Some("bearer s3cret-token-0123456789")));
        assert!(!token.admits(Some("s3cret-token-0123456789")));
        assert!(!token.admits(None));
        assert!(ApiToken::new(None).admits(None));
    }
}
