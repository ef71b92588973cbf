#!/usr/bin/env bash
# A signature flood against a release server: three webhook POSTs of a 1 MB body whose
# Stripe-Signature carries 1,800 wrong v1 entries before the right one. Prints each answer's
# status and time, and the server's CPU for the three.
#   bench/flood.sh target/release/server 18200
# Needs PostgreSQL on 127.0.0.1:5432 (it creates the database flood_<port>), curl, python3.
set -euo pipefail
bin=$1; port=${2:-18200}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import hashlib, hmac, sys, time
out = sys.argv[1]
body = ('{"pad":"' + 'x' * 1000000 + '"}').encode()
t = int(time.time())
good = hmac.new(b"whsec_bench_0123456789", str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
open(out + "/body", "wb").write(body)
open(out + "/header", "w").write("t=%d," % t + ",".join(["v1=" + "0" * 64] * 1800) + ",v1=" + good)
PY
DATABASE_URL=postgres://postgres@127.0.0.1:5432/flood_$port HTTP_BIND=127.0.0.1:$port \
  ZMQ_PUB_ENDPOINT=tcp://127.0.0.1:$((port + 1)) API_TOKEN=bench-token-0123456789abcdef \
  STRIPE_WEBHOOK_SECRET=whsec_bench_0123456789 RUST_LOG=error "$bin" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/v1/health" >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
for _ in 1 2 3; do
  curl -s -o /dev/null -w "%{http_code} %{time_total}s\n" -X POST \
    "http://127.0.0.1:$port/api/v1/endpoint/stripe" -H 'Content-Type: application/json' \
    -H "Stripe-Signature: $(cat "$dir/header")" --data-binary @"$dir/body"
done
echo "server CPU for 3 floods: $(( ($(cpu) - before) * 1000 / $(getconf CLK_TCK) )) ms"
