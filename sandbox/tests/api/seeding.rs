//! Seeding: an account that starts with customers and invoices older than its events.

use std::collections::{BTreeMap, BTreeSet};

use sandbox::{Sandbox, SandboxConfig, SeedError};
use serde_json::Value;

use crate::helpers::{start, Stripe};

const THIRTY_DAYS: i64 = 30 * 86_400;

/// Every object of a list endpoint, newest first, walked with `starting_after`.
async fn list_all(stripe: &Stripe, path: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let cursor = all
            .last()
            .map(|o| format!("&starting_after={}", o["id"].as_str().unwrap()))
            .unwrap_or_default();
        let page = stripe.get(&format!("{path}?limit=100{cursor}")).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        all.extend(page.body["data"].as_array().unwrap().iter().cloned());
        if page.body["has_more"] == false {
            return all;
        }
    }
}

#[tokio::test]
async fn a_seeded_account_starts_with_customers_and_invoices_older_than_thirty_days_and_no_events()
{
    let (sandbox, stripe) = start(SandboxConfig {
        seed_customers: 30,
        seed_invoices: 75,
        ..SandboxConfig::default()
    })
    .await;
    let now = chrono::Utc::now().timestamp();

    let customers = list_all(&stripe, "/v1/customers").await;
    assert_eq!(customers.len(), 30);
    let mut numbers = BTreeSet::new();
    for customer in &customers {
        let name = customer["name"].as_str().unwrap();
        let number: usize = name
            .strip_prefix("Seed Customer ")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(customer["email"], format!("seed{number}@example.com"));
        assert_eq!(customer["metadata"], serde_json::json!({}));
        assert!(customer["created"].as_i64().unwrap() < now - THIRTY_DAYS);
        numbers.insert(number);
    }
    assert_eq!(numbers, (1..=30).collect(), "numbered 1 to N");
    assert_eq!(customers[0]["name"], "Seed Customer 30", "newest first");

    let invoices = list_all(&stripe, "/v1/invoices").await;
    assert_eq!(invoices.len(), 75);
    let customer_ids: BTreeSet<&str> = customers
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let mut by_status = BTreeMap::<String, usize>::new();
    let mut numbers_by_customer = BTreeMap::<&str, Vec<String>>::new();
    for invoice in &invoices {
        let status = invoice["status"].as_str().unwrap();
        *by_status.entry(status.to_owned()).or_default() += 1;
        let customer = invoice["customer"].as_str().unwrap();
        assert!(
            customer_ids.contains(customer),
            "billed to a seeded customer"
        );
        assert!(invoice["created"].as_i64().unwrap() < now - THIRTY_DAYS);
        assert_eq!(invoice["lines"]["data"].as_array().unwrap().len(), 1);
        let total = invoice["total"].as_i64().unwrap();
        assert!(total > 0);
        let paid = if status == "paid" { total } else { 0 };
        assert_eq!(invoice["amount_paid"].as_i64(), Some(paid));
        assert_eq!(invoice["amount_remaining"].as_i64(), Some(total - paid));
        assert!(invoice["hosted_invoice_url"].is_string(), "finalized");
        numbers_by_customer
            .entry(customer)
            .or_default()
            .push(invoice["number"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_status.keys().collect::<Vec<_>>(), ["open", "paid"]);
    assert!(by_status["paid"] > by_status["open"], "{by_status:?}");
    assert_eq!(numbers_by_customer.len(), 30, "spread over every customer");
    for (customer, mut numbers) in numbers_by_customer {
        numbers.sort();
        let prefix = sandbox_prefix(&customers, customer);
        let expected: Vec<String> = (1..=numbers.len())
            .map(|n| format!("{prefix}-{n:04}"))
            .collect();
        assert_eq!(numbers, expected, "numbered per customer");
    }

    let events = stripe.get("/v1/events").await;
    assert_eq!(
        events.body["data"],
        serde_json::json!([]),
        "no events at all"
    );
    assert!(sandbox.events().is_empty());
}

fn sandbox_prefix<'a>(customers: &'a [Value], id: &str) -> &'a str {
    customers
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["invoice_prefix"].as_str())
        .unwrap()
}

