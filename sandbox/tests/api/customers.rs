use base64::Engine;
use sandbox::SandboxConfig;

use crate::helpers::{fixture, keys, start, KEY};

#[tokio::test]
async fn a_created_customer_has_stripes_shape_a_cus_id_and_a_request_id() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let answer = stripe
        .post(
            "/v1/customers",
            &[
                ("name", "Ada Lovelace"),
                ("email", "ada@example.com"),
                ("metadata[customer_sync_id]", "c-1"),
                ("preferred_locales[0]", "en"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(answer.header("request-id").unwrap().starts_with("req_"));
    let c = &answer.body;
    assert_eq!(keys(c), keys(&fixture("customer.json")));
    assert!(c["id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(c["object"], "customer");
    assert_eq!(c["name"], "Ada Lovelace");
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["metadata"]["customer_sync_id"], "c-1");
    assert_eq!(c["preferred_locales"][0], "en");
    assert_eq!(c["livemode"], false);
    let snapshot = &sandbox.customers()[0];
    assert_eq!(snapshot.id, c["id"]);
    assert_eq!(snapshot.metadata["customer_sync_id"], "c-1");
    assert!(!snapshot.deleted);
}

#[tokio::test]
async fn update_changes_only_what_is_sent_and_an_empty_metadata_value_removes_the_key() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let created = stripe
        .post(
            "/v1/customers",
            &[
                ("name", "Ada"),
                ("email", "ada@example.com"),
                ("metadata[a]", "1"),
                ("metadata[b]", "2"),
            ],
        )
        .await;
    let path = format!("/v1/customers/{}", created.id());
    let updated = stripe
        .post(&path, &[("name", "Ada King"), ("metadata[a]", "")])
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["name"], "Ada King");
    assert_eq!(updated.body["email"], "ada@example.com", "omitted stays");
    assert_eq!(updated.body["metadata"], serde_json::json!({"b": "2"}));
    let fetched = stripe.get(&path).await;
    assert_eq!(fetched.body, updated.body);

    let cleared = stripe.post(&path, &[("metadata", ""), ("email", "")]).await;
    assert_eq!(cleared.body["metadata"], serde_json::json!({}));
    assert!(cleared.body["email"].is_null(), "an empty value unsets");
}

#[tokio::test]
async fn a_deleted_customer_answers_with_the_stub_and_cannot_be_changed() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let id = stripe.customer("Ada", "ada@example.com").await;
    let path = format!("/v1/customers/{id}");
    let deleted = stripe.delete(&path).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.body, fixture_stub(&id));
    let fetched = stripe.get(&path).await;
    assert_eq!((fetched.status, &fetched.body), (200, &fixture_stub(&id)));
    assert_eq!(stripe.delete(&path).await.status, 404);
    let update = stripe.post(&path, &[("name", "x")]).await;
    assert_eq!(update.status, 404);
    assert_eq!(
        update.error(),
        ("invalid_request_error", "resource_missing")
    );
    assert!(sandbox.customers()[0].deleted);
    let list = stripe.get("/v1/customers").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 0);
}

fn fixture_stub(id: &str) -> serde_json::Value {
    let mut stub = fixture("deleted_customer.json");
    stub["id"] = id.into();
    stub
}

#[tokio::test]
async fn lists_are_newest_first_and_page_with_limit_and_cursors() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            stripe
                .customer(&format!("n{i}"), &format!("c{i}@x.io"))
                .await,
        );
    }
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    let ids_of = |a: &crate::helpers::Answer| -> Vec<String> {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = stripe.get("/v1/customers").await;
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["url"], "/v1/customers");
    assert_eq!(all.body["has_more"], false);
    assert_eq!(ids_of(&all), newest);

    let first = stripe.get("/v1/customers?limit=2").await;
    assert_eq!(
        (ids_of(&first), &first.body["has_more"]),
        (newest[..2].to_vec(), &true.into())
    );
    let second = stripe
        .get(&format!(
            "/v1/customers?limit=2&starting_after={}",
            newest[1]
        ))
        .await;
    assert_eq!(ids_of(&second), newest[2..4].to_vec());
    assert_eq!(second.body["has_more"], true);
    let last = stripe
        .get(&format!(
            "/v1/customers?limit=2&starting_after={}",
            newest[3]
        ))
        .await;
    assert_eq!(
        (ids_of(&last), &last.body["has_more"]),
        (newest[4..].to_vec(), &false.into())
    );
    let before = stripe
        .get(&format!(
            "/v1/customers?limit=2&ending_before={}",
            newest[4]
        ))
        .await;
    assert_eq!(ids_of(&before), newest[2..4].to_vec());
    assert_eq!(before.body["has_more"], true);

    for bad in ["0", "101", "ten"] {
        let answer = stripe.get(&format!("/v1/customers?limit={bad}")).await;
        assert_eq!(answer.status, 400, "limit={bad}");
        assert_eq!(answer.body["error"]["param"], "limit");
    }
}

