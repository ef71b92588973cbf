use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sandbox::SandboxConfig;

use crate::helpers::{eventually, start, verify, Receiver, WAIT};

fn config(receiver: &Receiver) -> SandboxConfig {
    SandboxConfig {
        webhook_url: Some(receiver.url.clone()),
        webhook_secret: "whsec_test_secret".into(),
        ..SandboxConfig::default()
    }
}

#[tokio::test]
async fn every_event_is_delivered_signed_with_the_whole_secret_over_t_and_the_raw_body() {
    let receiver = Receiver::start().await;
    let (sandbox, stripe) = start(config(&receiver)).await;
    let id = stripe.customer("Ada", "ada@example.com").await;
    stripe.delete(&format!("/v1/customers/{id}")).await;
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for delivery in &received {
        let t = verify("whsec_test_secret", &delivery.signature, &delivery.body)
            .unwrap_or_else(|| panic!("bad signature {}", delivery.signature));
        assert!((t - chrono::Utc::now().timestamp()).abs() < 60);
        assert!(
            verify("test_secret", &delivery.signature, &delivery.body).is_none(),
            "the whsec_ prefix is part of the key"
        );
        assert!(delivery.content_type.starts_with("application/json"));
    }
    let events: Vec<serde_json::Value> = received.iter().map(|r| r.event()).collect();
    assert_eq!(events[0]["type"], "customer.created");
    assert_eq!(events[1]["type"], "customer.deleted");
    assert_eq!(events[0]["pending_webhooks"], 1);
    let mut stored = sandbox.events()[0].clone();
    assert_eq!(stored["pending_webhooks"], 0, "delivered");
    stored["pending_webhooks"] = 1.into();
    assert_eq!(
        events[0], stored,
        "the delivered body is the event as it was emitted"
    );
}

#[tokio::test]
async fn refused_deliveries_are_retried_with_a_fresh_signature_until_a_2xx() {
    let receiver = Receiver::start().await;
    receiver.script(&[500, 302, 404]);
    let (sandbox, stripe) = start(config(&receiver)).await;
    stripe.customer("Ada", "ada@example.com").await;
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let received = receiver.received();
    assert_eq!(
        received.len(),
        4,
        "three refusals (a 3xx counts as one), then success"
    );
    let event_ids: BTreeSet<String> = received
        .iter()
        .map(|r| r.event()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(event_ids.len(), 1);
    for r in &received {
        assert!(verify("whsec_test_secret", &r.signature, &r.body).is_some());
    }
    let list = stripe.get("/v1/events?delivery_success=true").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_errors_are_retried_until_the_endpoint_comes_up() {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    receiver.stop();
    // Wait until the port refuses connections.
    eventually("the receiver to stop", WAIT, || async {
        reqwest::get(&url).await.is_err().then_some(())
    })
    .await;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/webhook")
        .parse()
        .unwrap();
    let (sandbox, stripe) = start(SandboxConfig {
        webhook_url: Some(url.clone()),
        ..SandboxConfig::default()
    })
    .await;
    stripe.customer("Ada", "ada@example.com").await;
    assert!(
        !sandbox.wait_webhooks_idle(Duration::from_millis(300)).await,
        "still pending while nobody listens"
    );
    // Bring an endpoint up on the same port and count what arrives.
    let listener = std::net::TcpListener::bind(addr).expect("the port is free again");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let server = actix_web::HttpServer::new(move || {
        let counter = counter.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { actix_web::HttpResponse::Ok().finish() }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    handle.stop(false).await;
}

#[tokio::test]
async fn delivery_never_holds_up_api_responses() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_secs(2));
    let (sandbox, stripe) = start(config(&receiver)).await;
    let started = Instant::now();
    for i in 0..3 {
        stripe.customer("Ada", &format!("a{i}@example.com")).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert!(sandbox.pending_webhooks() > 0);
}

#[tokio::test]
async fn duplicate_rate_one_delivers_every_event_twice() {
    let receiver = Receiver::start().await;
    let (sandbox, stripe) = start(SandboxConfig {
        duplicate_rate: 1.0,
        ..config(&receiver)
    })
    .await;
    for i in 0..3 {
        stripe.customer("Ada", &format!("a{i}@example.com")).await;
    }
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let received = receiver.received();
    assert_eq!(received.len(), 6);
    let ids: BTreeSet<String> = received
        .iter()
        .map(|r| r.event()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(sandbox.events().len(), 3, "one event, two deliveries");
}

#[tokio::test]
async fn shuffle_delivers_every_event_but_out_of_order() {
    let receiver = Receiver::start().await;
    let (sandbox, stripe) = start(SandboxConfig {
        shuffle: true,
        seed: Some(1),
        ..config(&receiver)
    })
    .await;
    // A slow endpoint lets a backlog build up, so the windows fill.
    receiver.set_delay(Duration::from_millis(20));
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..24 {
        let stripe = stripe.clone();
        creates.spawn(async move { stripe.customer("Ada", &format!("a{i}@example.com")).await });
    }
    creates.join_all().await;
    assert!(sandbox.wait_webhooks_idle(WAIT).await);
    let created: Vec<String> = sandbox
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let delivered: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.event()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        created.iter().collect::<BTreeSet<_>>(),
        delivered.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(delivered.len(), 24);
    assert_ne!(created, delivered, "out of order");
}
