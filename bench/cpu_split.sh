#!/usr/bin/env bash
# CPU seconds (user + system) spent by PostgreSQL, the server and the load generator while
# a command runs, read from /proc/<pid>/stat before, every half second during, and at the
# end (so processes that exit are counted). Divide by the requests done for µs per request.
#   bench/cpu_split.sh target/release/loadgen api --connections 64 --duration 10
# Every process named postgres* on the machine is counted, so run it on a quiet cluster.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 <command> [args...]" >&2; exit 2; }
snapshot() {
  for stat in /proc/[0-9]*/stat; do
    read -r line < "$stat" 2>/dev/null || continue
    # comm is in parentheses and may hold spaces; fields 14 and 15 follow it.
    local comm=${line#*(}; comm=${comm%)*}
    local rest=${line##*) }
    local fields=($rest)
    echo "${stat#/proc/} ${comm// /_} $(( fields[11] + fields[12] ))"
  done
}
before=$(mktemp); during=$(mktemp)
trap 'rm -f "$before" "$during"' EXIT
snapshot > "$before"
"$@" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do snapshot >> "$during"; sleep 0.5; done
wait "$pid"
hz=$(getconf CLK_TCK)
awk -v hz="$hz" '
  NR == FNR { start[$1] = $3; next }
  { last[$1] = $3; comm[$1] = $2 }
  END {
    for (p in last) {
      name = comm[p] ~ /^postgres/ ? "postgres" : comm[p]
      if (name == "postgres" || name == "server" || name == "loadgen" || name == "consumer")
        total[name] += last[p] - (p in start ? start[p] : 0)
    }
    for (n in total) printf "%s: %.2f s\n", n, total[n] / hz
  }' "$before" "$during" >&2
