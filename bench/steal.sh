#!/usr/bin/env bash
# Every 10 s: the share of CPU time the hypervisor gave to other guests ("steal" in
# /proc/stat), the share we used (user + system) and PostgreSQL-independent I/O pressure
# ("full", avg10). Run it beside a benchmark to see when the host, not the code, moved a
# figure: bench/steal.sh > steal.log &
set -euo pipefail
read -ra prev < <(head -1 /proc/stat)
while true; do
  sleep 10
  read -ra cur < <(head -1 /proc/stat)
  total=0
  for i in 1 2 3 4 5 6 7 8; do total=$((total + cur[i] - prev[i])); done
  steal=$((cur[8] - prev[8]))
  busy=$((cur[1] + cur[3] - prev[1] - prev[3]))
  io=$(sed -n 's/^full avg10=\([0-9.]*\).*/\1/p' /proc/pressure/io 2>/dev/null || echo -)
  echo "$(date +%T) steal=$((100 * steal / total))% busy=$((100 * busy / total))% iofull=$io"
  prev=("${cur[@]}")
done
