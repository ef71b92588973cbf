#!/usr/bin/env bash
# What one retention batch reads: EXPLAIN (ANALYZE, BUFFERS) of a 250-row batch over
# events and over tasks, in the shape before 1b996b4 ("old": the primary key walked again
# per row, the newer-event probe an OR) and now ("new": delete by ctid, the probe bounded
# by the event's own created), each three times in a rolled-back transaction, on a
# scratch database with our schema and a history loaded like `loadgen history`'s.
# Usage: bench/retention_batch.sh [customers] [rows]   (default 200000 2000000)
set -euo pipefail
URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
C=${1:-200000}
N=${2:-2000000}
DB=retention_batch_$$
psql "$URL" -qc "CREATE DATABASE $DB"
trap 'psql "$URL" -qc "DROP DATABASE $DB"' EXIT
SCRATCH="${URL%/*}/$DB"
for up in "$(dirname "$0")"/../migrations/*/up.sql; do psql "$SCRATCH" -q -f "$up"; done
psql "$SCRATCH" -q <<SQL
INSERT INTO customers (id, name, email, version, created_at, updated_at)
SELECT 'h-' || g, 'History ' || g, 'h' || g || '@example.com', 11, now() - interval '400 days', now() - interval '60 days'
FROM generate_series(0, $C - 1) g;
INSERT INTO sync_tasks (id, provider, customer_id, operation, version, status, attempts, idempotency_key,
  lease_owner, next_attempt_at, created_at, updated_at, completed_at)
SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
        || lpad(to_hex(g % 4096), 3, '0') || '8' || lpad(to_hex(g), 15, '0'))::uuid,
  'stripe', 'h-' || (g % $C), 'update', 1 + g / $C, 'succeeded', 1, 'k-' || g, 'history', ts, ts, ts, ts
FROM (SELECT g, now() - interval '60 days' + (g::float8 / $N) * interval '60 days' AS ts
      FROM generate_series(0, $N - 1) g) s;
INSERT INTO webhook_events (id, event_type, created, object_id, payload, received_at, source)
SELECT 'evt_h' || g, 'customer.updated', extract(epoch FROM ts)::bigint, 'cus_h' || (g % $C),
  jsonb_build_object('id', 'evt_h' || g, 'object', 'event', 'type', 'customer.updated',
    'data', jsonb_build_object('object', jsonb_build_object('id', 'cus_h' || (g % $C),
      'object', 'customer', 'name', 'History ' || (g % $C), 'email', 'h' || (g % $C) || '@example.com'))),
  ts, 'webhook'
FROM (SELECT g, now() - interval '60 days' + (g::float8 / $N) * interval '60 days' AS ts
      FROM generate_series(0, $N - 1) g) s;
VACUUM (ANALYZE) customers, sync_tasks, webhook_events;
SQL

events() { # $1: select list, $2: delete condition, $3: probe
  echo "BEGIN; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
  WITH batch AS (SELECT $1 FROM webhook_events
                 WHERE received_at < now() - interval '30 days' ORDER BY received_at, id LIMIT 250),
  gone AS (DELETE FROM webhook_events e USING batch b
           WHERE $2 AND b.created < extract(epoch FROM now() - interval '30 days')::bigint
             AND EXISTS (SELECT 1 FROM webhook_events n WHERE n.object_id = b.object_id AND $3)
           RETURNING e.id)
  SELECT count(*) FROM gone; ROLLBACK;"
}
tasks() { # $1: select list, $2: delete condition
  echo "BEGIN; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
  WITH batch AS MATERIALIZED (SELECT $1 FROM sync_tasks
       WHERE status = 'succeeded' AND completed_at < now() - interval '30 days'
       ORDER BY completed_at LIMIT 250 FOR UPDATE SKIP LOCKED),
  gone AS (DELETE FROM sync_tasks t USING batch WHERE $2 RETURNING t.id)
  SELECT count(*) FROM gone; ROLLBACK;"
}
OLD_PROBE="(n.created > b.created OR (n.created = b.created AND n.id > b.id))"
NEW_PROBE="n.created >= b.created AND (n.created > b.created OR n.id > b.id)"
for round in 1 2 3; do
  for shape in old new; do
    if [ $shape = old ]; then
      ev=$(events "id, created, object_id, received_at" "e.id = b.id" "$OLD_PROBE")
      tk=$(tasks "id" "t.id = batch.id")
    else
      ev=$(events "ctid AS tid, id, created, object_id, received_at" "e.ctid = b.tid" "$NEW_PROBE")
      tk=$(tasks "ctid AS tid" "t.ctid = batch.tid")
    fi
    for what in events tasks; do
      [ $what = events ] && sql=$ev || sql=$tk
      plan=$(psql "$SCRATCH" -qAt -c "$sql")
      buffers=$(echo "$plan" | grep -m1 'Buffers:' | sed 's/^ *//')
      took=$(echo "$plan" | grep 'Execution Time' | sed 's/^ *//')
      echo "round $round $shape $what: $buffers; $took"
    done
  done
done
