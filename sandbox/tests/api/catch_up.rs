//! Walking `/v1/events` forward as a catch-up poller does: `ending_before=<newest seen>`
//! with `types[]` filters, `limit=100`.

use sandbox::SandboxConfig;
use serde_json::Value;

use crate::helpers::{start, Answer, Stripe};

const TYPES: &str = "types[]=customer.created&types[]=customer.updated&types[]=customer.deleted";

fn ids(answer: &Answer) -> Vec<String> {
    answer.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of the events of the walked types after `anchor`, oldest first.
fn expected_after(events: &[Value], anchor: &str) -> Vec<String> {
    let start = events.iter().position(|e| e["id"] == anchor).unwrap() + 1;
    events[start..]
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("customer."))
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn page_after(stripe: &Stripe, cursor: &str) -> Answer {
    let answer = stripe
        .get(&format!(
            "/v1/events?limit=100&ending_before={cursor}&{TYPES}"
        ))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer
}

/// 250 customers, every fourth renamed, and an invoice item (a type not walked) every fifth.
async fn make_history(stripe: &Stripe) {
    for i in 0..250 {
        let id = stripe
            .customer(&format!("Customer {i}"), &format!("c{i}@example.com"))
            .await;
        if i % 4 == 0 {
            let renamed = stripe
                .post(&format!("/v1/customers/{id}"), &[("name", "Renamed")])
                .await;
            assert_eq!(renamed.status, 200);
        }
        if i % 5 == 0 {
            let item = stripe
                .post(
                    "/v1/invoiceitems",
                    &[("customer", &id), ("amount", "100"), ("currency", "usd")],
                )
                .await;
            assert_eq!(item.status, 200);
        }
    }
}

#[tokio::test]
async fn walking_forward_with_ending_before_sees_each_matching_event_once_in_order() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    stripe.customer("Anchor", "anchor@example.com").await;
    let anchor = sandbox.events()[0]["id"].as_str().unwrap().to_owned();
    make_history(&stripe).await;
    let expected = expected_after(&sandbox.events(), &anchor);
    assert_eq!(expected.len(), 250 + 63);

    let mut seen: Vec<String> = Vec::new();
    let mut has_more = Vec::new();
    let mut cursor = anchor.clone();
    loop {
        let page = page_after(&stripe, &cursor).await;
        let newest_first = ids(&page);
        let more = page.body["has_more"] == true;
        has_more.push((newest_first.len(), more));
        if newest_first.is_empty() {
            break;
        }
        // The page is the events just newer than the cursor, newest first.
        let oldest_first: Vec<String> = newest_first.iter().rev().cloned().collect();
        assert_eq!(
            oldest_first,
            expected[seen.len()..seen.len() + oldest_first.len()],
            "page {} starts right after the cursor",
            has_more.len()
        );
        cursor = newest_first[0].clone();
        seen.extend(oldest_first);
        if !more {
            break;
        }
    }
    assert_eq!(
        has_more,
        [(100, true), (100, true), (100, true), (13, false)],
        "has_more says whether newer events remain"
    );
    assert_eq!(seen, expected, "every event once, none skipped");

    // Caught up: nothing newer, until something happens.
    let idle = page_after(&stripe, &cursor).await;
    assert!(ids(&idle).is_empty());
    assert_eq!(idle.body["has_more"], false);
    let late = stripe.customer("Late", "late@example.com").await;
    let next = page_after(&stripe, &cursor).await;
    assert_eq!(next.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(next.body["data"][0]["data"]["object"]["id"], late.as_str());
    assert_eq!(next.body["has_more"], false);
}

#[tokio::test]
async fn an_ending_before_cursor_the_filter_leaves_out_still_marks_a_position() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let id = stripe.customer("Ada", "ada@example.com").await;
    stripe
        .post(
            "/v1/invoiceitems",
            &[("customer", &id), ("amount", "100"), ("currency", "usd")],
        )
        .await;
    stripe
        .post(&format!("/v1/customers/{id}"), &[("name", "Ada King")])
        .await;
    let events = sandbox.events();
    assert_eq!(events[1]["type"], "invoiceitem.created");
    let item_event = events[1]["id"].as_str().unwrap();

    let page = page_after(&stripe, item_event).await;
    assert_eq!(ids(&page), [events[2]["id"].as_str().unwrap()]);
    let older = stripe
        .get(&format!("/v1/events?starting_after={item_event}&{TYPES}"))
        .await;
    assert_eq!(ids(&older), [events[0]["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn ending_before_and_starting_after_together_are_refused() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    stripe.customer("Ada", "ada@example.com").await;
    let id = sandbox.events()[0]["id"].as_str().unwrap().to_owned();
    let both = stripe
        .get(&format!(
            "/v1/events?ending_before={id}&starting_after={id}"
        ))
        .await;
    assert_eq!(both.status, 400);
    assert_eq!(both.error().0, "invalid_request_error");
}
