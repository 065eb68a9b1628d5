"""The figures of bench/relay_bench.py: medians over rounds, Keystile/relay ratios, the issues'
targets, and the printed tables."""

from __future__ import annotations

import statistics

# The core issue's targets: (mode, concurrency, metric, comparison, bound). They apply to the only
# Keystile of a one-scenario run (target "keystile"), or to the `master` scenario in a run of several.
TARGETS = [
    ("json", 32, "rps", ">=", 0.6),
    ("json", 1, "p50_ms", "<=", 1.5),
]

# Targets of scenarios: (scenario, mode, concurrency, metric, basis, comparison, bound, issue).
# basis "relay": the scenario's Keystile/relay ratio; "master": that ratio divided by the `master`
# scenario's, both from the same run (so --scenario must include master).
SCENARIO_TARGETS = [
    ("keys100k", "json", 32, "rps", "master", ">=", 0.9,
     "authenticated relay with 100,000 keys in the database keeps the core issue's throughput ratio within 10%"),
    ("local-limits", "json", 32, "rps", "master", ">=", 0.9,
     "with accounting on and limits in process, throughput stays within 10% of the core issue's ratio"),
    ("redis-limits", "json", 32, "rps", "relay", ">=", 0.45,
     "with Redis limits, at least 0.45 of the minimal relay"),
]

BASELINES = ("relay", "direct")  # targets that are not a Keystile
METRICS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")


def summarize(runs: list, targets: list[str], modes: list[str], concurrencies: list[int]) -> dict:
    """Per cell and target: the median over rounds of each figure (`runs` are relay_bench.Run);
    per cell and Keystile target: ratios to the relay (`ratios`; `ratio` is the one of the target
    "keystile", in a one-scenario run) and, in a run with a `master` target, to master (`vs_master`)."""
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
                    "aux_cpu_us_per_req": statistics.median(getattr(r, "aux_cpu_us_per_req", 0.0) for r in rs),
                    "errors": sum(r.errors for r in rs),
                    "other_cpu_pct": statistics.median(r.other_cpu_pct for r in rs),
                }
            if "relay" in cell:
                r = cell["relay"]
                ratios = {t: {m: cell[t][m] / r[m] if r[m] else None for m in METRICS}
                          for t in targets if t not in BASELINES and t in cell}
                if ratios:
                    cell["ratios"] = ratios
                if "keystile" in ratios:
                    cell["ratio"] = ratios["keystile"]
            if "master" in cell and len(cell.get("ratios", {})) > 1:
                m = cell["master"]
                cell["vs_master"] = {t: {k: cell[t][k] / m[k] if m[k] else None for k in METRICS}
                                     for t in cell["ratios"]}
                cell["vs_master_paired"] = {t: _paired(runs, t, mode, c) for t in cell["ratios"]}
            cells[f"{mode}/c{c}"] = cell
    return cells


