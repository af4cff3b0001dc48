"""Does a warmup steady the prior? The auto sweep's prior at FRESH_STEP (64 x 128 characters a step, learning rate
0.0035), or with --plan-step at the step and rate its plan gives it, trained alone on the sweep's schedule, with and
without `--warmup-iters`, each run traced (trace_train.py: the training loss and the largest gradient norm at every
10th iteration).

    python benchmarks/bench_warmup.py --corpora 5 --budgets 600 --seeds 2 --warmups 0,100
    python benchmarks/bench_warmup.py --corpora 7 --budgets 300 --seeds 3 --warmups 0,100 --plan-step --keep

Corpora as bench_suite.py's (1-5, and its slices 6-7). The arms of one corpus, budget and seed share one dry
run's plan (the same shape and evaluations); only the seed (the model's initial weights: the data order is
the same) and the warmup differ. Each arm's best model is scored on the whole val split. Writes the
`warmup-cpu` section of BENCHMARKS.md and benchmarks/plots/warmup_cpu.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_suite  # noqa: E402
from bench_search import follow_train  # noqa: E402
from common import save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import FRESH_STEP, SEARCH_FRACTION  # noqa: E402

SECTION = "warmup-cpu"
TRACER = Path(__file__).resolve().parent / "trace_train.py"
EARLY = (100, 250, 500)  # iterations at which the training loss is shown


def curve(path: Path) -> dict:
    """From a trace: the training loss at EARLY iterations (the read-out at or just after each), the largest
    gradient norm in the first 100 iterations, and the largest rise of the loss between read-outs there."""
    rows = [tuple(map(float, line.split())) for line in path.read_text().splitlines()]
    loss_at = {str(n): next(loss for it, loss, *_ in rows if it >= n) for n in EARLY}
    first = [r for r in rows if r[0] <= 100]
    rise = max((b[1] - a[1] for a, b in zip(first, first[1:])), default=0.0)
    return {"loss_at": loss_at, "norm_100": max(r[2] for r in first), "rise_100": rise}


def run(corpus: Path, budget: float, seed: int, warmup: int, project: Path, fresh: bool = True) -> dict:
    """One arm: the prior at FRESH_STEP (or, not `fresh`, at the step its plan gives it), traced."""
    cmd, _, shape, _ = bench_suite.prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION,
                                                 point=FRESH_STEP if fresh else None)
    trace = project / "trace.txt"
    cmd = [sys.executable, str(TRACER), *cmd[cmd.index("train") + 1:], "--print-every", "10",
           "--warmup-iters", str(warmup)]
    r = follow_train(cmd, project, {"TRACE": str(trace)})
    scored = bench_suite.whole_val(bench_suite.best_checkpoint(project / "cv"), corpus, project, r["best"])
    step = f"{cmd[cmd.index('--batch-size') + 1]} x {cmd[cmd.index('--seq-length') + 1]}"
    rate = cmd[cmd.index("--learning-rate") + 1]
    return {**{k: r[k] for k in ("steps", "epochs", "wall")}, **scored, "shape": shape, "step": step, "rate": rate,
            **curve(trace)}


def warmups_of(arm: str) -> int:
    """An arm's warmup iterations ('100', or '100 at the plan's step')."""
    return int(arm.split()[0])


def report(results: dict) -> None:
    rows = []
    for (corpus, budget), arms in bench_suite.by_arm(results).items():
        for arm, rs in sorted(arms.items(), key=lambda a: (a[0] != str(warmups_of(a[0])), warmups_of(a[0]))):
            base = arms.get(arm.replace(str(warmups_of(arm)), "0", 1))
            row = {"corpus": corpus, "budget": f"{float(budget):.0f} s", "shape": ", ".join(sorted({r["shape"] for r in rs})),
                   "step (rate)": ", ".join(sorted({f"{r.get('step', '64 x 128')} ({r.get('rate', '0.0035')})"
                                                    for r in rs})),
                   "warmup iterations": warmups_of(arm), "whole val": bench_suite.cell([r["best"] for r in rs]),
                   "recorded val (sample)": bench_suite.cell([r["recorded"] for r in rs]),
                   "steps": ", ".join(f"{r['steps']:,}" for r in rs),
                   **{f"train loss at {n}": ", ".join(f"{r['loss_at'][str(n)]:.2f}" for r in rs) for n in EARLY},
                   "largest grad norm, first 100": ", ".join(f"{r['norm_100']:.1f}" for r in rs),
                   "largest loss rise, first 100": ", ".join(f"{r['rise_100']:+.2f}" for r in rs)}
            if base and warmups_of(arm):
                diff = statistics.mean(r["best"] for r in rs) - statistics.mean(r["best"] for r in base)
                row["whole val - no warmup"] = f"{diff:+.4f}"
            rows.append(row)
    body = ("2-core machine, one run after the other. Each arm: the auto sweep's prior (a dry run's plan) at the "
            f"larger step ({FRESH_STEP['batch_size']} x {FRESH_STEP['seq_length']}, learning rate "
            f"{FRESH_STEP['learning_rate']:g}), or with `--plan-step` at the step and rate its plan gives it, trained alone on the sweep's schedule (constant, then decaying over "
            "the last 70%) for the budget, with `--warmup-iters` N (0: none). The arms of a seed share the plan; "
            "the seed sets the initial weights (the data order is the same for every seed). Whole val: the best "
            "model on the whole val split, mean ± standard deviation over seeds (each seed in brackets); the "
            "other columns list the seeds in order: the training loss at iterations 100, 250 and 500, the largest "
            "gradient norm (before clipping at 5) and the largest rise of the training loss between read-outs 10 "
            "iterations apart in the first 100 iterations.\n\n" + table(rows))
    write_section(SECTION, "A warmup for the prior (CPU)", body,
                  "python benchmarks/bench_warmup.py --corpora 5 --budgets 600 --seeds 2 --warmups 0,100`, then "
                  "`--corpora 7 --budgets 600 --seeds 2 --warmups 100 --keep`, then `--corpora 7 --budgets 300 --seeds 3 "
                  "--plan-step --keep`, `--corpora 7 --budgets 300 --seeds 3 --warmups 300 --plan-step --keep` and `--corpora 1 --budgets 300 --seeds 2 --plan-step --keep")


def main() -> None:
    ap = bench_suite.arm_options(seeds=2)
    ap.add_argument("--warmups", default="0,100", help="warmup iterations of each arm, comma-separated")
    ap.add_argument("--plan-step", action="store_true", help="train the prior at its plan's step and rate, not at "
                    "the larger step")
    args = ap.parse_args()
    stem = SECTION.replace("-", "_")
    results = bench_suite.saved_results(stem, args)
    if args.report_only:
        return report(results)
    every = {**bench_suite.CORPORA, **bench_suite.SLICES}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(list(every)[int(n) - 1] for n in args.corpora.split(",")):
            corpus = every[name](Path(tmp) / f"c{i}" / "input.txt")
            for budget in map(float, args.budgets.split(",")):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    for warmup in map(int, args.warmups.split(",")):
                        project = Path(tmp) / f"p{len(list(Path(tmp).glob('p*')))}"
                        project.mkdir()
                        print(f"{name}, {budget:g} s, seed {seed}, warmup {warmup} ...", file=sys.stderr, flush=True)
                        r = run(corpus, budget, seed, warmup, project, fresh=not args.plan_step)
                        print(f"  whole val {r['best']:.4f}", file=sys.stderr, flush=True)
                        arm = f"{warmup} at the plan's step" if args.plan_step else str(warmup)
                        results[f"{name}|{budget:g}|{arm}|{seed}"] = r
                        save_json(stem, results)
    report(results)


if __name__ == "__main__":
    main()
