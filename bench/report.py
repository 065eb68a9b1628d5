"""The figures of bench/relay_bench.py: medians over rounds, Keystile/relay ratios, the issue's
targets, and the printed table."""

from __future__ import annotations

import statistics

# The targets: (mode, concurrency, metric, comparison, bound).
TARGETS = [
    ("json", 32, "rps", ">=", 0.6),
    ("json", 1, "p50_ms", "<=", 1.5),
]


def summarize(runs: list, targets: list[str], modes: list[str], concurrencies: list[int]) -> dict:
    """Per cell and target: the median over rounds of each figure (`runs` are relay_bench.Run);
    per cell: Keystile/relay ratios."""
    cells: dict = {}
    for mode in modes:
        for c in concurrencies:
            cell: dict = {}
            for t in targets:
                rs = [r for r in runs if r.target == t and r.mode == mode and r.concurrency == c]
                if not rs:
                    continue
                cell[t] = {
                    "rps": statistics.median(r.rps for r in rs),
                    "rps_min": min(r.rps for r in rs), "rps_max": max(r.rps for r in rs),
                    "p50_ms": statistics.median(r.p50_ms for r in rs),
                    "p99_ms": statistics.median(r.p99_ms for r in rs),
                    "cpu_us_per_req": statistics.median(r.target_cpu_us_per_req for r in rs),
                    "errors": sum(r.errors for r in rs),
                    "other_cpu_pct": statistics.median(r.other_cpu_pct for r in rs),
                }
            if "keystile" in cell and "relay" in cell:
                k, r = cell["keystile"], cell["relay"]
                cell["ratio"] = {m: k[m] / r[m] if r[m] else None for m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
            cells[f"{mode}/c{c}"] = cell
    return cells


def evaluate(cells: dict) -> list[dict]:
    verdicts = []
    for mode, c, metric, op, bound in TARGETS:
        ratio = cells.get(f"{mode}/c{c}", {}).get("ratio", {}).get(metric)
        valid = ratio is not None and all(cells[f"{mode}/c{c}"][t]["errors"] == 0 for t in ("keystile", "relay"))
        ok = valid and (ratio >= bound if op == ">=" else ratio <= bound)
        label = {"rps": "throughput", "p50_ms": "p50 latency"}[metric]
        verdicts.append({"target": f"keystile {mode} {label} at c={c} {op} {bound} x relay", "ratio": ratio,
                         "pass": bool(ok), "valid": valid})
    return verdicts


# --------------------------------------------------------------------------- report

def print_table(cells: dict, targets: list[str]) -> None:
    head = f"{'mode':<7}{'conc':>5}  {'target':<10}{'req/s':>10}{'(min-max)':>17}{'p50 ms':>9}{'p99 ms':>9}" \
           f"{'cpu us/req':>12}{'errors':>8}{'other cpu%':>12}"
    print(head)
    print("-" * len(head))
    for key, cell in cells.items():
        mode, c = key.split("/c")
        for t in targets:
            if t not in cell:
                continue
            s = cell[t]
            spread = f"({s['rps_min']:.0f}-{s['rps_max']:.0f})"
            print(f"{mode:<7}{c:>5}  {t:<10}{s['rps']:>10.0f}{spread:>17}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
                  f"{s['cpu_us_per_req']:>12.0f}{s['errors']:>8}{s['other_cpu_pct']:>12.0f}")
        if "ratio" in cell:
            r = cell["ratio"]
            print(f"{'':<7}{'':>5}  {'K/relay':<10}{r['rps']:>10.2f}{'':>17}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['cpu_us_per_req']:>12.2f}")
        print()
