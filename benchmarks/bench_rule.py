"""Does the sweep search only where searching can pay? For each corpus and budget, side by side in one run:

    prior alone (sweep's schedule)   the auto sweep's first planned trial trained alone for the budget, its rate
                                     constant, then decaying to 0 over the last 70% (what the search's winner gets)
    auto sweep                       `charsearch sweep --data C --time T`: the plan decides whether to search
                                     (autosize.comparisons against MIN_COMPARED) and says so in one line
    auto sweep (--search always)     the same, searching whatever the plan says: the search the rule turns off

Every model is scored on the whole val split. The table gives what each plan said (no search, or the
configurations it estimated the search could bring to its first rung), how many trials reported in the
searching sweep (the estimate's check), and whether its winner was the prior's configuration.

    python benchmarks/bench_rule.py [--corpora 1] [--budgets 300,600] [--seeds 2] [--methods ...] [--keep]

Writes the `rule-cpu` section of BENCHMARKS.md and benchmarks/plots/rule_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env, run_sweep  # noqa: E402
from bench_suite import CORPORA, cell, run_prior, whole_val  # noqa: E402
from common import PLOTS, save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import MAX_SEARCH_PRESSURE, MIN_COMPARED, PRIOR_LR, SEARCH_FRACTION  # noqa: E402

SCHEDULE, RULE, ALWAYS = "prior alone (sweep's schedule)", "auto sweep", "auto sweep (--search always)"


def sweep(corpus: Path, budget: float, seed: int, project: Path, extra: tuple = ()) -> dict:
    r = run_sweep(corpus, budget, seed, "tpe", project, extra)
    subprocess.run([sys.executable, "-m", "charsearch", "best", "--experiment", f"bench-tpe-{seed}", "--export",
                    str(project / "best.pt")], cwd=project, env=env(), capture_output=True, check=True)
    said = next((line for line in r["plan"] if line.startswith(("# no search", "# the search could"))), "")
    estimate = re.search(r"~(\d+) configurations", said)
    winner = json.loads(r["winner"]) if r["winner"] else {}
    return {**{k: v for k, v in r.items() if k != "points"}, **whole_val(project / "best.pt", corpus, project, r["best"]),
            "searched": not said.startswith("# no search"), "estimate": int(estimate[1]) if estimate else None,
            "prior_won": winner.get("learning_rate") == PRIOR_LR}


METHODS = {SCHEDULE: lambda c, b, s, p: run_prior(c, b, s, p, 1 - SEARCH_FRACTION),
           RULE: lambda c, b, s, p: sweep(c, b, s, p),
           ALWAYS: lambda c, b, s, p: sweep(c, b, s, p, ("--search", "always"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="300,600")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--corpora", default="1", help="comma-separated numbers of bench_suite's CORPORA (1-5), or all")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--keep", action="store_true", help="start from benchmarks/plots/rule_cpu.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    saved = json.loads((PLOTS / "rule_cpu.json").read_text()) if args.keep or args.report_only else {"results": {}}
    results = saved["results"]
    if not args.report_only:
        names = list(CORPORA) if args.corpora == "all" else [list(CORPORA)[int(i) - 1] for i in args.corpora.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            for i, name in enumerate(names):
                corpus = CORPORA[name](Path(tmp) / f"c{i}" / "input.txt")
                for budget in map(float, args.budgets.split(",")):
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        for method in args.methods.split(","):
                            project = Path(tmp) / f"p{len(list(Path(tmp).glob('p*')))}"
                            project.mkdir()
                            print(f"{name}, {budget:g} s, seed {seed}, {method} ...", file=sys.stderr, flush=True)
                            r = METHODS[method](corpus, budget, seed, project)
                            print(f"  best {r['best']:.4f} in {r['wall']:.0f} s", file=sys.stderr, flush=True)
                            results[f"{name}|{budget:g}|{method}|{seed}"] = {k: v for k, v in r.items() if k != "points"}
                            save_json("rule_cpu", {"results": results})
    report(results)


def report(results: dict) -> None:
    groups: dict = {}
    for key, r in results.items():
        corpus, budget, method, _ = key.split("|")
        groups.setdefault((corpus, float(budget)), {}).setdefault(method, []).append(r)
    rows = []
    for (corpus, budget), by in sorted(groups.items()):
        row = {"corpus": corpus, "budget": f"{budget:.0f} s"}
        for m in METHODS:
            row[m] = cell([r["best"] for r in by[m]]) if m in by else "-"
        rule = by.get(RULE, [])
        row["the rule's plan"] = ", ".join(("searched" if r["searched"] else "no search") + f" (~{r['estimate']})"
                                           for r in rule) or "-"
        always = by.get(ALWAYS, [])
        row["searching sweep: trials that reported (estimate + prior)"] = ", ".join(
            f"{r['trials']} ({r['estimate'] + 1})" for r in always if r["estimate"] is not None) or "-"
        row["searching sweep's winner"] = ", ".join("prior" if r["prior_won"] else "searched" for r in always) or "-"
        if SCHEDULE in by and RULE in by:
            row["auto sweep - prior alone (sweep's schedule)"] = (
                f"{statistics.mean(r['best'] for r in rule) - statistics.mean(r['best'] for r in by[SCHEDULE]):+.4f}")
        rows.append(row)
    body = (f"2-core machine, one run after the other, each a fresh CLI process and project; cells: best fair val loss "
            f"(nats/char, whole val split), mean ± standard deviation over seeds (each seed in brackets). The plan "
            f"searches where it estimates the search can bring at least {MIN_COMPARED} configurations besides the "
            f"prior to ASHA's first rung (in brackets: its estimate) and its prior's memorising pressure is at most "
            f"{MAX_SEARCH_PRESSURE:g}; else the prior trains alone on the sweep's schedule. The estimate is checked "
            f"against the trials that reported in the sweep that searched anyway "
            f"(each trial run opens at its first report).\n\n" + table(rows))
    write_section("rule-cpu", "Searching only where it can pay (CPU)", body,
                  "python benchmarks/bench_rule.py --corpora 1 --budgets 300,600 --seeds 2")
    print(body)


if __name__ == "__main__":
    main()
