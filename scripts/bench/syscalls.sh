#!/usr/bin/env bash
# System calls and CPU time (user, system) per request, for jwtgate's protected route, nginx as
# a plain proxy and the bare hyper proxy (carried connection), each on CPU 0 with wrk and the
# upstream on CPU 1, as in run.sh. Counts come from the kernel's syscall tracepoints through
# `perf stat`; CPU time from /proc/PID/stat over the same wrk run.
#
#   scripts/bench/syscalls.sh              # 3 interleaved rounds of 8 s at -c64
#   ROUNDS=5 CONNS=256 scripts/bench/syscalls.sh
#   JWTGATE=target/pgo/jwtgate scripts/bench/syscalls.sh   # another jwtgate binary
#
# System calls per request do not depend on the machine's speed; the CPU times do (a busy
# machine moves them by ±20 %), so compare them only within one run. The tracepoints add a
# little system time to every call, for every target alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-syscalls.XXXXXX)}
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-8} CONNS=${CONNS:-64}
mkdir -p "$OUT"
install_missing wrk nginx perf
cargo build --release --locked --bin jwtgate --example bench_issuer --example bare_proxy
export RUST_LOG=warn
JWTGATE=${JWTGATE:-target/release/jwtgate}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

kill_on_exit

start_cpu0_targets 18480

events=raw_syscalls:sys_enter
for call in read write readv writev recvfrom sendto recvmsg sendmsg getsockopt epoll_wait \
  epoll_pwait epoll_ctl futex; do
  events+=",syscalls:sys_enter_$call"
done
: > "$OUT/rounds.txt"
for round in $(seq "$ROUNDS"); do
  for i in "${!names[@]}"; do
    pid=${pids[$i]}
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    perf stat -x, -e "$events" -p "$pid" -o "$OUT/${names[$i]}.$round.perf" -- sleep "$DURATION" &
    counter=$!
    n=$(load "${urls[$i]}" "$DURATION")
    wait "$counter"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    awk -F, -v n="$n" -v name="${names[$i]}" -v r="$round" \
      -v user=$(((u1 - u0) * TICK_US)) -v sys=$(((s1 - s0) * TICK_US)) '
      $1 ~ /^[0-9]+$/ && $1 / n >= 0.005 {
        sub(/.*:sys_enter_?/, "", $3); calls = calls sprintf(" %s %.2f", ($3 == "" ? "all" : $3), $1 / n) }
      END { printf "%s round %d: %d requests, user %.1f us, sys %.1f us per request;%s\n",
              name, r, n, user / n, sys / n, calls }' "$OUT/${names[$i]}.$round.perf" \
      | tee -a "$OUT/rounds.txt"
  done
done
echo
echo "medians over $ROUNDS rounds, -c$CONNS (system calls per request are the same every round):"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for name in "${names[@]}"; do
  rows=$(grep "^$name " "$OUT/rounds.txt")
  user=$(sed 's/.*user \([0-9.]*\) us.*/\1/' <<< "$rows" | median)
  sys=$(sed 's/.*sys \([0-9.]*\) us.*/\1/' <<< "$rows" | median)
  printf '  %-18s user %5.1f us, sys %5.1f us per request; system calls per request:%s\n' \
    "$name" "$user" "$sys" "$(tail -1 <<< "$rows" | cut -d';' -f2)"
done
echo "rounds and perf outputs: $OUT"
