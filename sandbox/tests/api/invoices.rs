use sandbox::SandboxConfig;

use crate::helpers::{fixture, keys, start, Answer, Stripe};

/// Adds an item of `amount` cents to the draft `invoice`.
async fn add_item(stripe: &Stripe, customer: &str, invoice: &str, amount: &str) {
    let item = stripe
        .post(
            "/v1/invoiceitems",
            &[
                ("customer", customer),
                ("amount", amount),
                ("currency", "usd"),
                ("invoice", invoice),
            ],
        )
        .await;
    assert_eq!(item.status, 200, "{:?}", item.body);
}

async fn draft_with_amount(stripe: &Stripe, customer: &str, amount: &str) -> Answer {
    let draft = stripe.post("/v1/invoices", &[("customer", customer)]).await;
    assert_eq!(draft.status, 200, "{:?}", draft.body);
    add_item(stripe, customer, &draft.id(), amount).await;
    stripe.get(&format!("/v1/invoices/{}", draft.id())).await
}

#[tokio::test]
async fn an_invoice_goes_from_draft_to_open_to_paid_with_amounts_number_and_timestamps() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "1500").await;
    let inv = &draft.body;
    let fixture_keys = keys(&fixture("invoice.json"));
    let missing: Vec<_> = fixture_keys
        .iter()
        .filter(|k| inv.get(k.as_str()).is_none())
        .collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert!(inv["id"].as_str().unwrap().starts_with("in_"));
    assert_eq!(inv["status"], "draft");
    assert!(inv["number"].is_null());
    assert!(inv["hosted_invoice_url"].is_null() && inv["invoice_pdf"].is_null());
    assert_eq!(
        (
            &inv["amount_due"],
            &inv["amount_paid"],
            &inv["amount_remaining"],
            &inv["total"],
            &inv["subtotal"]
        ),
        (
            &1500.into(),
            &0.into(),
            &1500.into(),
            &1500.into(),
            &1500.into()
        )
    );
    assert_eq!(inv["customer"], customer.as_str());
    assert_eq!(inv["customer_email"], "ada@example.com");
    assert_eq!(inv["lines"]["data"][0]["amount"], 1500);

    let path = format!("/v1/invoices/{}", draft.id());
    let open = stripe.post(&format!("{path}/finalize"), &[]).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.body["status"], "open");
    assert!(open.body["number"].as_str().unwrap().ends_with("-0001"));
    assert!(open.body["hosted_invoice_url"].is_string());
    assert!(open.body["invoice_pdf"].is_string());
    assert!(open.body["status_transitions"]["finalized_at"].is_i64());
    assert!(open.body["status_transitions"]["paid_at"].is_null());

    let paid = stripe.post(&format!("{path}/pay"), &[]).await;
    assert_eq!(paid.body["status"], "paid");
    assert_eq!(
        (&paid.body["amount_paid"], &paid.body["amount_remaining"]),
        (&1500.into(), &0.into())
    );
    assert!(paid.body["status_transitions"]["paid_at"].is_i64());

    let types: Vec<String> = sandbox
        .events()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("invoice"))
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "invoice.created",
            "invoiceitem.created",
            "invoice.updated",
            "invoice.finalized",
            "invoice.paid",
            "invoice.payment_succeeded"
        ]
    );
    let updated = sandbox
        .events()
        .into_iter()
        .find(|e| e["type"] == "invoice.updated")
        .unwrap();
    assert_eq!(updated["data"]["previous_attributes"]["amount_due"], 0);
    let paid_event = sandbox
        .events()
        .into_iter()
        .find(|e| e["type"] == "invoice.paid")
        .unwrap();
    assert_eq!(paid_event["data"]["object"]["status"], "paid");
    assert_eq!(paid_event["data"]["object"]["amount_remaining"], 0);

    // A second invoice of the customer gets the next number.
    let second = draft_with_amount(&stripe, &customer, "10").await;
    let second = stripe
        .post(&format!("/v1/invoices/{}/finalize", second.id()), &[])
        .await;
    assert!(second.body["number"].as_str().unwrap().ends_with("-0002"));
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_void_and_uncollectible_work() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "700").await;
    let path = format!("/v1/invoices/{}", draft.id());
    let void_draft = stripe.post(&format!("{path}/void"), &[]).await;
    assert_eq!(void_draft.status, 400);
    assert_eq!(void_draft.error().0, "invalid_request_error");
    stripe.post(&format!("{path}/finalize"), &[]).await;
    assert_eq!(
        stripe.post(&format!("{path}/finalize"), &[]).await.status,
        400
    );
    assert_eq!(
        stripe.delete(&path).await.status,
        400,
        "only drafts are deleted"
    );
    let uncollectible = stripe
        .post(&format!("{path}/mark_uncollectible"), &[])
        .await;
    assert_eq!(uncollectible.body["status"], "uncollectible");
    assert!(uncollectible.body["status_transitions"]["marked_uncollectible_at"].is_i64());
    let void = stripe.post(&format!("{path}/void"), &[]).await;
    assert_eq!(void.body["status"], "void");
    assert!(void.body["status_transitions"]["voided_at"].is_i64());
    let pay_void = stripe.post(&format!("{path}/pay"), &[]).await;
    assert_eq!(pay_void.status, 400);
    assert_eq!(stripe.post(&format!("{path}/void"), &[]).await.status, 400);
    assert_eq!(
        stripe.post("/v1/invoices/in_nope/pay", &[]).await.status,
        404
    );
}

