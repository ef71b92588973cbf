"""The sandbox against Stripe's own OpenAPI description.

Drives every operation the sandbox serves three ways (raw HTTP here, the official
stripe-python SDK here, the official stripe-node SDK through `drive.cjs`, whose wire
records arrive in NODE_RECORDS), and checks every answer as it came over the wire:

- a 200 against the operation's response schema, any other status against `error`;
- every event (listed, retrieved, or delivered as a webhook: `--webhooks FILE`) against
  `event`, its `data.object` against the object's own schema and its
  `data.previous_attributes` against that schema's properties;
- every parameter the description lists for an operation is accepted (never answered
  `parameter_unknown`), and a parameter it does not list is refused.

The schemas come from `stripe-contract.json` (see extract.py), made strict: an object may
carry only the properties its schema names, and `nullable` becomes a `null` alternative.

    SANDBOX_URL=... NODE_RECORDS=node.jsonl python contract.py   # drive and check
    python contract.py --webhooks deliveries.jsonl               # check deliveries

NODE_RECORDS and the deliveries are JSON lines ({"method", "url", "status", "body"} and
{"body"}). Prints what it covered; exits 1 listing every mismatch.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import stripe
from jsonschema import Draft202012Validator, validators

CONTRACT = json.loads(Path(__file__).with_name("stripe-contract.json").read_text())
KEY = "sk_test_contract"
# The schema each event's `data.object` must match, by its `object` field.
STRICT = set(CONTRACT["source"]["strict_schemas"])
EVENT_OBJECTS = {"customer": "customer", "invoice": "invoice", "invoiceitem": "invoiceitem"}


def convert(node, missing, strict=True):
    """An OpenAPI 3.0 schema as JSON Schema 2020-12; when strict, an object may carry only
    the properties its schema names (the schemas from 2023 are not strict: Stripe has
    added fields since)."""
    if isinstance(node, list):
        return [convert(v, missing, strict) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            if name in CONTRACT["schemas"]:
                out["$ref"] = f"#/$defs/{name}"
            else:
                # Referenced by the description but absent from it (see
                # source.missing_schemas): anything goes.
                missing.add(name)
        elif key == "nullable" or key.startswith("x-"):
            continue
        else:
            out[key] = convert(value, missing, strict)
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Referee:
    def __init__(self):
        self.missing = set()
        self.matched = set()
        defs = {}
        for name, schema in CONTRACT["schemas"].items():
            # Each schema records its name when an instance matches it, for coverage.
            strict = name in STRICT
            defs[name] = {"allOf": [convert(schema, self.missing, strict)], "x-track": name}
        self.defs = defs
        self.operations = []
        for op in CONTRACT["operations"]:
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", op["path"])
            self.operations.append(
                dict(op, regex=re.compile(f"^{pattern}$"),
                     schema=convert(op["response"], self.missing))
            )
        # Literal paths (search) before templates that would also match them.
        self.operations.sort(key=lambda op: op["path"].count("{"))
        matched = self.matched

        def track(validator, name, instance, schema):
            if instance is not None and validator.evolve(schema=schema["allOf"][0]).is_valid(instance):
                matched.add(name)
            return iter(())

        self.Validator = validators.extend(Draft202012Validator, {"x-track": track})
        self.answered = Counter()
        self.statuses = Counter()
        self.events = 0
        self.failures = []

    def operation(self, method, path):
        for op in self.operations:
            if op["method"] == method and op["regex"].match(path):
                return op
        return None

    def validate(self, schema, instance, where):
        validator = self.Validator(dict(schema, **{"$defs": self.defs}))
        errors = list(validator.iter_errors(instance))
        for error in errors[:5]:
            at = "/".join(str(p) for p in error.absolute_path) or "(top)"
            self.failures.append(f"{where}: at {at}: {error.message[:300]}")
        return not errors

    def response(self, driver, method, url, status, text):
        path = urllib.parse.urlsplit(url).path
        where = f"{driver} {method} {path} -> {status}"
        op = self.operation(method, path)
        if op is None:
            self.failures.append(f"{where}: no such operation in the description")
            return
        try:
            body = json.loads(text)
        except ValueError:
            self.failures.append(f"{where}: not JSON: {text[:200]!r}")
            return
        self.statuses[status] += 1
        if status == 200:
            self.answered[(op["method"], op["path"], driver)] += 1
            self.validate(op["schema"], body, where)
            for event in body.get("data", []) if body.get("object") == "list" else []:
                if event.get("object") == "event":
                    self.event(event, f"{where} event {event.get('id')}")
            if body.get("object") == "event":
                self.event(body, where)
        else:
            self.validate({"$ref": "#/$defs/error"}, body, where)

    def event(self, event, where):
        self.events += 1
        self.validate({"$ref": "#/$defs/event"}, event, where)
        data = event.get("data", {})
        obj = data.get("object", {})
        name = EVENT_OBJECTS.get(obj.get("object"))
        if name is None:
            self.failures.append(f"{where}: an event about a {obj.get('object')!r}")
            return
        self.validate({"$ref": f"#/$defs/{name}"}, obj, f"{where} data.object")
        properties = CONTRACT["schemas"][name]["properties"]
        for key, old in (data.get("previous_attributes") or {}).items():
            if key not in properties:
                self.failures.append(f"{where}: previous_attributes.{key} is not a {name} field")
            elif key == "metadata":
                # A key the update added was absent before: Stripe shows it as null.
                bad = [k for k, v in (old or {}).items() if v is not None and not isinstance(v, str)]
                if bad:
                    self.failures.append(f"{where}: previous metadata {bad} not strings")
            else:
                self.validate(convert(properties[key], self.missing), old,
                              f"{where} previous_attributes.{key}")


def form_pairs(name, value):
    """Stripe's form encoding: `a[b]=`, `a[0]=`, booleans as true/false."""
    if isinstance(value, dict):
        if not value:
            return [(name, "")]
        return [p for k, v in value.items() for p in form_pairs(f"{name}[{k}]", v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in form_pairs(f"{name}[{i}]", v)]
    if isinstance(value, bool):
        return [(name, "true" if value else "false")]
    return [(name, str(value))]


class Raw:
    """Plain HTTP, every answer handed to the referee."""

    def __init__(self, base, referee):
        self.base, self.referee = base, referee

    def call(self, method, path, params=None, headers=None, key=KEY):
        pairs = [p for k, v in (params or {}).items() for p in form_pairs(k, v)]
        encoded = urllib.parse.urlencode(pairs)
        url = self.base + path
        data = None
        if method in ("GET", "DELETE"):
            url += ("?" + encoded) if encoded else ""
        else:
            data = encoded.encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {key}")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        self.referee.response("raw", method, url, status, text)
        return status, json.loads(text)


def expect(what, condition, failures):
    if not condition:
        failures.append(f"expected: {what}")


def drive_raw(raw, failures):
    """Every operation once or more, successes and refusals."""
    ok = lambda r: r[0] == 200  # noqa: E731
    status, ada = raw.call("POST", "/v1/customers", {
        "name": "Ada", "email": "ada@example.com", "metadata": {"customer_sync_id": "c-1"},
        "address": {"line1": "1 Main St", "city": "London", "country": "GB"},
        "shipping": {"name": "Ada", "address": {"line1": "1 Main St"}},
        "invoice_settings": {"footer": "Thanks"}, "preferred_locales": ["en"],
    })
    expect("a customer is created", status == 200, failures)
    cus = ada["id"]
    expect("update", ok(raw.call("POST", f"/v1/customers/{cus}", {
        "name": "Ada L.", "metadata": {"tier": "gold"}, "tax_exempt": ""})), failures)
    expect("metadata removal", ok(raw.call("POST", f"/v1/customers/{cus}",
                                           {"metadata": {"tier": ""}})), failures)
    expect("retrieve", ok(raw.call("GET", f"/v1/customers/{cus}")), failures)
    expect("list", ok(raw.call("GET", "/v1/customers", {"limit": 2, "email": "ada@example.com"})),
           failures)
    expect("search", ok(raw.call("GET", "/v1/customers/search",
                                 {"query": "email:'ada@example.com'", "limit": 1})), failures)
    status, item = raw.call("POST", "/v1/invoiceitems", {
        "customer": cus, "amount": 1250, "currency": "usd", "description": "Seats"})
    expect("an invoice item", status == 200, failures)
    expect("an item priced by unit and quantity", ok(raw.call("POST", "/v1/invoiceitems", {
        "customer": cus, "unit_amount_decimal": "250.5", "quantity": 2, "currency": "usd"})),
        failures)
    expect("retrieve an item", ok(raw.call("GET", f"/v1/invoiceitems/{item['id']}")), failures)
    expect("list items", ok(raw.call("GET", "/v1/invoiceitems", {"customer": cus})), failures)
    status, inv = raw.call("POST", "/v1/invoices", {
        "customer": cus, "auto_advance": False, "pending_invoice_items_behavior": "include",
        "footer": "Due on receipt", "metadata": {"order": "42"}})
    expect("an invoice", status == 200, failures)
    iid = inv["id"]
    expect("expand[]=customer", raw.call("GET", f"/v1/invoices/{iid}",
                                         {"expand": ["customer"]})[1].get("customer", {})
           .get("object") == "customer", failures)
    expect("update a draft", ok(raw.call("POST", f"/v1/invoices/{iid}",
                                         {"description": "Draft"})), failures)
    expect("lines", ok(raw.call("GET", f"/v1/invoices/{iid}/lines", {"limit": 1})), failures)
    expect("finalize", ok(raw.call("POST", f"/v1/invoices/{iid}/finalize")), failures)
    expect("update an open invoice", ok(raw.call("POST", f"/v1/invoices/{iid}", {
        "footer": "Thanks", "metadata": {"paid_by": "card"}})), failures)
    declined = raw.call("POST", f"/v1/invoices/{iid}/pay",
                        {"payment_method": "pm_card_chargeDeclined"})
    expect("a declined card is 402 card_declined",
           declined[0] == 402 and declined[1]["error"].get("code") == "card_declined", failures)
    expect("pay", ok(raw.call("POST", f"/v1/invoices/{iid}/pay")), failures)
    # A second invoice to void, a third to mark uncollectible, a fourth to delete.
    for action in ("void", "mark_uncollectible", None):
        raw.call("POST", "/v1/invoiceitems", {"customer": cus, "amount": 500, "currency": "usd"})
        other = raw.call("POST", "/v1/invoices", {
            "customer": cus, "auto_advance": False, "pending_invoice_items_behavior": "include"})[1]
        if action is None:
            expect("delete a draft", ok(raw.call("DELETE", f"/v1/invoices/{other['id']}")),
                   failures)
        else:
            raw.call("POST", f"/v1/invoices/{other['id']}/finalize")
            expect(action, ok(raw.call("POST", f"/v1/invoices/{other['id']}/{action}")), failures)
    expect("list invoices with customers expanded", raw.call(
        "GET", "/v1/invoices", {"customer": cus, "expand": ["data.customer"]})[1]["data"][0]
        ["customer"].get("object") == "customer", failures)
    expect("search invoices", ok(raw.call("GET", "/v1/invoices/search",
                                          {"query": f"customer:'{cus}'"})), failures)
    status, events = raw.call("GET", "/v1/events", {"limit": 100})
    expect("events", status == 200 and events["data"], failures)
    expect("one event", ok(raw.call("GET", f"/v1/events/{events['data'][0]['id']}")), failures)
    expect("delete a customer", ok(raw.call("DELETE", f"/v1/customers/{cus}")), failures)
    expect("retrieve a deleted customer", raw.call("GET", f"/v1/customers/{cus}")[1]
           .get("deleted") is True, failures)

    # Refusals: each in the error shape.
    expect("404 for an unknown customer", raw.call("GET", "/v1/customers/cus_nope")[0] == 404,
           failures)
    expect("400 for a missing parameter", raw.call("POST", "/v1/invoiceitems", {})[0] == 400,
           failures)
    expect("401 for a bad key", raw.call("GET", "/v1/customers", key="nope")[0] == 401, failures)
    status, body = raw.call("GET", "/v1/customers", headers={"Stripe-Version": "2099-01-01"})
    expect("400 for an unknown Stripe-Version", status == 400
           and "Invalid Stripe API version" in body["error"]["message"], failures)
    expect("400 for a bad query", raw.call("GET", "/v1/customers/search",
                                           {"query": "email:"})[0] == 400, failures)


def example(schema, depth=0):
    """A value the schema accepts, as simple as it gets."""
    schema = schema or {}
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = CONTRACT["schemas"].get(name, {"type": "string"})
    for alternative in ("anyOf", "oneOf"):
        if alternative in schema:
            return example(schema[alternative][0], depth)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if kind == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", list(properties)[:1])
        if not properties or depth > 3:
            return {"k": "v"}
        return {name: example(properties[name], depth + 1) for name in required if name in properties}
    if kind == "array":
        return [example(schema.get("items", {}), depth + 1)]
    if kind == "boolean":
        return True
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if schema.get("format") == "decimal":
        return "1.5"
    return "x"


def drive_parameters(raw, failures):
    """Each documented parameter is accepted, an invented one refused, on every operation."""
    cus = raw.call("POST", "/v1/customers", {"name": "Params"})[1]["id"]
    raw.call("POST", "/v1/invoiceitems", {"customer": cus, "amount": 100, "currency": "usd"})
    inv = raw.call("POST", "/v1/invoices", {
            "customer": cus, "auto_advance": False, "pending_invoice_items_behavior": "include"})[1]["id"]
    item = raw.call("POST", "/v1/invoiceitems", {"customer": cus, "amount": 1, "currency": "usd"})
    event = raw.call("GET", "/v1/events", {"limit": 1})[1]["data"][0]["id"]
    ids = {"customer": cus, "invoice": inv, "invoiceitem": item[1]["id"], "id": event}
    tried = 0
    for op in CONTRACT["operations"]:
        path = re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], op["path"])
        for name, schema in op["params"].items():
            if name in ids and "{" + name + "}" in op["path"]:
                continue
            value = example(schema)
            if name == "expand":
                value = []
            tried += 1
            _, body = raw.call(op["method"], path, {name: value})
            error = body.get("error", {}) if isinstance(body, dict) else {}
            if error.get("code") == "parameter_unknown":
                failures.append(f"{op['method']} {op['path']}: {name} (documented) refused: "
                                f"{error.get('message')}")
        _, body = raw.call(op["method"], path, {"not_a_stripe_parameter": "1"})
        if body.get("error", {}).get("code") != "parameter_unknown":
            failures.append(f"{op['method']} {op['path']}: an undocumented parameter accepted")
    return tried


