#!/usr/bin/env bash
# PostgreSQL's own cost of 20,000 creates written as three bulk INSERTs (the cheapest form:
# one statement per table, no client round trips), on a scratch database with our schema.
# It bounds the task API: whatever the server does, each accepted create costs at least this.
set -euo pipefail
URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=pg_floor_$$
psql "$URL" -qc "CREATE DATABASE $DB"
trap 'psql "$URL" -qc "DROP DATABASE $DB"' EXIT
SCRATCH="${URL%/*}/$DB"
for up in "$(dirname "$0")"/../migrations/*/up.sql; do psql "$SCRATCH" -q -f "$up"; done
psql "$SCRATCH" -q <<'SQL'
\timing on
INSERT INTO customers (id, name, email) SELECT 'c'||g, 'Name '||g, 'e'||g||'@example.com' FROM generate_series(1,20000) g;
INSERT INTO provider_links (customer_id, provider) SELECT 'c'||g, 'stripe' FROM generate_series(1,20000) g;
INSERT INTO sync_tasks (id, provider, customer_id, operation, version, idempotency_key)
  SELECT gen_random_uuid(), 'stripe', 'c'||g, 'create', 1, 'k'||g FROM generate_series(1,20000) g;
SQL
