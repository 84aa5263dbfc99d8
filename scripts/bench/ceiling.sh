#!/usr/bin/env bash
# How close to nginx can a proxy on tokio get on this machine? req/s of nginx as a plain proxy,
# the bare hyper proxy (carried connection), `raw_proxy` (tokio and httparse, no hyper, no
# gateway work: examples/raw_proxy.rs) and jwtgate's protected and public routes, each alone
# on CPU 0 with wrk and the upstream on CPU 1, as in run.sh; rounds interleaved.
#
#   scripts/bench/ceiling.sh                      # 5 rounds of 8 s at -c64, then at -c256
#   ROUNDS=3 DURATION=5 CONNS_LIST=64 scripts/bench/ceiling.sh
#   JWTGATE=target/pgo/jwtgate scripts/bench/ceiling.sh   # another jwtgate binary
#   JWTGATE=target/pgo/jwtgate BARE=target/pgo/bare_proxy scripts/bench/ceiling.sh
#                                                 # both built with a profile (scripts/pgo/)
#
# It prints each target's median req/s and its ratio to nginx in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-ceiling.XXXXXX)}
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-8} CONNS_LIST=${CONNS_LIST:-64 256}
mkdir -p "$OUT"
install_missing wrk nginx
cargo build --release --locked --bin jwtgate --example bench_issuer --example bare_proxy \
  --example raw_proxy
export RUST_LOG=warn
JWTGATE=${JWTGATE:-target/release/jwtgate}
CONNS=64

kill_on_exit

start_cpu0_targets 18580
taskset -c 0 target/release/examples/raw_proxy 127.0.0.1:18586 127.0.0.1:18581 & PIDS+=($!)
more=(http://127.0.0.1:18586/x http://127.0.0.1:18582/public/x)
names+=(raw-proxy jwtgate-public)
urls+=("${more[@]}")
warm_up "${more[@]}"

# cpu_times: "busy idle steal" jiffies of CPU 0, then of CPU 1, from /proc/stat.
cpu_times() {
  awk '/^cpu[01] / { printf "%d %d %d ", $2 + $3 + $4 + $7 + $8, $5 + $6, $9 }' /proc/stat; echo
}
# busy FIRST: CPU 0's (FIRST 0) or CPU 1's (FIRST 3) busy and stolen shares between the
# readings t0 and t1.
busy() {
  local b=$((t1[$1] - t0[$1])) i=$((t1[$1 + 1] - t0[$1 + 1])) s=$((t1[$1 + 2] - t0[$1 + 2]))
  echo "$((100 * b / (b + i + s + 1)))% busy, $((100 * s / (b + i + s + 1)))% stolen"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: > "$OUT/rounds.txt"
for CONNS in $CONNS_LIST; do
  for round in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
      read -r -a t0 < <(cpu_times)
      n=$(load "${urls[$i]}" "$DURATION")
      read -r -a t1 < <(cpu_times)
      # With CPU 1 (wrk, upstream) near 100 % busy and CPU 0 (the proxy) not, the load
      # generator was the round's limit, not the proxy.
      echo "-c$CONNS ${names[$i]} round $round: $((n / DURATION)) req/s;" \
        "CPU 0 $(busy 0), CPU 1 $(busy 3)" | tee -a "$OUT/rounds.txt"
    done
  done
done
echo
echo "medians of $ROUNDS rounds of $DURATION s; ratio to nginx plain proxy in the same run:"
for CONNS in $CONNS_LIST; do
  base=$(grep "^-c$CONNS nginx-proxy " "$OUT/rounds.txt" | awk '{print $5}' | median)
  for name in "${names[@]}"; do
    m=$(grep "^-c$CONNS $name " "$OUT/rounds.txt" | awk '{print $5}' | median)
    awk -v c="$CONNS" -v n="$name" -v m="$m" -v b="$base" \
      'BEGIN { printf "  -c%-4s %-18s %8d req/s  %.2fx nginx\n", c, n, m, m / b }'
  done
done
echo "rounds: $OUT/rounds.txt"
