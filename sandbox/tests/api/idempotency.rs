use sandbox::SandboxConfig;

use crate::helpers::{start, KEY};

#[tokio::test]
async fn the_same_key_and_params_replay_the_first_response() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let form = [("name", "Ada"), ("email", "ada@example.com")];
    let first = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(first.status, 200);
    assert!(first.header("idempotent-replayed").is_none());
    // Parameter order does not matter, as with Stripe.
    let reordered = [("email", "ada@example.com"), ("name", "Ada")];
    let second = stripe
        .post_with_key("/v1/customers", &reordered, "key-1")
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("request-id"), first.header("request-id"));
    assert_eq!(sandbox.customers().len(), 1);
    assert_eq!(sandbox.events().len(), 1, "a replay emits nothing");
    let log = sandbox.request_log();
    assert_eq!(
        log.iter().map(|r| r.replayed).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(log[1].idempotency_key.as_deref(), Some("key-1"));
}

#[tokio::test]
async fn the_same_key_with_other_params_or_another_endpoint_is_an_idempotency_error() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let first = stripe
        .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
        .await;
    let other = stripe
        .post_with_key("/v1/customers", &[("name", "Bob")], "key-1")
        .await;
    assert_eq!(other.status, 400);
    assert_eq!(other.error().0, "idempotency_error");
    let elsewhere = stripe
        .post_with_key(
            &format!("/v1/customers/{}", first.id()),
            &[("name", "Ada")],
            "key-1",
        )
        .await;
    assert_eq!(elsewhere.status, 400);
    assert_eq!(elsewhere.error().0, "idempotency_error");
    assert_eq!(sandbox.customers().len(), 1);
    assert_eq!(sandbox.customers()[0].name.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn a_validation_failure_is_not_stored_so_the_key_can_be_reused() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let bad = stripe
        .post_with_key("/v1/customers", &[("nickname", "A")], "key-1")
        .await;
    assert_eq!(bad.status, 400);
    let good = stripe
        .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
        .await;
    assert_eq!(good.status, 200);
    assert!(good.header("idempotent-replayed").is_none());
    assert_eq!(sandbox.customers().len(), 1);
}

#[tokio::test]
async fn an_error_after_execution_began_is_stored_and_replayed() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let form = [("name", "x")];
    let first = stripe
        .post_with_key("/v1/customers/cus_missing", &form, "key-404")
        .await;
    assert_eq!(first.status, 404);
    let again = stripe
        .post_with_key("/v1/customers/cus_missing", &form, "key-404")
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_401_is_not_stored_under_the_key() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let url = format!("{}/v1/customers", stripe.base);
    let refused = stripe
        .send(
            stripe
                .http
                .post(&url)
                .bearer_auth("sk_live_nope")
                .header("Idempotency-Key", "key-1")
                .form(&[("name", "Ada")]),
        )
        .await;
    assert_eq!(refused.status, 401);
    let accepted = stripe
        .send(
            stripe
                .http
                .post(&url)
                .bearer_auth(KEY)
                .header("Idempotency-Key", "key-1")
                .form(&[("name", "Ada")]),
        )
        .await;
    assert_eq!(accepted.status, 200);
    assert!(accepted.header("idempotent-replayed").is_none());
    assert_eq!(sandbox.customers().len(), 1);
}

#[tokio::test]
async fn a_concurrent_request_with_a_key_still_executing_gets_409() {
    let (sandbox, stripe) = start(SandboxConfig {
        latency_ms: 400,
        ..SandboxConfig::default()
    })
    .await;
    let form = [("name", "Ada")];
    let (a, b) = tokio::join!(
        stripe.post_with_key("/v1/customers", &form, "key-1"),
        stripe.post_with_key("/v1/customers", &form, "key-1"),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let conflict = if a.status == 409 { &a } else { &b };
    assert_eq!(conflict.error().0, "idempotency_error");
    assert_eq!(sandbox.customers().len(), 1);
    // The 409 was not stored: the finished request's answer is what a retry gets.
    let retry = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn keys_on_delete_have_no_effect() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let id = stripe.customer("Ada", "ada@example.com").await;
    let path = format!("{}/v1/customers/{id}", stripe.base);
    let delete = || {
        stripe.send(
            stripe
                .http
                .delete(&path)
                .bearer_auth(KEY)
                .header("Idempotency-Key", "key-d"),
        )
    };
    assert_eq!(delete().await.status, 200);
    let second = delete().await;
    assert_eq!(second.status, 404, "not replayed");
    assert!(second.header("idempotent-replayed").is_none());
}