#[tokio::test]
async fn pending_items_join_an_invoice_only_when_asked_and_a_zero_invoice_is_paid_on_finalize() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    for amount in ["100", "250"] {
        let item = stripe
            .post(
                "/v1/invoiceitems",
                &[
                    ("customer", &customer),
                    ("amount", amount),
                    ("currency", "eur"),
                ],
            )
            .await;
        assert_eq!(item.status, 200, "{:?}", item.body);
        assert!(item.body["invoice"].is_null());
    }
    let excluded = stripe
        .post("/v1/invoices", &[("customer", &customer)])
        .await;
    assert_eq!(
        excluded.body["amount_due"], 0,
        "Stripe's default is exclude"
    );
    assert_eq!(excluded.body["currency"], "eur", "the customer's currency");
    let zero = stripe
        .post(&format!("/v1/invoices/{}/finalize", excluded.id()), &[])
        .await;
    assert_eq!(zero.body["status"], "paid");
    let included = stripe
        .post(
            "/v1/invoices",
            &[
                ("customer", &customer),
                ("pending_invoice_items_behavior", "include"),
            ],
        )
        .await;
    assert_eq!(included.body["amount_due"], 350);
    assert_eq!(included.body["lines"]["data"].as_array().unwrap().len(), 2);
    let pending = stripe.get("/v1/invoiceitems?pending=true").await;
    assert_eq!(pending.body["data"].as_array().unwrap().len(), 0);
    assert_eq!(sandbox.invoices().len(), 2);
}

#[tokio::test]
async fn invoices_list_by_customer_and_status_and_drafts_can_be_deleted() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let ada = stripe.customer("Ada", "ada@example.com").await;
    let bob = stripe.customer("Bob", "bob@example.com").await;
    let a1 = draft_with_amount(&stripe, &ada, "100").await.id();
    let a2 = draft_with_amount(&stripe, &ada, "200").await.id();
    let b1 = draft_with_amount(&stripe, &bob, "300").await.id();
    stripe
        .post(&format!("/v1/invoices/{a2}/finalize"), &[])
        .await;
    let ids = |a: Answer| -> Vec<String> {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(stripe.get("/v1/invoices").await),
        [b1.clone(), a2.clone(), a1.clone()]
    );
    assert_eq!(
        ids(stripe.get(&format!("/v1/invoices?customer={ada}")).await),
        [a2.clone(), a1.clone()]
    );
    assert_eq!(ids(stripe.get("/v1/invoices?status=open").await), [a2]);
    let deleted = stripe.delete(&format!("/v1/invoices/{b1}")).await;
    assert_eq!(
        deleted.body,
        serde_json::json!({"id": b1, "object": "invoice", "deleted": true})
    );
    assert_eq!(stripe.get(&format!("/v1/invoices/{b1}")).await.status, 404);
    assert!(sandbox
        .events()
        .iter()
        .any(|e| e["type"] == "invoice.deleted"));
    let unknown_customer = stripe
        .post("/v1/invoices", &[("customer", "cus_nope")])
        .await;
    assert_eq!(unknown_customer.status, 404);
    assert_eq!(unknown_customer.body["error"]["param"], "customer");
}