def _paired(runs: list, target: str, mode: str, c: int) -> float | None:
    """The median over rounds of `target`'s req/s over master's in the same round. This machine's
    speed drifts within a run (seen: one target at 2,700 and 4,100 req/s a minute apart, with no
    other load), and a round's two measurements are closer in time than the run's two medians."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.mode == mode and r.concurrency == c and r.target in (target, "master"):
            by_round.setdefault(r.round, {})[r.target] = r.rps
    pairs = [d[target] / d["master"] for d in by_round.values() if target in d and d.get("master")]
    return statistics.median(pairs) if pairs else None


def _verdict(text: str, scenario: str | None, ratio: float | None, op: str, bound: float, errors_in: list[dict],
             measured: bool, note: str = "") -> dict:
    if not measured:
        return {"target": text, "scenario": scenario, "ratio": None, "pass": False, "valid": False,
                "status": "SKIP", "note": note or "not measured in this run"}
    valid = ratio is not None and all(s["errors"] == 0 for s in errors_in)
    ok = valid and (ratio >= bound if op == ">=" else ratio <= bound)
    status = "PASS" if ok else ("FAIL" if valid else "INVALID")
    if status == "INVALID":
        note = note or "errors in a measurement"
    return {"target": text, "scenario": scenario, "ratio": ratio, "pass": bool(ok), "valid": valid,
            "status": status, "note": note}


def evaluate(cells: dict, target_of: dict[str, str] | None = None) -> list[dict]:
    """The targets' verdicts: PASS, FAIL, INVALID (a measurement had errors), SKIP (not measured).
    `target_of` maps scenario name -> target name (default: one scenario, target "keystile")."""
    target_of = target_of or {"master": "keystile"}
    single = len(target_of) == 1
    core = next(iter(target_of.values())) if single else target_of.get("master")
    verdicts = []
    label = {"rps": "throughput", "p50_ms": "p50 latency"}
    for mode, c, metric, op, bound in TARGETS:
        cell = cells.get(f"{mode}/c{c}", {})
        who = "keystile" if single else "keystile (master)"
        text = f"{who} {mode} {label[metric]} at c={c} {op} {bound} x relay"
        measured = core is not None and core in cell and "relay" in cell
        verdicts.append(_verdict(text, "master" if not single else next(iter(target_of)),
                                 cell.get("ratios", {}).get(core, {}).get(metric) if measured else None,
                                 op, bound, [cell[core], cell["relay"]] if measured else [], measured,
                                 "" if core else "needs the master scenario"))
    for scenario, mode, c, metric, basis, op, bound, issue in SCENARIO_TARGETS:
        if scenario not in target_of:
            continue
        t = target_of[scenario]
        cell = cells.get(f"{mode}/c{c}", {})
        if basis == "relay":
            text = f"{scenario}: {mode} {label[metric]} at c={c} {op} {bound} x relay"
            measured = t in cell and "relay" in cell
            ratio = cell["ratios"][t][metric] if measured else None
            involved = [cell[t], cell["relay"]] if measured else []
            note = ""
        else:
            text = f"{scenario}: {mode} {label[metric]} ratio at c={c} {op} {bound} x master's ratio (paired)"
            measured = t in cell and "relay" in cell and "vs_master" in cell
            ratio = (cell["vs_master_paired"][t] if metric == "rps" else cell["vs_master"][t][metric]) if measured else None
            involved = [cell[t], cell["relay"], cell["master"]] if measured else []
            note = "" if "master" in target_of else "needs --scenario master in the same run"
        verdicts.append({**_verdict(text, scenario, ratio, op, bound, involved, measured, note), "issue": issue})
    return verdicts


# --------------------------------------------------------------------------- report

def print_table(cells: dict, targets: list[str]) -> None:
    keystiles = [t for t in targets if t not in BASELINES]
    ratio_label = {t: "K/relay" if t == "keystile" else f"{t}/relay" for t in keystiles}
    w = max(10, *(len(t) + 1 for t in targets), *(len(v) + 1 for v in ratio_label.values()))
    head = f"{'mode':<7}{'conc':>5}  {'target':<{w}}{'req/s':>10}{'(min-max)':>17}{'p50 ms':>9}{'p99 ms':>9}" \
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
            print(f"{mode:<7}{c:>5}  {t:<{w}}{s['rps']:>10.0f}{spread:>17}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
                  f"{s['cpu_us_per_req']:>12.0f}{s['errors']:>8}{s['other_cpu_pct']:>12.0f}")
        for t, r in cell.get("ratios", {}).items():
            print(f"{'':<7}{'':>5}  {ratio_label[t]:<{w}}{r['rps']:>10.2f}{'':>17}{r['p50_ms']:>9.2f}"
                  f"{r['p99_ms']:>9.2f}{r['cpu_us_per_req']:>12.2f}")
        print()


def print_scenarios(cells: dict, target_of: dict[str, str]) -> None:
    """One line per scenario and cell: its req/s ratio to the relay and, with master in the run, to
    master's ratio (= its req/s over master's, as both face the same relay measurements): of the
    medians, and paired (the median of each round's ratio, see _paired)."""
    w = max(10, *(len(s) + 1 for s in target_of))
    head = f"{'scenario':<{w}}{'cell':<10}{'req/s / relay':>15}{'vs master':>11}{'paired':>8}{'cpu us/req / relay':>20}" \
           f"{'redis/db us/req':>17}{'errors':>8}"
    print(head)
    print("-" * len(head))
    for key, cell in cells.items():
        for scenario, t in target_of.items():
            r = cell.get("ratios", {}).get(t)
            if r is None:
                continue
            vm = cell.get("vs_master", {}).get(t, {}).get("rps")
            vp = cell.get("vs_master_paired", {}).get(t)
            print(f"{scenario:<{w}}{key:<10}{r['rps']:>15.3f}{(f'{vm:.3f}' if vm is not None else 'n/a'):>11}"
                  f"{(f'{vp:.3f}' if vp is not None else 'n/a'):>8}"
                  f"{r['cpu_us_per_req']:>20.2f}{cell[t]['aux_cpu_us_per_req']:>17.0f}{cell[t]['errors']:>8}")
    print()
