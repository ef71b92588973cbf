//! Jobs: queued through the API, listed, read with their findings, cancelled.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use shared::db::jobs::{self, Checkpoint, Finding, NewJob, Renewal};
use shared::domain::{JobKind, Provider};

use crate::helpers::{error_of, salesforce, spawn_app, spawn_app_with, TestApp, TOKEN};

const UNKNOWN: &str = "0190a0a0-0000-7000-8000-000000000000";
const OWNER: &str = "test-consumer";
const LEASE: Duration = Duration::from_secs(60);

async fn queue(app: &TestApp, body: Value) -> Value {
    let response = app.post("/api/v1/jobs", &body).await;
    assert_eq!(response.status(), 202, "{body}");
    response.json().await.unwrap()
}

/// Queues a job directly (the API refuses a second open one of a kind).
fn insert(app: &TestApp, kind: JobKind) -> uuid::Uuid {
    jobs::insert(
        &mut app.conn(),
        NewJob {
            kind,
            provider: Provider::Stripe,
            repair: false,
            requested_by: "cli",
        },
    )
    .unwrap()
    .id
}

/// Claims the provider's next job as a consumer would.
fn claim(app: &TestApp) -> uuid::Uuid {
    jobs::claim(&mut app.conn(), Provider::Stripe, OWNER, LEASE)
        .unwrap()
        .expect("a job to claim")
        .id
}

fn status_in_db(app: &TestApp, id: &str) -> String {
    use diesel::prelude::*;
    use shared::db::schema::sync_jobs;
    sync_jobs::table
        .find(uuid::Uuid::parse_str(id).unwrap())
        .select(sync_jobs::status)
        .first(&mut app.conn())
        .unwrap()
}

#[tokio::test]
async fn queuing_a_reconcile_answers_202_with_the_whole_job_and_stores_it() {
    let app = spawn_app().await;

    let job = queue(
        &app,
        json!({"kind": "reconcile", "provider": "stripe", "repair": true}),
    )
    .await;

    let keys: Vec<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "id",
        "kind",
        "provider",
        "repair",
        "status",
        "requested_by",
        "cancel_requested",
        "phase",
        "progress",
        "report",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(job["kind"], "reconcile");
    assert_eq!(job["provider"], "stripe");
    assert_eq!(job["repair"], true);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["requested_by"], "api");
    assert_eq!(job["cancel_requested"], false);
    assert_eq!(job["progress"], json!({}));
    assert!(job["report"].is_null());
    assert!(job["error"].is_null());
    assert!(job["started_at"].is_null());
    assert!(job["finished_at"].is_null());
    let created = job["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );

    let id = job["id"].as_str().unwrap();
    assert_eq!(app.count("sync_jobs"), 1);
    assert_eq!(status_in_db(&app, id), "queued");
    let response = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read, job);
}

#[tokio::test]
async fn repair_defaults_to_false_and_an_import_and_a_reconcile_may_be_open_together() {
    let app = spawn_app().await;

    let import = queue(&app, json!({"kind": "import", "provider": "stripe"})).await;
    let reconcile = queue(
        &app,
        json!({"kind": "reconcile", "provider": "stripe", "repair": null}),
    )
    .await;

    assert_eq!(import["repair"], false);
    assert_eq!(reconcile["repair"], false);
    assert_eq!(app.count("sync_jobs"), 2);
}

#[tokio::test]
async fn a_second_job_of_a_kind_while_one_is_queued_or_running_is_a_409_naming_it() {
    let app = spawn_app().await;
    let first = queue(&app, json!({"kind": "reconcile", "provider": "stripe"})).await;
    let first_id = first["id"].as_str().unwrap();

    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "reconcile", "provider": "stripe", "repair": true}),
        )
        .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "job_exists");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(first_id),
        "{body}"
    );
    assert_eq!(app.count("sync_jobs"), 1, "the refusal wrote nothing");

    assert_eq!(claim(&app).to_string(), first_id);
    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "reconcile", "provider": "stripe"}),
        )
        .await;
    assert_eq!(response.status(), 409, "a running job is open too");
    assert_eq!(error_of(response).await.0, "job_exists");
    assert_eq!(app.count("sync_jobs"), 1);

    jobs::finish(
        &mut app.conn(),
        first_id.parse().unwrap(),
        OWNER,
        shared::domain::JobStatus::Succeeded,
        None,
    )
    .unwrap()
    .expect("the job was ours");
    queue(&app, json!({"kind": "reconcile", "provider": "stripe"})).await;
    assert_eq!(app.count("sync_jobs"), 2, "a finished job leaves room");
}

