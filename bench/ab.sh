#!/usr/bin/env bash
# One task API run with CPU and WAL per create, for comparing two builds in alternation on a
# machine whose speed drifts:
#   bench/ab.sh old /tmp/old/target/release/loadgen api --connections 64 --duration 10
#   bench/ab.sh new target/release/loadgen api --connections 64 --duration 10
# Prints: label, creates/s, p99, then per create: CPU of PostgreSQL, the server and the load
# generator (bench/cpu_split.sh), WAL bytes and full-page images per 1,000 (pg_stat_wal,
# cluster-wide, so run it on a quiet cluster).
set -euo pipefail
[ $# -gt 2 ] || { echo "usage: $0 <label> <loadgen> api [args...]" >&2; exit 2; }
label=$1; shift
URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
wal() { psql "$URL" -Atc "SELECT wal_fpi || ' ' || wal_bytes FROM pg_stat_wal"; }
read -r f0 b0 <<<"$(wal)"
out=$("$(dirname "$0")/cpu_split.sh" "$@" 2>&1 | grep -v '^{')
read -r f1 b1 <<<"$(wal)"
rate=$(grep -o '[0-9]* accepted/s' <<<"$out" | cut -d' ' -f1)
duration=$(grep -o -- '--duration [0-9]*' <<<"$*" | cut -d' ' -f2)
n=$(( rate * ${duration:-10} ))
us() { awk -v name="$1:" -v n="$n" '$1 == name { printf "%d", $2 * 1e6 / n }' <<<"$out"; }
echo "$label ${rate}/s $(grep -o 'p99 [0-9.]* ms' <<<"$out") pg=$(us postgres)us" \
  "server=$(us server)us loadgen=$(us loadgen)us wal=$(( (b1 - b0) / n ))B" \
  "fpi=$(( (f1 - f0) * 1000 / n ))/1000"
