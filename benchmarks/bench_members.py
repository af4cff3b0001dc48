"""Where the prior would memorise its corpus, the auto sweep trains it as two members at two dropouts (the
rule's d and 2d). Does the second dropout pay, against both members at d (seeds apart)? Both arms of a corpus
and seed read one calibration (measured once, `--calibration FILE`), so they train the same shape for the same
time; the second arm fixes the sweep file's `train.dropout` to the first arm's planned d.

    python benchmarks/bench_members.py --corpora 3,4 --budgets 600 --seeds 2

Corpora as bench_suite.py's (1-5). Each arm: the exported model (the member lower on val) and the
`--ensemble 2` mixture, both scored on the whole val split; each member's own recorded val. Writes the
`members-dropout-cpu` section of BENCHMARKS.md and benchmarks/plots/members_dropout_cpu.json.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_suite  # noqa: E402
from bench_search import env  # noqa: E402
from common import save_json, table, write_section  # noqa: E402

SECTION = "members-dropout-cpu"
MEASURE = """
import json, sys
from charsearch.search.prepare import prepare_sweep
_, plan = prepare_sweep(data=sys.argv[1], time=float(sys.argv[2]))
print(json.dumps(plan.calibration.to_dict()))
"""


def calibration(corpus: Path, budget: float, project: Path) -> Path:
    """The calibration an auto sweep of `corpus` and `budget` would measure here, as a file."""
    r = subprocess.run([sys.executable, "-c", MEASURE, str(corpus), str(budget)], cwd=project, env=env(),
                       capture_output=True, text=True, check=True)
    path = project / "calibration.json"
    path.write_text(r.stdout.strip().splitlines()[-1])
    return path


def members(project: Path, seed: int) -> list[dict]:
    """Each trial's dropout and recorded (sampled) best val, lowest first."""
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(f"bench-tpe-{seed}")
    runs = client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'trial'",
                              order_by=["metrics.best_val_loss ASC"])
    return [{"dropout": float(r.data.params["dropout"]), "val": r.data.metrics.get("best_val_loss")} for r in runs]


def run(corpus: Path, budget: float, seed: int, arm: str, cal: Path, dropout: float | None, project: Path) -> dict:
    train = {"dropout": dropout} if dropout is not None else None
    bench_suite.SWEEP_PLANS.pop((str(corpus), budget, seed), None)  # an earlier arm's plan is not this one's
    r = bench_suite.run_auto_sweep(corpus, budget, seed, project, ("--calibration", str(cal)), train)
    plan = yaml.safe_load(bench_suite.SWEEP_PLANS[(str(corpus), budget, seed)])
    points = plan["search"]["points_to_evaluate"]
    return {"best": r["best"], "ensemble": r.get("ensemble"), "shape": r.get("shape", "?"), "arm": arm,
            "planned": [p.get("dropout") for p in points], "members": members(project, seed),
            "trials": r["trials"], "wall": r["wall"], "summary": r["summary"]}


def report(results: dict) -> None:
    rows = []
    for (corpus, budget), arms in bench_suite.by_arm(results).items():
        base = arms.get("d and 2d")
        for arm, rs in arms.items():
            export, mix = [r["best"] for r in rs], [r["ensemble"] for r in rs if r["ensemble"] is not None]
            row = {"corpus": corpus, "budget": f"{float(budget):.0f} s", "shape": ", ".join(sorted({r["shape"] for r in rs})),
                   "members' dropouts": arm, "export (whole val)": bench_suite.cell(export),
                   "--ensemble 2 (whole val)": bench_suite.cell(mix) if mix else "-",
                   "members' recorded val (dropout)": "; ".join(
                       ", ".join(f"{m['val'] or float('nan'):.3f} ({m['dropout']:g})" for m in r["members"])
                       for r in rs)}
            if base and arm != "d and 2d":
                row["export - d and 2d"] = f"{statistics.mean(export) - statistics.mean(r['best'] for r in base):+.4f}"
                base_mix = [r["ensemble"] for r in base if r["ensemble"] is not None]
                if mix and base_mix:
                    row["ensemble - d and 2d"] = f"{statistics.mean(mix) - statistics.mean(base_mix):+.4f}"
            rows.append(row)
    body = ("2-core machine, one run after the other. Both arms of a corpus and seed are auto sweeps (`charsearch "
            "sweep`, search seed = the seed) sized from one calibration measured once before them (`--calibration "
            "FILE`: the same prior shape and the same time to train; no calibration inside the budget), where the plan "
            "trains the prior as two members seeds apart (no search: it would memorise the corpus). 'd and 2d': the "
            "rule's dropouts; 'both d': the sweep file fixes `train.dropout` to the first arm's d. Export: `best "
            "--export` (the member lower on val); ensemble: `best --export --ensemble 2`; both scored on the whole val "
            "split (`charsearch eval`), mean ± standard deviation over seeds (each seed in brackets). Members: each "
            "trial's recorded best val (a sample of the val split), seeds separated by ';'.\n\n" + table(rows))
    write_section(SECTION, "Members at two dropouts or at one (CPU)", body,
                  "python benchmarks/bench_members.py --corpora 3,4 --budgets 600 --seeds 2")


def main() -> None:
    ap = bench_suite.arm_options(seeds=2)
    args = ap.parse_args()
    stem = SECTION.replace("-", "_")
    results = bench_suite.saved_results(stem, args)
    if args.report_only:
        return report(results)
    names = [list(bench_suite.CORPORA)[int(i) - 1] for i in args.corpora.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            corpus = bench_suite.CORPORA[name](Path(tmp) / f"c{i}" / "input.txt")
            for budget in map(float, args.budgets.split(",")):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    root = Path(tmp) / f"{i}-{budget:g}-{seed}"
                    root.mkdir()
                    cal = calibration(corpus, budget, root)
                    d = None
                    for arm in ("d and 2d", "both d"):
                        project = root / arm.replace(" ", "-")
                        project.mkdir()
                        print(f"{name}, {budget:g} s, seed {seed}, {arm} ...", file=sys.stderr, flush=True)
                        if arm == "both d" and not d:
                            print("  the plan gives its members no dropout: nothing to compare", file=sys.stderr)
                            break
                        r = run(corpus, budget, seed, arm, cal, d, project)
                        d = r["planned"][0]
                        print(f"  export {r['best']:.4f}, ensemble {r['ensemble']}, members {r['members']}",
                              file=sys.stderr, flush=True)
                        results[f"{name}|{budget:g}|{arm}|{seed}"] = r
                        save_json(stem, results)
    report(results)


if __name__ == "__main__":
    main()