#[tokio::test]
async fn updating_an_invoice_emits_invoice_updated_with_the_previous_values() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "100").await;
    let path = format!("/v1/invoices/{}", draft.id());
    let updated = stripe
        .post(
            &path,
            &[("metadata[order]", "42"), ("description", "March")],
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["metadata"]["order"], "42");
    let event = sandbox.events().pop().unwrap();
    assert_eq!(event["type"], "invoice.updated");
    let previous = event["data"]["previous_attributes"].as_object().unwrap();
    assert_eq!(previous.get("description"), Some(&serde_json::Value::Null));
    assert_eq!(
        event["data"]["previous_attributes"]["metadata"],
        serde_json::json!({"order": null})
    );
    stripe.post(&format!("{path}/finalize"), &[]).await;
    let late = stripe.post(&path, &[("description", "April")]).await;
    assert_eq!(
        late.status, 200,
        "a description stays editable after finalization"
    );
    let metadata = stripe.post(&path, &[("metadata[order]", "43")]).await;
    assert_eq!(metadata.status, 200, "metadata can always change");
}

/// The properties Stripe's OpenAPI description requires of each object
/// (`../shared/reference/stripe-openapi/spec3.json`, `components.schemas.*.required`).
const INVOICEITEM_REQUIRED: &[&str] = &[
    "amount",
    "currency",
    "customer",
    "customer_account",
    "date",
    "description",
    "discountable",
    "discounts",
    "id",
    "invoice",
    "livemode",
    "metadata",
    "object",
    "parent",
    "period",
    "pricing",
    "proration",
    "quantity",
    "quantity_decimal",
    "tax_rates",
    "test_clock",
];
const LINE_ITEM_REQUIRED: &[&str] = &[
    "amount",
    "currency",
    "description",
    "discount_amounts",
    "discountable",
    "discounts",
    "id",
    "invoice",
    "livemode",
    "metadata",
    "object",
    "parent",
    "period",
    "pretax_credit_amounts",
    "pricing",
    "quantity",
    "quantity_decimal",
    "subscription",
    "subtotal",
    "taxes",
];

fn missing<'a>(object: &serde_json::Value, required: &[&'a str]) -> Vec<&'a str> {
    required
        .iter()
        .copied()
        .filter(|k| object.get(k).is_none())
        .collect()
}

#[tokio::test]
async fn invoice_items_and_lines_carry_every_property_stripe_requires() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let invoice = draft_with_amount(&stripe, &customer, "1500").await;
    let line = &invoice.body["lines"]["data"][0];
    assert_eq!(missing(line, LINE_ITEM_REQUIRED), Vec::<&str>::new());
    assert_eq!(line["quantity_decimal"], "1");
    let items = stripe
        .get(&format!("/v1/invoiceitems?invoice={}", invoice.id()))
        .await;
    let item = &items.body["data"][0];
    assert_eq!(missing(item, INVOICEITEM_REQUIRED), Vec::<&str>::new());
    assert_eq!(
        (
            &item["tax_rates"],
            &item["discounts"],
            &item["pricing"]["type"]
        ),
        (
            &serde_json::json!([]),
            &serde_json::json!([]),
            &serde_json::json!("price_details")
        )
    );
}

