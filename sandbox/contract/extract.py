"""Extracts, from Stripe's OpenAPI description, what the contract test checks the sandbox
against: the operations the sandbox serves (their parameters and response schemas) and
every schema those responses reach through `$ref`, nothing else.

    python3 sandbox/contract/extract.py [../shared/reference/stripe-openapi/spec3.json]

writes sandbox/contract/stripe-contract.json. Run it again when the description changes;
the test reads only the extract, so it needs no copy of the whole description.
"""

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).with_name("stripe-contract.json")


def refs(node, found):
    """Every `#/components/schemas/<name>` under `node`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def strip(node):
    """The schema without its prose: descriptions and titles weigh most of the file."""
    if isinstance(node, dict):
        return {
            k: ({name: strip(s) for name, s in v.items()} if k == "properties" else strip(v))
            for k, v in node.items()
            if k not in ("description", "title", "x-stripeBypassValidation")
        }
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    info = spec["info"]
    provenance = info["x-fidelity-provenance"]
    operations = []
    wanted = set()
    for entry in provenance["ops"]:
        method, path = re.match(r"(\w+) (\S+):", entry).groups()
        op = spec["paths"][path][method.lower()]
        form = (
            op.get("requestBody", {})
            .get("content", {})
            .get("application/x-www-form-urlencoded", {})
            .get("schema", {})
            .get("properties", {})
        )
        params = {name: strip(p["schema"]) for name, p in (
            (p["name"], p) for p in op.get("parameters", []) if p.get("in") == "query"
        )}
        params.update({name: strip(schema) for name, schema in form.items()})
        ok = strip(op["responses"]["200"]["content"]["application/json"]["schema"])
        refs(ok, wanted)
        refs(params, wanted)
        operations.append(
            {
                "method": method,
                "path": path,
                "params": params,
                "response": ok,
            }
        )
    wanted.update(["error", "event", "customer", "deleted_customer", "invoice",
                   "invoiceitem", "line_item"])
    schemas = spec["components"]["schemas"]
    closure, missing, todo = {}, set(), sorted(wanted)
    while todo:
        name = todo.pop()
        if name in closure or name in missing:
            continue
        if name not in schemas:
            missing.add(name)
            continue
        closure[name] = strip(schemas[name])
        more = set()
        refs(closure[name], more)
        todo.extend(sorted(more - closure.keys() - missing))
    document = {
        "source": {
            "file": "spec3.json of ../shared/reference/stripe-openapi",
            "version": info["version"],
            "provenance": {k: v for k, v in provenance.items() if k != "ops"},
            # Stripe's own now: every other schema is from 2023 and may lack newer fields.
            "strict_schemas": sorted(set(provenance["overlay_schemas"]) & closure.keys()),
            "missing_schemas": sorted(missing),
        },
        "operations": operations,
        "schemas": dict(sorted(closure.items())),
    }
    OUT.write_text(json.dumps(document, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{OUT}: {len(operations)} operations, {len(closure)} schemas, "
          f"{len(missing)} referenced but absent: {sorted(missing)}, "
          f"{OUT.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    # By default the reference material beside the repository: ../shared/reference/.
    beside = Path(__file__).resolve().parents[3] / "shared/reference/stripe-openapi/spec3.json"
    main(sys.argv[1] if len(sys.argv) > 1 else beside)