#[tokio::test]
async fn concurrent_requests_for_the_same_job_queue_it_once() {
    let app = spawn_app().await;
    let body = json!({"kind": "import", "provider": "stripe"});

    let answers =
        futures_util::future::join_all((0..8).map(|_| app.post("/api/v1/jobs", &body))).await;

    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(app.count("sync_jobs"), 1);
}

#[tokio::test]
async fn invalid_job_requests_are_400s_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"kind": "export", "provider": "stripe"}), "kind"),
        (json!({"kind": "", "provider": "stripe"}), "kind"),
        (json!({"provider": "stripe"}), "kind"),
        (
            json!({"kind": "import", "provider": "salesforce"}),
            "provider",
        ),
        (json!({"kind": "import", "provider": "hubspot"}), "provider"),
        (json!({"kind": "import"}), "provider"),
        (
            json!({"kind": "import", "provider": "stripe", "repair": true}),
            "repair",
        ),
    ];
    for (body, field) in cases {
        let response = app.post("/api/v1/jobs", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let (code, named) = error_of(response).await;
        assert_eq!(code, "validation_failed", "{body}");
        assert_eq!(named.as_deref(), Some(field), "{body}");
    }
    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "import", "provider": "salesforce"}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only stripe has jobs"),
        "{body}"
    );
    assert_eq!(app.count("sync_jobs"), 0);
}

#[tokio::test]
async fn malformed_job_bodies_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    for body in [
        json!({"kind": "reconcile", "provider": "stripe", "repair": "yes"}),
        json!({"kind": 1, "provider": "stripe"}),
        json!({"kind": "reconcile", "provider": ["stripe"]}),
        json!({"kind": "reconcile", "provider": "stripe", "priority": "high"}),
        json!("reconcile"),
        json!(null),
    ] {
        let response = app.post("/api/v1/jobs", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(error_of(response).await.0, "malformed_json", "{body}");
    }
    let response = app
        .request(Method::POST, "/api/v1/jobs")
        .header("content-type", "application/json")
        .body("{\"kind\": \"import\",")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await.0, "malformed_json");
    let response = app
        .request(Method::POST, "/api/v1/jobs")
        .header("content-type", "text/plain")
        .body(r#"{"kind": "import", "provider": "stripe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(app.count("sync_jobs"), 0);
}

#[tokio::test]
async fn jobs_are_a_409_provider_disabled_when_the_server_has_no_stripe() {
    let app = spawn_app_with(|s| {
        s.common.stripe = None;
        s.common.salesforce = Some(salesforce());
    })
    .await;

    let response = app
        .post(
            "/api/v1/jobs",
            &json!({"kind": "import", "provider": "stripe"}),
        )
        .await;

    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "provider_disabled");
    assert_eq!(app.count("sync_jobs"), 0);
}