#[tokio::test]
async fn an_invoice_s_lines_url_lists_its_lines_a_page_at_a_time() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = stripe
        .post("/v1/invoices", &[("customer", &customer)])
        .await;
    for amount in ["100", "200", "300"] {
        add_item(&stripe, &customer, &draft.id(), amount).await;
    }
    let invoice = stripe.get(&format!("/v1/invoices/{}", draft.id())).await;
    let url = invoice.body["lines"]["url"].as_str().unwrap().to_owned();
    let all = stripe.get(&url).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["url"], url.as_str());
    assert_eq!(all.body["data"], invoice.body["lines"]["data"]);
    assert_eq!(all.body["has_more"], false);

    let first = stripe.get(&format!("{url}?limit=2")).await;
    let amounts = |answer: &crate::helpers::Answer| -> Vec<i64> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["amount"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        (amounts(&first), &first.body["has_more"]),
        (vec![100, 200], &true.into())
    );
    let second_id = first.body["data"][1]["id"].as_str().unwrap();
    let rest = stripe
        .get(&format!("{url}?limit=2&starting_after={second_id}"))
        .await;
    assert_eq!(
        (amounts(&rest), &rest.body["has_more"]),
        (vec![300], &false.into())
    );
    let third_id = rest.body["data"][0]["id"].as_str().unwrap();
    let before = stripe
        .get(&format!("{url}?limit=1&ending_before={third_id}"))
        .await;
    assert_eq!(
        (amounts(&before), &before.body["has_more"]),
        (vec![200], &true.into())
    );

    let unknown = stripe.get(&format!("{url}?starting_after=il_nope")).await;
    assert_eq!(unknown.status, 404);
    let bad = stripe.get(&format!("{url}?limit=0")).await;
    assert_eq!(bad.status, 400);
    let nowhere = stripe.get("/v1/invoices/in_nope/lines").await;
    assert_eq!(
        (nowhere.status, nowhere.error().1),
        (404, "resource_missing")
    );
}

#[tokio::test]
async fn expand_customer_returns_the_customer_object_on_an_invoice_and_in_a_list() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let invoice = draft_with_amount(&stripe, &customer, "1500").await;
    let path = format!("/v1/invoices/{}", invoice.id());
    assert_eq!(
        invoice.body["customer"],
        customer.as_str(),
        "an id by default"
    );

    let expanded = stripe.get(&format!("{path}?expand[]=customer")).await;
    assert_eq!(expanded.status, 200, "{:?}", expanded.body);
    assert_eq!(expanded.body["customer"]["object"], "customer");
    assert_eq!(expanded.body["customer"]["id"], customer.as_str());
    assert_eq!(expanded.body["customer"]["email"], "ada@example.com");

    let list = stripe.get("/v1/invoices?expand[]=data.customer").await;
    assert_eq!(list.body["data"][0]["customer"]["id"], customer.as_str());
    let plain = stripe.get("/v1/invoices").await;
    assert_eq!(plain.body["data"][0]["customer"], customer.as_str());

    for bad in [
        format!("{path}?expand[]=nothing"),
        "/v1/invoices?expand[]=customer".to_owned(),
    ] {
        let refused = stripe.get(&bad).await;
        assert_eq!(refused.status, 400, "{bad}");
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot be expanded"),
            "{:?}",
            refused.body
        );
    }

    stripe.delete(&format!("/v1/customers/{customer}")).await;
    let gone = stripe.get(&format!("{path}?expand[]=customer")).await;
    assert_eq!(gone.body["customer"]["deleted"], true);
}

#[tokio::test]
async fn a_declining_test_card_fails_the_payment_with_402_and_invoice_payment_failed() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "1500").await;
    let pay = format!("/v1/invoices/{}/pay", draft.id());

    let declined = stripe
        .post_with_key(
            &pay,
            &[("payment_method", "pm_card_chargeDeclined")],
            "pay-1",
        )
        .await;
    assert_eq!(declined.status, 402, "{:?}", declined.body);
    let error = &declined.body["error"];
    assert_eq!(
        (&error["type"], &error["code"], &error["decline_code"]),
        (
            &"card_error".into(),
            &"card_declined".into(),
            &"generic_decline".into()
        )
    );
    // The attempt happened: the answer is kept under the key.
    let replay = stripe
        .post_with_key(
            &pay,
            &[("payment_method", "pm_card_chargeDeclined")],
            "pay-1",
        )
        .await;
    assert_eq!(
        (replay.status, replay.header("idempotent-replayed")),
        (402, Some("true"))
    );
    let invoice = stripe.get(&format!("/v1/invoices/{}", draft.id())).await;
    assert_eq!(
        (
            &invoice.body["status"],
            &invoice.body["attempt_count"],
            &invoice.body["amount_paid"]
        ),
        (&"open".into(), &1.into(), &0.into()),
        "finalized by the attempt, still open"
    );
    assert_eq!(sandbox.count_events("invoice.payment_failed"), 1);

    let poor = stripe
        .post(
            &pay,
            &[("payment_method", "pm_card_chargeDeclinedInsufficientFunds")],
        )
        .await;
    assert_eq!(poor.body["error"]["decline_code"], "insufficient_funds");
    let paid = stripe
        .post(&pay, &[("payment_method", "pm_card_visa")])
        .await;
    assert_eq!(paid.status, 200);
    assert_eq!(
        (&paid.body["status"], &paid.body["attempt_count"]),
        (&"paid".into(), &3.into())
    );
    assert_eq!(sandbox.count_events("invoice.payment_failed"), 2);
}

