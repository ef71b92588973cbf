use std::time::{Duration, Instant};

use sandbox::SandboxConfig;

use crate::helpers::start;

#[tokio::test]
async fn fail_rate_answers_500_before_execution_and_stores_nothing_under_the_key() {
    let (sandbox, stripe) = start(SandboxConfig {
        fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let form = [("name", "Ada")];
    let failed = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.error().0, "api_error");
    assert!(sandbox.customers().is_empty(), "nothing executed");
    assert!(sandbox.events().is_empty());
    sandbox.set_fail_rate(0.0);
    let retried = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(retried.status, 200);
    assert!(retried.header("idempotent-replayed").is_none());
    assert_eq!(sandbox.customers().len(), 1);
}

#[tokio::test]
async fn fail_after_commit_makes_the_change_emits_the_event_and_stores_the_500() {
    let (sandbox, stripe) = start(SandboxConfig {
        fail_after_commit_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let form = [("name", "Ada"), ("metadata[customer_sync_id]", "c-1")];
    let failed = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.error().0, "api_error");
    assert_eq!(sandbox.customers().len(), 1, "the change was made");
    assert_eq!(sandbox.events()[0]["type"], "customer.created");
    sandbox.set_fail_after_commit_rate(0.0);
    let retried = stripe.post_with_key("/v1/customers", &form, "key-1").await;
    assert_eq!(retried.status, 500, "the stored 500 is replayed");
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    assert_eq!(sandbox.customers().len(), 1);
    // The way out: find the object (here by listing) and carry on.
    let list = stripe.get("/v1/customers").await;
    assert_eq!(list.body["data"][0]["metadata"]["customer_sync_id"], "c-1");
    // Reads never fail after commit.
    sandbox.set_fail_after_commit_rate(1.0);
    assert_eq!(stripe.get("/v1/customers").await.status, 200);
}

#[tokio::test]
async fn max_rps_answers_429_rate_limit_before_the_idempotency_layer() {
    let (sandbox, stripe) = start(SandboxConfig {
        max_rps: Some(2),
        ..SandboxConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(stripe.get("/v1/customers").await.status);
    }
    assert_eq!(statuses[..2], [200, 200], "a burst of max_rps passes");
    assert!(statuses.contains(&429), "{statuses:?}");
    // The bucket is empty and refills one token per 500 ms.
    let limited = stripe
        .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
        .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error(), ("invalid_request_error", "rate_limit"));
    let accepted = crate::helpers::eventually("a token", Duration::from_secs(5), || async {
        let a = stripe
            .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
            .await;
        (a.status != 429).then_some(a)
    })
    .await;
    assert_eq!(accepted.status, 200);
    assert!(
        accepted.header("idempotent-replayed").is_none(),
        "the 429 was not stored"
    );
    assert_eq!(sandbox.customers().len(), 1);
    assert!(sandbox.request_log().iter().any(|r| r.status == 429));
}

#[tokio::test]
async fn latency_is_added_to_every_response() {
    let (sandbox, stripe) = start(SandboxConfig {
        latency_ms: 300,
        ..SandboxConfig::default()
    })
    .await;
    let started = Instant::now();
    stripe.customer("Ada", "ada@example.com").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(stripe.get("/v1/customers/cus_nope").await.status, 404);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "errors too"
    );
    sandbox.set_latency_ms(0);
    let started = Instant::now();
    stripe.get("/v1/customers").await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

async fn statuses_with_seed(seed: u64) -> Vec<u16> {
    let (_sandbox, stripe) = start(SandboxConfig {
        fail_rate: 0.5,
        seed: Some(seed),
        ..SandboxConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..24 {
        statuses.push(stripe.get("/v1/customers").await.status);
    }
    statuses
}

#[tokio::test]
async fn a_seed_makes_the_failures_reproducible() {
    let a = statuses_with_seed(42).await;
    assert_eq!(a, statuses_with_seed(42).await);
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
    assert_ne!(a, statuses_with_seed(43).await);
}

#[tokio::test]
async fn fail_next_injects_an_error_once_and_stores_nothing() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    sandbox.fail_next(
        400,
        "parameter_invalid_empty",
        "You passed an empty string for 'name'.",
        1,
    );
    let failed = stripe
        .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
        .await;
    assert_eq!(failed.status, 400);
    assert_eq!(
        failed.error(),
        ("invalid_request_error", "parameter_invalid_empty")
    );
    let ok = stripe
        .post_with_key("/v1/customers", &[("name", "Ada")], "key-1")
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_500_before_execution_and_one_after_commit_look_the_same_to_a_client() {
    let (sandbox, stripe) = start(SandboxConfig {
        fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let before = stripe.post("/v1/customers", &[("name", "Ada")]).await;
    sandbox.set_fail_rate(0.0);
    sandbox.set_fail_after_commit_rate(1.0);
    let after = stripe.post("/v1/customers", &[("name", "Ada")]).await;
    assert_eq!((before.status, after.status), (500, 500));
    assert_eq!(before.body, after.body);
    let names = |a: &crate::helpers::Answer| {
        let mut names: Vec<String> = a.headers.keys().map(|k| k.to_string()).collect();
        names.retain(|n| n != "date");
        names.sort();
        names
    };
    assert_eq!(names(&before), names(&after));
    assert_eq!(sandbox.customers().len(), 1, "only the second was made");
}