#[tokio::test]
async fn seeding_after_start_places_the_history_before_what_exists_and_continues_the_numbers() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let live = stripe.customer("Ada", "ada@example.com").await;
    sandbox.seed(3, 4).unwrap();
    sandbox.seed(2, 0).unwrap();

    let customers = list_all(&stripe, "/v1/customers").await;
    let names: Vec<&str> = customers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Ada",
            "Seed Customer 3",
            "Seed Customer 2",
            "Seed Customer 1",
            "Seed Customer 5",
            "Seed Customer 4"
        ],
        "newest first, and seeded history is older than what was there"
    );
    let created: Vec<i64> = customers
        .iter()
        .map(|c| c["created"].as_i64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] > w[1]), "{created:?}");
    assert_eq!(customers[0]["id"], live.as_str());
    assert_eq!(list_all(&stripe, "/v1/invoices").await.len(), 4);
    assert_eq!(sandbox.events().len(), 1, "only Ada's customer.created");
    let by_email = stripe.get("/v1/customers?email=seed5@example.com").await;
    assert_eq!(by_email.body["data"][0]["name"], "Seed Customer 5");
}

#[tokio::test]
async fn seeding_invoices_without_customers_to_bill_is_refused() {
    let refused = Sandbox::start(SandboxConfig {
        seed_invoices: 5,
        ..SandboxConfig::default()
    })
    .await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("SANDBOX_SEED_INVOICES"), "{message}");

    let (sandbox, _stripe) = start(SandboxConfig::default()).await;
    assert!(matches!(
        sandbox.seed(0, 5),
        Err(SeedError::InvoicesWithoutCustomers(5))
    ));
    assert!(sandbox.invoices().is_empty());
}

#[tokio::test]
async fn an_account_of_100000_customers_lists_by_email_and_pages_from_deep_cursors() {
    let (sandbox, stripe) = start(SandboxConfig {
        seed_customers: 100_000,
        seed_invoices: 1_000,
        ..SandboxConfig::default()
    })
    .await;
    let oldest_first: Vec<String> = sandbox.customers().into_iter().map(|c| c.id).collect();
    assert_eq!(oldest_first.len(), 100_000);

    let found = stripe
        .get("/v1/customers?email=seed99999@example.com")
        .await;
    let data = found.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["name"], "Seed Customer 99999");
    assert_eq!(found.body["has_more"], false);
    let other_case = stripe
        .get("/v1/customers?email=Seed99999@example.com")
        .await;
    assert_eq!(
        other_case.body["data"],
        serde_json::json!([]),
        "case-sensitive"
    );

    // A cursor deep in the list: the next 100 older ones, whatever the depth.
    let page_ids = |a: &crate::helpers::Answer| -> Vec<String> {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let cursor = &oldest_first[50_000];
    let older = stripe
        .get(&format!("/v1/customers?limit=100&starting_after={cursor}"))
        .await;
    let expected: Vec<String> = oldest_first[49_900..50_000].iter().rev().cloned().collect();
    assert_eq!(page_ids(&older), expected);
    assert_eq!(older.body["has_more"], true);
    let newer = stripe
        .get(&format!("/v1/customers?limit=100&ending_before={cursor}"))
        .await;
    let expected: Vec<String> = oldest_first[50_001..50_101].iter().rev().cloned().collect();
    assert_eq!(page_ids(&newer), expected);
    assert_eq!(newer.body["has_more"], true);
    let near_end = stripe
        .get(&format!(
            "/v1/customers?limit=100&starting_after={}",
            oldest_first[50]
        ))
        .await;
    assert_eq!(page_ids(&near_end).len(), 50);
    assert_eq!(near_end.body["has_more"], false);

    // The oldest 5,000, page by page from a deep cursor: each once, then no more.
    let mut walked: Vec<String> = Vec::new();
    let mut cursor = oldest_first[5_000].clone();
    loop {
        let page = stripe
            .get(&format!("/v1/customers?limit=100&starting_after={cursor}"))
            .await;
        walked.extend(page_ids(&page));
        if page.body["has_more"] == false {
            break;
        }
        cursor = walked.last().unwrap().clone();
    }
    let expected: Vec<String> = oldest_first[..5_000].iter().rev().cloned().collect();
    assert_eq!(walked, expected);
}