#[tokio::test]
async fn the_email_filter_is_exact_and_case_sensitive() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let ada = stripe.customer("Ada", "ada@example.com").await;
    stripe.customer("Ada upper", "Ada@example.com").await;
    stripe.customer("Bob", "bob@example.com").await;
    let found = stripe.get("/v1/customers?email=ada%40example.com").await;
    let data = found.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], ada.as_str());
}

#[tokio::test]
async fn unknown_and_missing_parameters_get_stripes_400s() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let unknown = stripe
        .post("/v1/customers", &[("name", "Ada"), ("nickname", "A")])
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(
        unknown.error(),
        ("invalid_request_error", "parameter_unknown")
    );
    assert_eq!(unknown.body["error"]["param"], "nickname");
    assert!(unknown.body["error"]["doc_url"]
        .as_str()
        .unwrap()
        .ends_with("parameter-unknown"));
    let missing = stripe.post("/v1/invoices", &[]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.error(),
        ("invalid_request_error", "parameter_missing")
    );
    assert_eq!(missing.body["error"]["param"], "customer");
    let bad_email = stripe
        .post("/v1/customers", &[("email", "not-an-email")])
        .await;
    assert_eq!(bad_email.status, 400);
    assert_eq!(bad_email.body["error"]["param"], "email");
    let long_key = "k".repeat(41);
    let bad_metadata = stripe
        .post("/v1/customers", &[(&format!("metadata[{long_key}]"), "v")])
        .await;
    assert_eq!(bad_metadata.status, 400);
    let json = stripe
        .send(
            stripe
                .request(reqwest::Method::POST, "/v1/customers")
                .json(&serde_json::json!({"name": "Ada"})),
        )
        .await;
    assert_eq!(json.status, 400, "Stripe takes form bodies only");
    assert!(sandbox.customers().is_empty(), "bad input changes nothing");
    assert!(sandbox.events().is_empty());
}

#[tokio::test]
async fn only_test_keys_are_accepted_by_bearer_or_basic_auth() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let url = format!("{}/v1/customers", stripe.base);
    let none = stripe.send(stripe.http.get(&url)).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error().0, "invalid_request_error");
    assert!(none.header("request-id").unwrap().starts_with("req_"));
    for key in [
        "sk_live_abcdef123456",
        "pk_test_abcdef",
        "sk_test_",
        "nonsense",
    ] {
        let answer = stripe.send(stripe.http.get(&url).bearer_auth(key)).await;
        assert_eq!(answer.status, 401, "{key}");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("abcdef123456"),
            "the key is masked: {message}"
        );
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"));
    let answer = stripe
        .send(
            stripe
                .http
                .post(&url)
                .header("Authorization", format!("Basic {basic}"))
                .form(&[("name", "Basic")]),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(sandbox.customers().len(), 1);
    let rejected = stripe
        .send(
            stripe
                .http
                .post(&url)
                .bearer_auth("sk_live_x")
                .form(&[("name", "x")]),
        )
        .await;
    assert_eq!(rejected.status, 401);
    assert_eq!(sandbox.customers().len(), 1);
}

#[tokio::test]
async fn unknown_objects_and_urls_get_404s() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let missing = stripe.get("/v1/customers/cus_nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.error(),
        ("invalid_request_error", "resource_missing")
    );
    assert_eq!(
        missing.body["error"]["message"],
        "No such customer: 'cus_nope'"
    );
    let url = stripe.get("/v1/charges_of_the_light_brigade").await;
    assert_eq!(url.status, 404);
    assert!(url.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Unrecognized request URL"));
    let cursor = stripe.get("/v1/customers?starting_after=cus_nope").await;
    assert_eq!(cursor.status, 404);
}

