"""Reads wrk outputs (one file per round) and prints medians and ratios per scenario."""
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
for path in sorted(Path(sys.argv[1]).glob("*.txt")):
    # name: scenario__target__cN__roundR.txt
    scenario, target, conns, _ = path.stem.split("__")
    results[(scenario, conns, target)].append(parse(path.read_text()))

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
    print("| target | rounds | req/s (median) | p50 ms | p99 ms | non-2xx | vs nginx proxy | vs HAProxy JWT |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base_nginx = targets.get("nginx-proxy", (0,))[0]
    base_haproxy = targets.get("haproxy-jwt", (0,))[0]
    for target, (rps, p50, p99, non2xx, n) in sorted(targets.items()):
        vs_n = f"{rps / base_nginx:.2f}x" if base_nginx else "-"
        vs_h = f"{rps / base_haproxy:.2f}x" if base_haproxy else "-"
        print(f"| {target} | {n} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {non2xx} | {vs_n} | {vs_h} |")
    local, shared = targets.get("jwtgate-protected"), targets.get("jwtgate-redis")
    if local and shared:
        # On one saturated core, 1/throughput is the time each request costs the proxy.
        cost_us = (1 / shared[0] - 1 / local[0]) * 1e6
        print(
            f"\nRedis-backed limits: {shared[0] / local[0]:.2f}x the local limiter's req/s; "
            f"a Redis decision costs {cost_us:.1f} µs of gateway time per request."
        )
