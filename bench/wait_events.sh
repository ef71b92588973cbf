#!/usr/bin/env bash
# What the benchmark's PostgreSQL backends are doing: samples pg_stat_activity (wait event,
# state, start of the query) every 20 ms and counts. Start it just before a run:
#   bench/wait_events.sh 200 & target/release/loadgen api --connections 64 --duration 10
# "CPU" means active with no wait event.
set -euo pipefail
samples=${1:-200}
URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
sleep "${2:-4}"
for _ in $(seq "$samples"); do
  psql "$URL" -Atc "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-')
      || ':' || state || ':' || left(query, 25) FROM pg_stat_activity
      WHERE datname LIKE 'cs_test%' AND backend_type = 'client backend'"
  sleep 0.02
done | sort | uniq -c | sort -rn