#[tokio::test]
async fn search_finds_customers_by_email_name_and_metadata_a_page_at_a_time() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let ada = stripe
        .post(
            "/v1/customers",
            &[
                ("name", "Ada Lovelace"),
                ("email", "ada@example.com"),
                ("metadata[customer_sync_id]", "c-1"),
            ],
        )
        .await
        .id();
    let grace = stripe
        .post(
            "/v1/customers",
            &[("name", "Grace Hopper"), ("email", "grace@example.com")],
        )
        .await
        .id();
    let search = |query: &str| {
        let query = query.to_owned();
        let stripe = &stripe;
        async move {
            let answer = stripe
                .send(
                    stripe
                        .request(reqwest::Method::GET, "/v1/customers/search")
                        .query(&[("query", query.as_str())]),
                )
                .await;
            assert_eq!(answer.status, 200, "{query}: {:?}", answer.body);
            answer.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("email:'ADA@example.com'").await, [ada.as_str()]);
    assert_eq!(
        search("metadata['customer_sync_id']:'c-1'").await,
        [ada.as_str()]
    );
    assert_eq!(search("name~\"hop\"").await, [grace.as_str()]);
    assert_eq!(
        search("email:'ada@example.com' OR name~'Grace'").await,
        [grace.as_str(), ada.as_str()]
    );
    assert!(search("email:'ada@example.com' AND name~'Grace'")
        .await
        .is_empty());
    assert_eq!(search("-name~'Grace'").await, [ada.as_str()]);

    let first = stripe
        .send(
            stripe
                .request(reqwest::Method::GET, "/v1/customers/search")
                .query(&[
                    ("query", "email~'example'"),
                    ("limit", "1"),
                    ("expand[]", "total_count"),
                ]),
        )
        .await;
    assert_eq!(first.body["object"], "search_result");
    assert_eq!(first.body["url"], "/v1/customers/search");
    assert_eq!(
        (&first.body["has_more"], &first.body["total_count"]),
        (&true.into(), &2.into())
    );
    let page = first.body["next_page"].as_str().unwrap();
    let second = stripe
        .send(
            stripe
                .request(reqwest::Method::GET, "/v1/customers/search")
                .query(&[("query", "email~'example'"), ("limit", "1"), ("page", page)]),
        )
        .await;
    assert_eq!(second.body["data"][0]["id"], ada.as_str());
    assert_eq!(
        (&second.body["has_more"], &second.body["next_page"]),
        (&false.into(), &serde_json::Value::Null)
    );

    for bad in ["", "nickname:x", "name:a AND name:b OR name:c", "name~ab"] {
        let refused = stripe
            .send(
                stripe
                    .request(reqwest::Method::GET, "/v1/customers/search")
                    .query(&[("query", bad)]),
            )
            .await;
        assert_eq!(refused.status, 400, "{bad:?}");
        assert_eq!(refused.body["error"]["param"], "query", "{bad:?}");
    }
    // The path is search, not a customer id.
    let no_query = stripe.get("/v1/customers/search").await;
    assert_eq!(no_query.error().1, "parameter_missing");

    stripe.delete(&format!("/v1/customers/{grace}")).await;
    assert!(
        search("name~'Grace'").await.is_empty(),
        "deleted customers are not found"
    );
}

#[tokio::test]
async fn search_finds_invoices_by_customer_and_status() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let ada = stripe.customer("Ada", "ada@example.com").await;
    let draft = stripe
        .post("/v1/invoices", &[("customer", &ada)])
        .await
        .id();
    let answer = stripe
        .send(
            stripe
                .request(reqwest::Method::GET, "/v1/invoices/search")
                .query(&[("query", format!("customer:'{ada}' AND status:'draft'"))]),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["data"][0]["id"], draft.as_str());
    assert_eq!(answer.body["url"], "/v1/invoices/search");
}

