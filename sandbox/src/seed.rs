//! Seeding: customers and invoices that predate the 30 days Stripe keeps events for, so
//! they exist without a single event, as in an account adopted after years of use.

use std::collections::BTreeMap;

use crate::store::{now, Customer, Invoice, InvoiceItem, InvoiceStatus, Store};

/// How far back the newest seeded object lies: past the 30 days of events.
const HISTORY_AGE_SECS: i64 = 31 * 86_400;

/// Why seeding was refused.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("seeding {0} invoices needs at least one seeded customer to bill")]
    InvoicesWithoutCustomers(usize),
}

/// Adds `customers` customers ("Seed Customer 17", `seed17@example.com`, no metadata) and
/// `invoices` invoices spread over them (two thirds paid, one third open, one item each,
/// finalized and numbered), all older than anything already there and than 30 days, and
/// no events. Numbers continue from an earlier seeding.
pub fn seed(store: &mut Store, customers: usize, invoices: usize) -> Result<(), SeedError> {
    if invoices > 0 && customers == 0 {
        return Err(SeedError::InvoicesWithoutCustomers(invoices));
    }
    // One second apart, customers first, ending before the oldest object already stored.
    let oldest = [
        store.customers.oldest_first().next().map(|c| c.created),
        store.invoices.oldest_first().next().map(|i| i.created),
        store.invoice_items.oldest_first().next().map(|i| i.created),
    ]
    .into_iter()
    .flatten()
    .min();
    let end = (now() - HISTORY_AGE_SECS).min(oldest.map_or(i64::MAX, |t| t - 1));
    let first_customer_at = end - (customers + invoices) as i64;
    let first_invoice_at = end - invoices as i64;

    let mut seeded: Vec<Customer> = Vec::with_capacity(customers);
    for i in 0..customers {
        let number = store.seeded_customers + i + 1;
        let id = store.id("cus");
        let prefix = store.invoice_prefix();
        let mut customer = Customer::new(id, first_customer_at + i as i64, prefix);
        customer.name = Some(format!("Seed Customer {number}"));
        customer.email = Some(format!("seed{number}@example.com"));
        seeded.push(customer);
    }
    let mut items = Vec::with_capacity(invoices);
    let mut bills = Vec::with_capacity(invoices);
    for j in 0..invoices {
        let customer = &mut seeded[j % customers];
        let created = first_invoice_at + j as i64;
        let number = format!(
            "{}-{:04}",
            customer.invoice_prefix, customer.next_invoice_sequence
        );
        customer.next_invoice_sequence += 1;
        customer.currency = Some("usd".into());
        let customer_id = customer.id.clone();
        let paid = j % 3 != 2;
        let amount = 500 + (j % 20) as i64 * 250;
        let invoice_id = store.id("in");
        let item_id = store.id("ii");
        items.push((
            item_id.clone(),
            InvoiceItem {
                id: item_id.clone(),
                customer: customer_id.clone(),
                amount,
                currency: "usd".into(),
                description: Some(format!("Seed invoice item {}", j + 1)),
                metadata: BTreeMap::new(),
                invoice: Some(invoice_id.clone()),
                created,
            },
        ));
        let (collection_method, days_until_due) = if paid {
            ("charge_automatically", None)
        } else {
            ("send_invoice", Some(30))
        };
        bills.push((
            invoice_id.clone(),
            Invoice {
                id: invoice_id,
                customer: customer_id,
                created,
                status: if paid {
                    InvoiceStatus::Paid
                } else {
                    InvoiceStatus::Open
                },
                currency: "usd".into(),
                collection_method: collection_method.into(),
                days_until_due,
                description: None,
                footer: None,
                due_date: None,
                metadata: BTreeMap::new(),
                auto_advance: false,
                number: Some(number),
                items: vec![item_id],
                amount_paid: if paid { amount } else { 0 },
                attempted: paid,
                attempt_count: u32::from(paid),
                finalized_at: Some(created),
                paid_at: paid.then_some(created),
                voided_at: None,
                marked_uncollectible_at: None,
                paid_out_of_band: false,
            },
        ));
    }
    store.invoice_sequence += invoices as u64;
    store.seeded_customers += customers;
    store.prepend_customers(seeded);
    store.invoice_items.prepend(items);
    store.invoices.prepend(bills);
    Ok(())
}