#[tokio::test]
async fn jobs_list_newest_first_with_filters_and_keyset_pages() {
    let app = spawn_app().await;
    let mut ids: Vec<String> = Vec::new();
    for kind in [
        JobKind::Import,
        JobKind::Reconcile,
        JobKind::Reconcile,
        JobKind::Import,
        JobKind::Reconcile,
    ] {
        ids.push(insert(&app, kind).to_string());
    }
    let cancelled: Value = app
        .post(&format!("/api/v1/jobs/{}/cancel", ids[1]), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");

    let mut seen = Vec::new();
    let mut path = "/api/v1/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        pages += 1;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/v1/jobs?limit=2&after={after}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    let page: Value = app
        .get("/api/v1/jobs?kind=import")
        .await
        .json()
        .await
        .unwrap();
    let imports: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(imports, [ids[3].as_str(), ids[0].as_str()]);
    let page: Value = app
        .get("/api/v1/jobs?status=cancelled&kind=reconcile")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], ids[1].as_str());
    assert!(page["next_after"].is_null());
    let page: Value = app
        .get("/api/v1/jobs?status=running")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"], json!([]));
    let page: Value = app
        .get("/api/v1/jobs?limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn jobs_list_refuses_bad_filters() {
    let app = spawn_app().await;
    for (query, field) in [
        ("status=done", Some("status")),
        ("kind=export", Some("kind")),
        ("after=zzz", Some("after")),
        ("limit=0", Some("limit")),
        ("limit=101", Some("limit")),
        ("limit=-1", Some("limit")),
        ("limit=99999999999999999999999", None),
        ("limit=ten", None),
        ("colour=red", None),
    ] {
        let response = app.get(&format!("/api/v1/jobs?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let (code, named) = error_of(response).await;
        assert_eq!(code, "validation_failed", "{query}");
        assert_eq!(named.as_deref(), field, "{query}");
    }
}

#[tokio::test]
async fn an_unknown_job_is_a_404_and_a_malformed_id_a_400_on_every_job_route() {
    let app = spawn_app().await;
    let routes = [
        (Method::GET, "/api/v1/jobs/{}"),
        (Method::GET, "/api/v1/jobs/{}/findings"),
        (Method::POST, "/api/v1/jobs/{}/cancel"),
    ];
    for (method, route) in routes {
        let response = app
            .request(method.clone(), &route.replace("{}", UNKNOWN))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{route}");
        assert_eq!(error_of(response).await.0, "job_not_found", "{route}");

        for bad in ["not-a-uuid", "0190a0a0-0000-7000-8000", "%00"] {
            let response = app
                .request(method.clone(), &route.replace("{}", bad))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{route} {bad}");
            assert_eq!(error_of(response).await.1.as_deref(), Some("id"), "{route}");
        }
    }
    let response = app
        .request(Method::DELETE, &format!("/api/v1/jobs/{UNKNOWN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(app.count("sync_jobs"), 0);
}

#[tokio::test]
async fn cancelling_a_queued_job_cancels_it_at_once_and_then_it_is_finished() {
    let app = spawn_app().await;
    let job = queue(&app, json!({"kind": "import", "provider": "stripe"})).await;
    let path = format!("/api/v1/jobs/{}/cancel", job["id"].as_str().unwrap());

    let response = app.post(&path, &json!({})).await;

    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancel_requested"], true);
    assert!(cancelled["finished_at"].is_string());
    assert_eq!(status_in_db(&app, job["id"].as_str().unwrap()), "cancelled");

    let response = app.post(&path, &json!({})).await;
    assert_eq!(response.status(), 409);
    let (code, _) = error_of(response).await;
    assert_eq!(code, "job_finished");
    assert!(
        jobs::claim(&mut app.conn(), Provider::Stripe, OWNER, LEASE)
            .unwrap()
            .is_none(),
        "a cancelled job is never run"
    );
}

#[tokio::test]
async fn cancelling_a_running_job_asks_its_consumer_to_stop_at_the_next_checkpoint() {
    let app = spawn_app().await;
    let job = queue(&app, json!({"kind": "reconcile", "provider": "stripe"})).await;
    let id = claim(&app);
    assert_eq!(id.to_string(), job["id"].as_str().unwrap());

    let response = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
        .await;

    assert_eq!(response.status(), 202);
    let asked: Value = response.json().await.unwrap();
    assert_eq!(asked["status"], "running");
    assert_eq!(asked["cancel_requested"], true);
    assert!(asked["started_at"].is_string());
    assert!(asked["finished_at"].is_null());
    assert_eq!(
        jobs::renew(&mut app.conn(), id, OWNER, LEASE).unwrap(),
        Renewal::CancelRequested,
        "the consumer learns it at its next checkpoint"
    );

    jobs::finish(
        &mut app.conn(),
        id,
        OWNER,
        shared::domain::JobStatus::Cancelled,
        None,
    )
    .unwrap()
    .expect("the job was ours");
    let response = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_of(response).await.0, "job_finished");
    let finished: Value = app
        .get(&format!("/api/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(finished["status"], "cancelled");
    assert!(
        finished["report"].is_object(),
        "a finished job has its report"
    );
}

fn finding(kind: &'static str, subject: &str) -> Finding {
    Finding {
        kind,
        subject: subject.to_owned(),
        customer_id: Some(format!("local-{subject}")),
        external_id: Some(subject.to_owned()),
        detail: Some(json!({"note": subject})),
    }
}

#[tokio::test]
async fn findings_page_in_the_order_found_with_a_kind_filter() {
    let app = spawn_app().await;
    let job = queue(&app, json!({"kind": "import", "provider": "stripe"})).await;
    let id = claim(&app);
    let steps = [
        vec![finding("linked", "cus_1"), finding("ambiguous", "cus_2")],
        vec![finding("linked", "cus_3"), finding("imported", "cus_4")],
        vec![finding("linked", "cus_5")],
    ];
    for (n, step) in steps.iter().enumerate() {
        let last = step.last().unwrap().subject.clone();
        let moved = jobs::record_step(
            &mut app.conn(),
            id,
            OWNER,
            step,
            &[],
            Checkpoint {
                phase: "customers",
                checkpoint: Some(&last),
            },
        )
        .unwrap();
        assert!(moved, "step {n} recorded");
    }
    let base = format!("/api/v1/jobs/{}/findings", job["id"].as_str().unwrap());

    let mut seen: Vec<Value> = Vec::new();
    let mut path = format!("{base}?limit=2");
    loop {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        seen.extend(page["findings"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(after) => path = format!("{base}?limit=2&after={after}"),
            None => break,
        }
    }
    let subjects: Vec<&str> = seen
        .iter()
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["cus_1", "cus_2", "cus_3", "cus_4", "cus_5"]);
    assert_eq!(
        seen[1],
        json!({
            "kind": "ambiguous",
            "subject": "cus_2",
            "customer_id": "local-cus_2",
            "external_id": "cus_2",
            "detail": {"note": "cus_2"},
            "seq": seen[1]["seq"],
        })
    );
    let seqs: Vec<i64> = seen.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let page: Value = app
        .get(&format!("{base}?kind=linked"))
        .await
        .json()
        .await
        .unwrap();
    let linked: Vec<&str> = page["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(linked, ["cus_1", "cus_3", "cus_5"]);
    let page: Value = app
        .get(&format!("{base}?kind=linked&after={}", seqs[2]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["findings"].as_array().unwrap().len(), 1);
    let page: Value = app
        .get(&format!("{base}?after={}", seqs[4]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["findings"], json!([]));
    assert!(page["next_after"].is_null());

    let progress: Value = app
        .get(&format!("/api/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        progress["progress"],
        json!({"linked": 3, "ambiguous": 1, "imported": 1})
    );
    assert_eq!(progress["phase"], "customers");

    for (query, field) in [
        ("after=-1", Some("after")),
        ("after=x", Some("after")),
        ("kind=Linked", Some("kind")),
        ("kind=", Some("kind")),
        ("limit=0", Some("limit")),
        ("limit=100000", Some("limit")),
        ("order=desc", None),
    ] {
        let response = app.get(&format!("{base}?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(error_of(response).await.1.as_deref(), field, "{query}");
    }
}

#[tokio::test]
async fn every_job_route_requires_the_token_and_writes_nothing_without_it() {
    let app = spawn_app().await;
    let id = insert(&app, JobKind::Import);
    let requests = [
        (Method::POST, "/api/v1/jobs".to_owned()),
        (Method::GET, "/api/v1/jobs".to_owned()),
        (Method::GET, format!("/api/v1/jobs/{id}")),
        (Method::GET, format!("/api/v1/jobs/{id}/findings")),
        (Method::POST, format!("/api/v1/jobs/{id}/cancel")),
    ];
    for (method, path) in requests {
        for token in [
            None,
            Some("wrong-token-0123456789abcdef"),
            Some(&TOKEN[1..]),
        ] {
            let mut request = app
                .client
                .request(method.clone(), format!("{}{path}", app.address))
                .json(&json!({"kind": "reconcile", "provider": "stripe"}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
            assert_eq!(error_of(response).await.0, "unauthorized");
        }
    }
    assert_eq!(app.count("sync_jobs"), 1);
    assert_eq!(status_in_db(&app, &id.to_string()), "queued");
}
