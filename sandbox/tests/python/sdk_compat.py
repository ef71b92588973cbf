"""The official Stripe SDK for Python, unchanged, against the sandbox.

Phase `api` (env SANDBOX_URL): customers through the global API and StripeClient,
idempotent replay and mismatch, errors, invoices, events.
Phase `webhooks FILE` (env WEBHOOK_SECRET): every delivery recorded in FILE (JSON lines of
{"body", "signature"}) verifies with stripe.Webhook.construct_event; a tampered one does not.
Prints one line per check; any failure raises (non-zero exit).
"""

import json
import os
import sys
import uuid

import stripe


def check(what, condition):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def api(base):
    stripe.api_key = "sk_test_python_sdk"
    stripe.api_base = base
    stripe.max_network_retries = 0

    key = "py-" + uuid.uuid4().hex
    ada = stripe.Customer.create(
        name="Ada Lovelace",
        email="ada@example.com",
        metadata={"customer_sync_id": "c-1"},
        idempotency_key=key,
    )
    check("create returns a cus_ id", ada.id.startswith("cus_"))
    check("create returns a Customer", isinstance(ada, stripe.Customer))
    check("metadata round-trips", ada.metadata["customer_sync_id"] == "c-1")
    check("the request id is exposed", ada.last_response.request_id.startswith("req_"))

    again = stripe.Customer.create(
        name="Ada Lovelace",
        email="ada@example.com",
        metadata={"customer_sync_id": "c-1"},
        idempotency_key=key,
    )
    check("an idempotent replay returns the same id", again.id == ada.id)
    check(
        "the replay is flagged",
        again.last_response.headers.get("Idempotent-Replayed") == "true",
    )
    try:
        stripe.Customer.create(name="Someone else", idempotency_key=key)
        check("a reused key with other params fails", False)
    except stripe.IdempotencyError as e:
        check("a reused key with other params is an IdempotencyError", e.http_status == 400)

    fetched = stripe.Customer.retrieve(ada.id)
    check("retrieve", fetched.email == "ada@example.com" and fetched.name == "Ada Lovelace")

    updated = stripe.Customer.modify(
        ada.id, name="Ada King", metadata={"customer_sync_id": "", "tier": "gold"}
    )
    check("modify changes the name", updated.name == "Ada King")
    check("modify keeps the email", updated.email == "ada@example.com")
    check("an empty metadata value removes the key", updated.metadata.to_dict() == {"tier": "gold"})

    bob = stripe.Customer.create(name="Bob", email="bob@example.com")
    page = stripe.Customer.list(limit=1)
    check("list pages newest first", [c.id for c in page.data] == [bob.id] and page.has_more)
    every = [c.id for c in stripe.Customer.list(limit=1).auto_paging_iter()]
    check("auto-paging walks every customer", every == [bob.id, ada.id])
    by_email = stripe.Customer.list(email="ada@example.com")
    check("the email filter", [c.id for c in by_email.data] == [ada.id])
    found = stripe.Customer.search(query="email:'ada@example.com'")
    check("Customer.search by email", [c.id for c in found.data] == [ada.id])
    searched = [
        c.id
        for c in stripe.Customer.search(query="name~'Bob' OR name~'Ada'", limit=1).auto_paging_iter()
    ]
    check("search pages through next_page", searched == [bob.id, ada.id])

    # The StripeClient style, with its own base address.
    client = stripe.StripeClient(
        "sk_test_python_sdk", base_addresses={"api": base}, max_network_retries=0
    )
    carol = client.customers.create(params={"name": "Carol", "email": "carol@example.com"})
    check("StripeClient creates", client.customers.retrieve(carol.id).name == "Carol")

    deleted = stripe.Customer.delete(bob.id)
    check("delete answers deleted", deleted.deleted is True and deleted.id == bob.id)
    stub = stripe.Customer.retrieve(bob.id)
    check("a deleted customer retrieves as the stub", getattr(stub, "deleted", False) is True)

    try:
        stripe.Customer.retrieve("cus_does_not_exist")
        check("a missing customer raises", False)
    except stripe.InvalidRequestError as e:
        check("a missing customer is a 404 resource_missing", e.http_status == 404 and e.code == "resource_missing")
    try:
        stripe.Customer.create(nickname="x")
        check("an unknown parameter raises", False)
    except stripe.InvalidRequestError as e:
        check("an unknown parameter is parameter_unknown", e.code == "parameter_unknown" and e.param == "nickname")
    try:
        stripe.Customer.list(api_key="sk_live_nope")
        check("a live key is refused", False)
    except stripe.AuthenticationError as e:
        check("a non-test key is an AuthenticationError", e.http_status == 401)

    invoice = stripe.Invoice.create(customer=ada.id)
    stripe.InvoiceItem.create(customer=ada.id, amount=1234, currency="usd", invoice=invoice.id)
    invoice = stripe.Invoice.finalize_invoice(invoice.id)
    check("finalize opens the invoice with a number", invoice.status == "open" and invoice.number)
    check("a finalized invoice has a hosted URL", invoice.hosted_invoice_url is not None)
    invoice = stripe.Invoice.pay(invoice.id)
    check("pay", invoice.status == "paid" and invoice.amount_paid == 1234 and invoice.amount_remaining == 0)
    try:
        stripe.Invoice.void_invoice(invoice.id)
        check("voiding a paid invoice raises", False)
    except stripe.InvalidRequestError:
        check("voiding a paid invoice is refused", True)

    customer_events = stripe.Event.list(type="customer.*", limit=100)
    types = [e.type for e in customer_events.data]
    check("events list with a wildcard", set(types) == {"customer.created", "customer.updated", "customer.deleted"})
    first = customer_events.data[-1]
    check("an event is an Event", isinstance(first, stripe.Event) and first.data.object.id == ada.id)
    check("the event carries the idempotency key", first.request.idempotency_key == key)
    print(json.dumps({"ada": ada.id, "bob": bob.id}))


def webhooks(path):
    secret = os.environ["WEBHOOK_SECRET"]
    deliveries = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    check("webhooks were recorded", len(deliveries) > 0)
    types = set()
    for d in deliveries:
        event = stripe.Webhook.construct_event(d["body"], d["signature"], secret)
        check("construct_event verifies " + event.id, event.object == "event")
        types.add(event.type)
    check(
        "customer events arrived",
        {"customer.created", "customer.updated", "customer.deleted"} <= types,
    )
    check("invoice events arrived", {"invoice.finalized", "invoice.paid"} <= types)
    tampered = deliveries[0]["body"].replace("customer", "custoMer", 1)
    try:
        stripe.Webhook.construct_event(tampered, deliveries[0]["signature"], secret)
        check("a tampered body fails", False)
    except stripe.SignatureVerificationError:
        check("a tampered body fails verification", True)
    try:
        stripe.Webhook.construct_event(deliveries[0]["body"], deliveries[0]["signature"], "whsec_other")
        check("another secret fails", False)
    except stripe.SignatureVerificationError:
        check("another secret fails verification", True)


if __name__ == "__main__":
    if sys.argv[1] == "api":
        api(os.environ["SANDBOX_URL"])
    else:
        webhooks(sys.argv[2])