class Recording(stripe.RequestsClient):
    """stripe-python's own HTTP client, handing each raw answer to the referee."""

    def __init__(self, referee):
        super().__init__()
        self.referee = referee

    def request(self, method, url, headers, post_data=None):
        content, status, response_headers = super().request(method, url, headers, post_data)
        self.referee.response("python", method.upper(), url, status, content.decode())
        return content, status, response_headers


def drive_python(base, referee, failures):
    stripe.api_key = KEY
    stripe.api_base = base
    stripe.max_network_retries = 0
    stripe.default_http_client = Recording(referee)
    c = stripe.Customer.create(name="Py", email="py@example.com", metadata={"a": "1"})
    stripe.Customer.modify(c.id, name="Py Thon", metadata={"a": ""})
    stripe.Customer.retrieve(c.id)
    stripe.Customer.list(limit=3)
    stripe.Customer.search(query="email:'py@example.com'")
    item = stripe.InvoiceItem.create(customer=c.id, amount=700, currency="usd")
    stripe.InvoiceItem.retrieve(item.id)
    stripe.InvoiceItem.list(customer=c.id)
    inv = stripe.Invoice.create(customer=c.id, auto_advance=False,
                                    pending_invoice_items_behavior="include")
    stripe.Invoice.retrieve(inv.id, expand=["customer"])
    stripe.Invoice.modify(inv.id, description="Py")
    stripe.Invoice.list_lines(inv.id)
    stripe.Invoice.finalize_invoice(inv.id)
    try:
        stripe.Invoice.pay(inv.id, payment_method="pm_card_chargeDeclined")
        failures.append("python: a declined card was charged")
    except stripe.CardError as e:
        expect("python: CardError card_declined", e.code == "card_declined", failures)
    stripe.Invoice.pay(inv.id)
    for action in ("void_invoice", "mark_uncollectible", None):
        stripe.InvoiceItem.create(customer=c.id, amount=300, currency="usd")
        other = stripe.Invoice.create(customer=c.id, auto_advance=False,
                                    pending_invoice_items_behavior="include")
        if action is None:
            stripe.Invoice.delete(other.id)
        else:
            stripe.Invoice.finalize_invoice(other.id)
            getattr(stripe.Invoice, action)(other.id)
    stripe.Invoice.list(customer=c.id, expand=["data.customer"])
    stripe.Invoice.search(query=f"customer:'{c.id}'")
    events = stripe.Event.list(limit=5)
    stripe.Event.retrieve(events.data[0].id)
    stripe.Customer.delete(c.id)
    try:
        stripe.Customer.retrieve("cus_missing_python")
        failures.append("python: an unknown customer was found")
    except stripe.InvalidRequestError as e:
        expect("python: 404 for an unknown customer", e.http_status == 404, failures)