#[tokio::test]
async fn parameters_stripe_accepts_on_customers_are_accepted_and_unknown_ones_still_refused() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let created = stripe
        .post(
            "/v1/customers",
            &[
                ("name", "Ada"),
                ("business_name", "Analytical Engines"),
                ("individual_name", "Ada Lovelace"),
                ("invoice_settings[footer]", "Thanks"),
                ("shipping[name]", "Ada"),
                ("shipping[address][line1]", "1 Engine Way"),
                ("tax[validate_location]", "deferred"),
                ("tax_id_data[0][type]", "eu_vat"),
                ("tax_id_data[0][value]", "DE123456789"),
                ("payment_method", "pm_card_visa"),
                ("validate", "true"),
                ("invoice_prefix", "ADA1"),
                ("next_invoice_sequence", "7"),
                ("tax_exempt", ""),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.body["invoice_prefix"], "ADA1");
    assert_eq!(created.body["next_invoice_sequence"], 7);
    assert_eq!(
        created.body["tax_exempt"], "none",
        "an empty value unsets it"
    );
    let id = created.id();
    let updated = stripe
        .post(
            &format!("/v1/customers/{id}"),
            &[
                ("default_source", "src_x"),
                ("cash_balance[settings][reconciliation_mode]", "automatic"),
            ],
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    // The invoice number follows the prefix and sequence given.
    let invoice = stripe.post("/v1/invoices", &[("customer", &id)]).await.id();
    stripe
        .post(
            "/v1/invoiceitems",
            &[
                ("customer", &id),
                ("amount", "100"),
                ("currency", "usd"),
                ("invoice", &invoice),
            ],
        )
        .await;
    let open = stripe
        .post(&format!("/v1/invoices/{invoice}/finalize"), &[])
        .await;
    assert_eq!(open.body["number"], "ADA1-0007");

    for (path, param) in [
        ("/v1/customers".to_owned(), "nickname"),
        (format!("/v1/customers/{id}"), "payment_method"),
        ("/v1/customers".to_owned(), "invoice_prefix"),
    ] {
        let value = if param == "invoice_prefix" {
            "lower"
        } else {
            "x"
        };
        let refused = stripe.post(&path, &[(param, value)]).await;
        assert_eq!(refused.status, 400, "{path} {param}");
    }
}

#[tokio::test]
async fn with_a_search_delay_a_new_customer_reaches_search_only_after_it() {
    let (_sandbox, stripe) = start(SandboxConfig {
        search_delay_ms: 300,
        ..SandboxConfig::default()
    })
    .await;
    let started = std::time::Instant::now();
    let ada = stripe.customer("Ada", "ada@example.com").await;
    let search = || async {
        stripe
            .send(
                stripe
                    .request(reqwest::Method::GET, "/v1/customers/search")
                    .query(&[("query", "email:'ada@example.com'")]),
            )
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .len()
    };
    let first = search().await;
    let first_at = started.elapsed();
    // Polled with a deadline: found once the delay passed, never before.
    let found = crate::helpers::eventually(
        "the customer to reach search",
        std::time::Duration::from_secs(10),
        || async { (search().await == 1).then(std::time::Instant::now) },
    )
    .await;
    if first_at < std::time::Duration::from_millis(300) {
        assert_eq!(first, 0, "found before the delay");
    }
    assert!(found.duration_since(started) >= std::time::Duration::from_millis(300));
    // Listing is not delayed.
    let listed = stripe.get("/v1/customers").await;
    assert_eq!(listed.body["data"][0]["id"], ada.as_str());
}

#[tokio::test]
async fn a_stripe_version_stripe_never_released_is_refused_and_changes_nothing() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let create_with = |version: &str| {
        stripe.send(
            stripe
                .request(reqwest::Method::POST, "/v1/customers")
                .header("Stripe-Version", version)
                .form(&[("name", "Ada")]),
        )
    };
    for version in [
        "2099-01-01",
        "2026-10-29.endive",
        "2026-10-28.basil",
        "latest",
        "2021-02-30",
    ] {
        let refused = create_with(version).await;
        assert_eq!(refused.status, 400, "{version:?}: {:?}", refused.body);
        assert_eq!(refused.error().0, "invalid_request_error");
        assert_eq!(
            refused.body["error"]["message"],
            format!("Invalid Stripe API version: {version}")
        );
    }
    assert!(
        sandbox.customers().is_empty(),
        "a refused version changes nothing"
    );
    for version in [
        shared::stripe::API_VERSION,
        "2026-11-18.endive",
        "2024-06-20",
        "2020-08-27",
    ] {
        let accepted = create_with(version).await;
        assert_eq!(accepted.status, 200, "{version}: {:?}", accepted.body);
        assert_eq!(accepted.header("stripe-version"), Some(version));
    }
}
