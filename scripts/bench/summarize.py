"""Reads wrk outputs (one file per round) and prints medians and ratios per scenario.

Each ratio is given twice: the ratio of the two medians, and in brackets the median of the
per-round ratios. Rounds are interleaved, so a round's targets ran within the same minute; the
per-round ratio cancels the machine's drift from round to round (on a shared machine one
target's rounds can differ by 50 %), the ratio of medians does not.

`p99 / mean` is each round's p99 over its mean latency, median of the rounds. wrk keeps every
connection busy, so the mean latency is the connections divided by the req/s (Little's law):
the column says how long the tail is for the throughput reached, the one part of the p99 a
proxy's own scheduling decides (docs/performance.md, "p99 and throughput")."""
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

def parse(text):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        lat[pct] = float(val) * scale
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return float(rps.group(1)) if rps else 0.0, lat.get("50"), lat.get("99"), int(non2xx.group(1)) if non2xx else 0

results = defaultdict(list)
by_round = defaultdict(dict)
for path in sorted(Path(sys.argv[1]).glob("*.txt")):
    # name: scenario__target__cN__roundR.txt
    scenario, target, conns, round_ = path.stem.split("__")
    parsed = parse(path.read_text())
    results[(scenario, conns, target)].append(parsed)
    by_round[(scenario, conns, target)][round_] = parsed[0]


def ratio(scenario, conns, target, base, medians):
    """`a.bcx (d.efx)`: ratio of medians, then the median of the per-round ratios."""
    if not medians.get(base):
        return "-"
    mine, theirs = by_round[(scenario, conns, target)], by_round[(scenario, conns, base)]
    paired = [mine[r] / theirs[r] for r in mine if theirs.get(r)]
    text = f"{medians[target][0] / medians[base][0]:.2f}x"
    return f"{text} ({statistics.median(paired):.2f}x)" if paired else text


rows = defaultdict(dict)
for (scenario, conns, target), runs in results.items():
    rows[(scenario, conns)][target] = (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs if r[1] is not None) if any(r[1] for r in runs) else float("nan"),
        statistics.median(r[2] for r in runs if r[2] is not None) if any(r[2] for r in runs) else float("nan"),
        sum(r[3] for r in runs),
        len(runs),
    )

for (scenario, conns), targets in sorted(rows.items()):
    print(f"\n## {scenario}, -{conns}")
    print("| target | rounds | req/s (median) | p50 ms | p99 ms | p99 / mean | non-2xx | vs nginx proxy | vs HAProxy JWT |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for target, (rps, p50, p99, non2xx, n) in sorted(targets.items()):
        vs_n = ratio(scenario, conns, target, "nginx-proxy", targets)
        vs_h = ratio(scenario, conns, target, "haproxy-jwt", targets)
        # Each round's p99 (ms) times its req/s, over the connections: p99 / mean latency.
        tail = [r[2] * r[0] / (int(conns[1:]) * 1000) for r in results[(scenario, conns, target)] if r[0] and r[2] is not None]
        tail = f"{statistics.median(tail):.2f}" if tail else "-"
        print(f"| {target} | {n} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {tail} | {non2xx} | {vs_n} | {vs_h} |")
    local, shared = targets.get("jwtgate-protected"), targets.get("jwtgate-redis")
    if local and shared:
        # On one saturated core, 1/throughput is the time each request costs the proxy.
        cost_us = (1 / shared[0] - 1 / local[0]) * 1e6
        print(
            f"\nRedis-backed limits: {shared[0] / local[0]:.2f}x the local limiter's req/s; "
            f"a Redis decision costs {cost_us:.1f} µs of gateway time per request."
        )
    for route in ("protected", "public", "redis"):
        plain, pgo = f"jwtgate-{route}", f"jwtgate-pgo-{route}"
        if plain in targets and pgo in targets:
            print(
                f"\nProfile-guided build, {route}: {ratio(scenario, conns, pgo, plain, targets)}"
                " the plain release build's req/s."
            )