def webhooks(path):
    """Every delivery in the file (JSON lines of {"body"}) checked as an event."""
    referee = Referee()
    count = 0
    for line in Path(path).read_text().splitlines():
        count += 1
        referee.event(json.loads(json.loads(line)["body"]), f"webhook {count}")
    print(f"contract: {count} webhook deliveries validated as events")
    return referee.failures


def drive_and_check():
    base = os.environ["SANDBOX_URL"]
    referee = Referee()
    failures = referee.failures
    raw = Raw(base, referee)
    drive_raw(raw, failures)
    tried = drive_parameters(raw, failures)
    drive_python(base, referee, failures)
    node = 0
    for line in Path(os.environ["NODE_RECORDS"]).read_text().splitlines():
        record = json.loads(line)
        node += 1
        referee.response("node", record["method"], record["url"], record["status"], record["body"])

    served = {(m, p) for m, p, _ in referee.answered}
    for op in CONTRACT["operations"]:
        for driver in ("raw", "python", "node"):
            if not referee.answered[(op["method"], op["path"], driver)]:
                failures.append(f"{driver} never drove {op['method']} {op['path']}")
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(referee.statuses.items()))
    print(f"contract: {len(served)} of {len(CONTRACT['operations'])} operations answered "
          f"200 to raw HTTP, stripe-python {stripe.VERSION} and stripe-node")
    print(f"contract: {sum(referee.statuses.values())} responses validated ({statuses}), "
          f"{node} of them from stripe-node; {referee.events} events in them")
    print(f"contract: {len(referee.matched)} of {len(CONTRACT['schemas'])} schemas matched "
          f"by some answer; {tried} documented parameters accepted")
    print(f"contract: schemas the description references but lacks (not checked): "
          f"{sorted(referee.missing)}")
    return failures


def main():
    if sys.argv[1:2] == ["--webhooks"]:
        failures = webhooks(sys.argv[2])
    else:
        failures = drive_and_check()
    for failure in failures:
        print("MISMATCH:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
