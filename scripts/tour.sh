#!/usr/bin/env bash
# The README's tour, command for command (tests/tour.rs checks that every curl line of the
# README's tour is here, and runs this script against a live stack).
# Usage: TOKEN=... scripts/tour.sh   (API and STRIPE default to cargo run's addresses)
set -euo pipefail
: "${TOKEN:?set TOKEN to the API token cargo run printed}"
API=${API:-http://127.0.0.1:8000/api/v1}
STRIPE=${STRIPE:-http://127.0.0.1:12111}

# Poll a command until its output contains a string (the sync is asynchronous).
wait_for() {
  local needle=$1; shift
  for _ in $(seq 1 100); do
    if "$@" | grep -q "$needle"; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $needle from: $*" >&2
  return 1
}

# The tour ends by deleting c-1, and a deleted customer stays a tombstone: say so rather
# than fail halfway through a second run on the same database.
if curl -s $API/customers/c-1 -H "Authorization: Bearer $TOKEN" | grep -q '"deleted_at":"'; then
  echo "c-1 was deleted by an earlier tour and cannot be created again in this database." >&2
  echo "Run the tour on a new one: stop cargo run and start it again with DATABASE_URL naming" >&2
  echo "a database that does not exist yet (it is created), or, if cargo run started its own" >&2
  echo "PostgreSQL, after removing ./.data/postgres." >&2
  exit 1
fi

echo "== create"
curl -s -X POST $API/customers -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
     -d '{"id":"c-1","name":"Ada Lovelace","email":"ada@example.com"}'
echo
wait_for '"state":"synced"' curl -s $API/customers/c-1 -H "Authorization: Bearer $TOKEN"
echo "== links and tasks"
curl -s $API/customers/c-1 -H "Authorization: Bearer $TOKEN"
echo
curl -s "$API/tasks?customer_id=c-1" -H "Authorization: Bearer $TOKEN"
echo
echo "== update"
curl -s -X PATCH $API/customers/c-1 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
     -d '{"email":"ada@lovelace.org"}'
echo
wait_for 'ada@lovelace.org' curl -s "$STRIPE/v1/customers?email=ada@lovelace.org" -u sk_test_tour:
curl -s "$STRIPE/v1/customers?email=ada@lovelace.org" -u sk_test_tour:
echo
echo "== invoice"
CUS=$(curl -s $API/customers/c-1 -H "Authorization: Bearer $TOKEN" | grep -o '"external_id":"cus_[^"]*"' | cut -d'"' -f4)
curl -s $STRIPE/v1/invoiceitems -u sk_test_tour: -d customer=$CUS -d amount=4200 -d currency=eur
echo
INV=$(curl -s $STRIPE/v1/invoices -u sk_test_tour: -d customer=$CUS -d pending_invoice_items_behavior=include | grep -o '"id": *"in_[^"]*"' | head -1 | cut -d'"' -f4)
curl -s -X POST $STRIPE/v1/invoices/$INV/finalize -u sk_test_tour:
echo
curl -s -X POST $STRIPE/v1/invoices/$INV/pay -u sk_test_tour:
echo
wait_for '"status":"paid"' curl -s "$API/invoices?customer_id=c-1" -H "Authorization: Bearer $TOKEN"
curl -s "$API/invoices?customer_id=c-1" -H "Authorization: Bearer $TOKEN"
echo
echo "== reconcile"
JOB=$(curl -s -X POST $API/jobs -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"kind":"reconcile","provider":"stripe"}' | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)
wait_for '"status":"succeeded"' curl -s $API/jobs/$JOB -H "Authorization: Bearer $TOKEN"
curl -s $API/jobs/$JOB -H "Authorization: Bearer $TOKEN"
echo
curl -s $API/sync/status -H "Authorization: Bearer $TOKEN"
echo
echo "== delete"
curl -s -X DELETE $API/customers/c-1 -H "Authorization: Bearer $TOKEN"
echo
wait_for '"deleted": *true' curl -s "$STRIPE/v1/customers/$CUS" -u sk_test_tour:
echo "tour complete"