#[tokio::test]
async fn description_footer_and_metadata_stay_editable_after_finalization() {
    let (sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "1500").await;
    let path = format!("/v1/invoices/{}", draft.id());
    let open = stripe.post(&format!("{path}/finalize"), &[]).await;
    assert_eq!(open.body["status"], "open");
    let before = sandbox.count_events("invoice.updated");

    let updated = stripe
        .post(
            &path,
            &[
                ("description", "Thanks"),
                ("footer", "Pay within 30 days"),
                ("metadata[order]", "42"),
            ],
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(
        (
            &updated.body["description"],
            &updated.body["footer"],
            &updated.body["metadata"]["order"]
        ),
        (&"Thanks".into(), &"Pay within 30 days".into(), &"42".into())
    );
    assert_eq!(updated.body["status"], "open");
    assert_eq!(sandbox.count_events("invoice.updated"), before + 1);
    let event = sandbox
        .events()
        .into_iter()
        .find(|e| e["type"] == "invoice.updated" && e["data"]["object"]["footer"].is_string())
        .expect("the update's event");
    assert_eq!(
        event["data"]["previous_attributes"]["footer"],
        serde_json::Value::Null
    );
    assert_eq!(
        event["data"]["previous_attributes"]["description"],
        serde_json::Value::Null
    );

    // Still refused: what Stripe never accepts on an invoice update.
    let refused = stripe.post(&path, &[("amount_due", "1")]).await;
    assert_eq!(refused.error().1, "parameter_unknown");
}

#[tokio::test]
async fn parameters_stripe_accepts_on_invoices_and_items_are_accepted_and_honoured_where_they_show()
{
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let due = (chrono::Utc::now().timestamp() + 10 * 86_400).to_string();
    let invoice = stripe
        .post(
            "/v1/invoices",
            &[
                ("customer", customer.as_str()),
                ("collection_method", "send_invoice"),
                ("due_date", due.as_str()),
                ("statement_descriptor", "ENGINES"),
                ("custom_fields[0][name]", "PO"),
                ("custom_fields[0][value]", "42"),
                ("default_tax_rates[0]", "txr_1"),
                ("discounts[0][coupon]", "co_1"),
                ("payment_settings[payment_method_types][0]", "card"),
            ],
        )
        .await;
    assert_eq!(invoice.status, 200, "{:?}", invoice.body);
    assert_eq!(invoice.body["due_date"], due.parse::<i64>().unwrap());
    let id = invoice.id();
    let item = stripe
        .post(
            "/v1/invoiceitems",
            &[
                ("customer", customer.as_str()),
                ("currency", "usd"),
                ("invoice", id.as_str()),
                ("unit_amount_decimal", "250.5"),
                ("quantity", "4"),
                ("discountable", "false"),
                ("tax_rates[0]", "txr_1"),
                ("period[start]", "1700000000"),
                ("period[end]", "1700086400"),
            ],
        )
        .await;
    assert_eq!(item.status, 200, "{:?}", item.body);
    assert_eq!(item.body["amount"], 1002, "250.5 x 4");
    let updated = stripe
        .post(
            &format!("/v1/invoices/{id}"),
            &[("statement_descriptor", "X"), ("footer", "f")],
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);

    let listed = |query: String| {
        let stripe = &stripe;
        async move {
            let answer = stripe.get(&format!("/v1/invoices?{query}")).await;
            assert_eq!(answer.status, 200, "{query}: {:?}", answer.body);
            answer.body["data"].as_array().unwrap().len()
        }
    };
    assert_eq!(listed(format!("due_date[gte]={due}")).await, 1);
    assert_eq!(listed(format!("due_date[gt]={due}")).await, 0);
    assert_eq!(listed("subscription=sub_1".into()).await, 0);
    assert_eq!(listed(String::new()).await, 1);

    let both = stripe
        .post(
            "/v1/invoiceitems",
            &[
                ("customer", customer.as_str()),
                ("currency", "usd"),
                ("amount", "1"),
                ("unit_amount_decimal", "1"),
            ],
        )
        .await;
    assert_eq!(both.status, 400);
    let unknown = stripe
        .post(
            "/v1/invoices",
            &[("customer", customer.as_str()), ("colour", "red")],
        )
        .await;
    assert_eq!(unknown.error().1, "parameter_unknown");
}

#[tokio::test]
async fn a_drafts_number_and_payment_terms_can_be_changed_and_the_number_is_kept() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "1500").await;
    let path = format!("/v1/invoices/{}", draft.id());
    let terms = stripe
        .post(
            &path,
            &[
                ("number", "ACME-2026-7"),
                ("collection_method", "send_invoice"),
                ("days_until_due", "14"),
            ],
        )
        .await;
    assert_eq!(terms.status, 200, "{:?}", terms.body);
    assert_eq!(terms.body["number"], "ACME-2026-7");
    assert_eq!(terms.body["collection_method"], "send_invoice");
    assert_eq!(
        terms.body["due_date"].as_i64().unwrap() - terms.body["created"].as_i64().unwrap(),
        14 * 86_400
    );
    let half = stripe
        .post(&path, &[("collection_method", "send_invoice")])
        .await;
    assert_eq!(half.status, 400, "terms are given whole: {:?}", half.body);

    let open = stripe.post(&format!("{path}/finalize"), &[]).await;
    assert_eq!(open.body["number"], "ACME-2026-7", "a given number is kept");
    for (param, value) in [
        ("number", "OTHER-1"),
        ("days_until_due", "30"),
        ("collection_method", "charge_automatically"),
    ] {
        let refused = stripe.post(&path, &[(param, value)]).await;
        assert_eq!(refused.status, 400, "{param}: {:?}", refused.body);
        assert_eq!(refused.error().0, "invalid_request_error");
        assert_eq!(refused.body["error"]["param"], param);
    }
    let after = stripe.get(&path).await;
    assert_eq!(after.body["number"], "ACME-2026-7");
    assert_eq!(after.body["collection_method"], "send_invoice");
}

#[tokio::test]
async fn an_invoice_for_a_subscription_the_account_lacks_is_a_404_and_a_mandate_is_accepted() {
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let missing = stripe
        .post(
            "/v1/invoices",
            &[("customer", &customer), ("subscription", "sub_nope")],
        )
        .await;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert_eq!(missing.body["error"]["param"], "subscription");
    let open = draft_with_amount(&stripe, &customer, "500").await;
    stripe
        .post(&format!("/v1/invoices/{}/finalize", open.id()), &[])
        .await;
    let paid = stripe
        .post(
            &format!("/v1/invoices/{}/pay", open.id()),
            &[("mandate", "mandate_123")],
        )
        .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(paid.body["status"], "paid");
}

#[tokio::test]
async fn an_invoices_embedded_lines_carry_no_total_count() {
    // Stripe's invoice (the description and the recorded fixture) has object, data,
    // has_more and url in `lines`, nothing more.
    let (_sandbox, stripe) = start(SandboxConfig::default()).await;
    let customer = stripe.customer("Ada", "ada@example.com").await;
    let draft = draft_with_amount(&stripe, &customer, "500").await;
    assert_eq!(
        keys(&draft.body["lines"]),
        keys(&fixture("invoice.json")["lines"])
    );
}
