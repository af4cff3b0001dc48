"""How much dropout does the auto sweep's prior need where it would memorise its corpus? The prior's dropout
rises with its memorising pressure (passes over the train split times all parameters per train character) and
is capped (autosize.MAX_DROPOUT). Where the pressure is far above the cap's, a longer budget can end worse than
a shorter one: the prior's val loss is lowest long before its end. This script trains the prior of one dry
run (`charsearch sweep --data C --time T --dry-run`) alone on the sweep's schedule (constant, then decaying over
the last 70%) once with the plan's dropout and once with each dropout given, side by side, the same seed, and
says where in the run each one's best val came.

    python benchmarks/bench_dropout.py --corpora 3,4 --budgets 600 --dropouts 0.4 [--seeds 1]

Corpora as bench_suite.py's (1-5). Writes the `prior-dropout-cpu` section of BENCHMARKS.md and
benchmarks/plots/prior_dropout_cpu.json.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_suite  # noqa: E402
from bench_search import follow_train  # noqa: E402
from common import save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import FREE_PRESSURE, SEARCH_FRACTION

SECTION = "prior-dropout-cpu"
PRESSURE = re.compile(r"would pass over the train split ([0-9.e+]+) times .* per train character: ([0-9.e+]+) ")


def run(corpus: Path, budget: float, seed: int, dropout: float | None, project: Path) -> dict:
    """The prior on the sweep's schedule, with the plan's dropout (None) or `dropout`; the plan is the first
    arm's dry run for every arm of the same corpus, budget and seed."""
    cmd, plan_text, shape, _ = bench_suite.prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION)
    bench_suite.SWEEP_PLANS[(str(corpus), budget, seed)] = plan_text
    at = cmd.index("--dropout")
    planned = float(cmd[at + 1])
    if dropout is not None:
        cmd[at + 1] = str(dropout)
    r = follow_train(cmd, project)
    best = bench_suite.best_checkpoint(project / "cv")
    epochs = [float(re.search(r"epoch([0-9.]+)_", f.name)[1]) for f in (project / "cv").glob("*.pt")]
    passes, pressure = (float(g) for g in PRESSURE.search(plan_text).groups())
    return {**bench_suite.whole_val(best, corpus, project, r["best"]), "shape": shape, "planned": planned,
            "dropout": planned if dropout is None else dropout, "passes": passes, "pressure": pressure,
            "best_epoch": float(re.search(r"epoch([0-9.]+)_", best.name)[1]), "epochs": max(epochs)}


def report(results: dict) -> None:
    rows = []
    for (corpus, budget), arms in bench_suite.by_arm(results).items():
        plan = arms["plan"]
        for arm, rs in arms.items():
            vals = [r["best"] for r in rs]
            rows.append({"corpus": corpus, "budget": f"{float(budget):.0f} s", "prior": rs[0]["shape"],
                         "pressure (passes)": ", ".join(f"{r['pressure']:.3g} ({r['passes']:.3g})" for r in rs),
                         "dropout": f"{rs[0]['dropout']:g}" + (" (the plan's)" if arm == "plan" else ""),
                         "val": f"{statistics.mean(vals):.4f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1
                                                                  else "") + f" ({', '.join(f'{v:.3f}' for v in vals)})",
                         "- the plan's": f"{statistics.mean(vals) - statistics.mean(r['best'] for r in plan):+.4f}",
                         "best at pass / passes": ", ".join(f"{r['best_epoch']:.3g} / {r['epochs']:.3g}" for r in rs)})
    body = ("2-core machine, one run after the other, each a fresh `charsearch train` process. The auto sweep's prior "
            "(the first trial of one dry run per corpus, budget and seed) trained alone on the sweep's schedule "
            f"(constant, then decaying to 0 over the last {1 - SEARCH_FRACTION:.0%}) with the plan's dropout and with "
            "each other dropout, the same seed; val: the best checkpoint scored on the whole val split (`charsearch "
            "eval`), mean ± standard deviation over seeds. Pressure: the plan's passes over the train split times all "
            f"the prior's parameters per train character (above {FREE_PRESSURE:g} the plan gives it dropout). Best at pass: the "
            "epoch of the best checkpoint, against the epochs the run made.\n\n" + table(rows))
    write_section(SECTION, "The prior's dropout where it would memorise (CPU)", body,
                  "python benchmarks/bench_dropout.py --corpora 3,4 --budgets 600 --dropouts 0.4")


def main() -> None:
    ap = bench_suite.arm_options(seeds=1)
    ap.add_argument("--dropouts", default="0.4", help="dropouts to train beside the plan's, comma-separated")
    args = ap.parse_args()
    stem = SECTION.replace("-", "_")
    results = bench_suite.saved_results(stem, args)
    if args.report_only:
        return report(results)
    names = [list(bench_suite.CORPORA)[int(i) - 1] for i in args.corpora.split(",")]
    arms = [("plan", None)] + [(f"dropout {d}", float(d)) for d in args.dropouts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            corpus = bench_suite.CORPORA[name](Path(tmp) / f"c{i}" / "input.txt")
            for budget in map(float, args.budgets.split(",")):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    for arm, dropout in arms:
                        project = Path(tmp) / f"p{len(list(Path(tmp).glob('p*')))}"
                        project.mkdir()
                        print(f"{name}, {budget:g} s, seed {seed}, {arm} ...", file=sys.stderr, flush=True)
                        r = run(corpus, budget, seed, dropout, project)
                        print(f"  best {r['best']:.4f} (dropout {r['dropout']:g}, best at epoch {r['best_epoch']:g} "
                              f"of {r['epochs']:g})", file=sys.stderr, flush=True)
                        results[f"{name}|{budget:g}|{arm}|{seed}"] = r
                        save_json(stem, results)
    report(results)


if __name__ == "__main__":
    main()
