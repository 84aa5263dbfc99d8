#!/usr/bin/env bash
# Where CPU 0's time goes, kernel included, for jwtgate's protected route, nginx as a plain
# proxy and the bare hyper proxy (carried connection), each alone on CPU 0 under the same wrk
# load as run.sh. `perf record -e cpu-clock -C 0` samples everything that runs on the proxy's
# core (its system calls, the loopback softirq work done there, page faults, idle), and
# /proc/PID/stat gives page faults and context switches per request over the same run.
#
#   scripts/bench/kernel.sh                 # 8 s per target at -c64
#   JWTGATE=target/pgo/jwtgate CONNS=256 scripts/bench/kernel.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-kernel.XXXXXX)}
DURATION=${DURATION:-8} CONNS=${CONNS:-64} TOP=${TOP:-25}
mkdir -p "$OUT"
install_missing wrk nginx perf
cargo build --release --locked --bin jwtgate --example bench_issuer --example bare_proxy
export RUST_LOG=warn
JWTGATE=${JWTGATE:-target/release/jwtgate}

kill_on_exit

start_cpu0_targets 18490

counters() { # PID: minor faults, major faults, voluntary and involuntary context switches
  awk '{printf "%s %s ", $10, $12}' "/proc/$1/stat"
  awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' \
    "/proc/$1/status"
}
for i in "${!names[@]}"; do
  name=${names[$i]} pid=${pids[$i]}
  read -r f0 F0 v0 n0 < <(counters "$pid")
  read -r i0 < <(awk '/^cpu1 / {print $5 + $6}' /proc/stat)
  perf stat -x, -C 0 -e sched:sched_waking,ipi:ipi_send_cpu,ipi:ipi_send_cpumask \
    -o "$OUT/$name.stat" -- sleep "$DURATION" &
  stat=$!
  perf record -q -g -e cpu-clock -F 10000 -C 0 -o "$OUT/$name.data" -- sleep "$DURATION" &
  recorder=$!
  n=$(load "${urls[$i]}" "$DURATION")
  wait "$recorder" "$stat"
  read -r i1 < <(awk '/^cpu1 / {print $5 + $6}' /proc/stat)
  read -r f1 F1 v1 n1 < <(counters "$pid")
  # The sampled time in ns ("Event count" of cpu-clock), all of CPU 0's time over the run.
  ns=$(perf report -i "$OUT/$name.data" --stdio --sort dso 2>/dev/null \
    | awk '/^# Event count/ {print $NF}')
  awk -v n="$n" -v s="$ns" -v name="$name" \
    -v mf=$((f1 - f0)) -v Mf=$((F1 - F0)) -v vc=$((v1 - v0)) -v nc=$((n1 - n0)) \
    -v idle=$(((i1 - i0) * 100 / $(getconf CLK_TCK))) -v d="$DURATION" \
    -v wakes="$(awk -F, '/sched_waking/ {print $1}' "$OUT/$name.stat")" \
    -v ipis="$(awk -F, '/ipi_send/ {s += $1} END {print s}' "$OUT/$name.stat")" 'BEGIN {
      printf "%s: %d requests, %.2f us of CPU 0 per request (all samples); per request: %.4f minor faults, %.4f major, %.4f voluntary and %.4f involuntary switches\n",
        name, n, s / 1000 / n, mf / n, Mf / n, vc / n, nc / n
      printf "  from CPU 0 per request: %.3f wake-ups, %.3f IPIs; CPU 1 (wrk, upstream) idle %.0f %%\n",
        wakes / n, ipis / n, idle / d }' | tee -a "$OUT/summary.txt"
  # Kernel, program, libraries, then the top symbols, in ns per request of self time (what
  # ran in that code itself; the call graphs stay in the data for `perf report -i`).
  for sort in dso comm,dso,sym; do
  perf report -i "$OUT/$name.data" --stdio --no-children --sort "$sort" 2>/dev/null \
    | awk -v n="$n" -v s="$ns" -v top="$TOP" '
      /^ +[0-9.]+%/ && shown < top { pct = $1; sub(/%/, "", pct);
        line = $0; sub(/^ +[0-9.]+% +/, "", line);
        printf "  %7.0f ns  %s\n", pct / 100 * s / n, line; shown++ }'
  done | tee "$OUT/$name.top.txt"
done
echo "perf data and summaries: $OUT"
