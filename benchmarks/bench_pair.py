"""Does a 2-core machine do better training two models than one? Side by side in one run, per budget and seed:

    prior alone (2 threads)     the auto sweep's first planned trial (its prior) trained alone on both cores for
                                the budget, on the sweep's schedule (rate constant, then decaying to 0 over the
                                last 70%): what `charsearch sweep` does on 2 cores today
    pair (1 thread each)        the same prior twice at once, two seeds, one thread each, the same schedule and
                                budget; then its best single model, and the two as a mixture whose weights greedy
                                ensemble selection (charsearch's, ship/ensembling.py) fits on val
    sweep                       `charsearch sweep --data CORPUS --time BUDGET` itself (a fresh store: no warm
                                start), which on 2 cores plans no search and trains the prior twice at once,
                                seeds apart; then `best --export` (its better member) and `best --export
                                --ensemble 2` (their mixture), each scored on the whole val split

Two one-thread trials train more characters together than one two-thread trial (S2 in BENCHMARKS.md), but
each trains fewer than the single one; a mixture of two models scores lower than either. This measures
which wins on the whole val split (the mixture's weights are fitted on val: one degree of freedom over
~111k characters). Members start together after one shared dry run.

    python benchmarks/bench_pair.py [--budgets 300] [--seeds 2] [--arms alone,pair,sweep] [--keep]

Writes the `pair-cpu` section of BENCHMARKS.md and benchmarks/plots/pair_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env, follow_train  # noqa: E402
from bench_suite import best_checkpoint, cell, prior_command, shakespeare, whole_val  # noqa: E402
from common import PLOTS, save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import SEARCH_FRACTION  # noqa: E402

ALONE, BEST, MIXTURE = "prior alone (2 threads)", "pair: better single (1 thread each)", "pair: mixture of both"
SWEEP_BEST, SWEEP_MIXTURE = "sweep: best --export", "sweep: best --export --ensemble 2"
COLUMNS = (ALONE, BEST, MIXTURE, SWEEP_BEST, SWEEP_MIXTURE)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def alone(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    cmd, _, shape = prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION)
    r = follow_train(cmd, project)
    return {ALONE: whole_val(best_checkpoint(project / "cv"), corpus, project, r["best"])["best"], "shape": shape}


def pair(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    cmd, _, shape = prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION)
    members = [project / "a", project / "b"]
    cmds = [cmd, [*cmd[:cmd.index("--seed") + 1], str(1123 + seed), *cmd[cmd.index("--seed") + 2:]]]
    for c, m in zip(cmds, members):
        c[c.index("--checkpoint-dir") + 1] = str(m / "cv")
        m.mkdir()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda cm: follow_train(cm[0], cm[1], ONE_THREAD), zip(cmds, members)))
    files = [best_checkpoint(m / "cv") for m in members]
    singles = [whole_val(f, corpus, project, 0.0)["best"] for f in files]
    return {BEST: min(singles), MIXTURE: mixture_val(files, corpus), "members": singles, "shape": shape}


def sweep(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    """The CLI's own sweep, its members seeded 123 + 10 * seed and the next; its exports scored on the whole val."""
    import yaml
    name = f"pair-{seed}"
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "data": {"corpus": str(corpus)}, "search_space": "auto",
                                    "budget": {"sweep_time": budget}, "train": {"seed": 123 + 10 * seed}}))
    r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project, env=env(),
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"sweep {name} failed:\n{r.stderr[-3000:]}")
    out = {"plan": next((line for line in r.stderr.splitlines() if line.startswith("# no search")), "searched"),
           "summary": r.stdout.splitlines()[0]}
    for column, extra in ((SWEEP_BEST, []), (SWEEP_MIXTURE, ["--ensemble", "2"])):
        model = project / f"{len(extra)}.pt"
        subprocess.run([sys.executable, "-m", "charsearch", "best", "--experiment", name, "--export", str(model),
                        *extra], cwd=project, env=env(), capture_output=True, check=True)
        out[column] = whole_val(model, corpus, project, 0.0)["best"]
    return out


def mixture_val(files: list[Path], corpus: Path) -> float:
    """The val loss of the best mixture of the models greedy selection finds on the whole val split."""
    import torch

    from charsearch.core import artifact
    from charsearch.core.data import load_corpus
    from charsearch.core.train import Evaluator
    from charsearch.ship.ensembling import greedy
    _, val, _ = load_corpus(str(corpus)).split(0.9, 0.1)
    evaluate = Evaluator(val, torch.device("cpu"))
    log_probs = torch.stack([evaluate.target_log_probs(artifact.load(f).build("cpu")) for f in files])
    return greedy(log_probs)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="300")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--arms", default="alone,pair,sweep", help="of: alone, pair, sweep")
    ap.add_argument("--keep", action="store_true", help="start from benchmarks/plots/pair_cpu.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    saved = json.loads((PLOTS / "pair_cpu.json").read_text()) if args.keep or args.report_only else {}
    results, commands = saved.get("results", {}), saved.get("commands", [])
    if not args.report_only:
        commands.append(" ".join(["python benchmarks/bench_pair.py", *sys.argv[1:]]))
        with tempfile.TemporaryDirectory() as tmp:
            corpus = shakespeare(Path(tmp) / "c" / "input.txt")
            for budget in map(float, args.budgets.split(",")):
                for seed in range(args.seeds):
                    arms = {"alone": alone, "pair": pair, "sweep": sweep}
                    for name in args.arms.split(","):
                        method = arms[name]
                        project = Path(tmp) / f"p{len(list(Path(tmp).glob('p*')))}"
                        project.mkdir()
                        print(f"{budget:g} s, seed {seed}, {name} ...", file=sys.stderr, flush=True)
                        r = method(corpus, budget, seed, project)
                        print(f"  {r}", file=sys.stderr, flush=True)
                        results[f"{budget:g}|{name}|{seed}"] = r
                        save_json("pair_cpu", {"results": results, "commands": commands})
    report(results, commands or ["python benchmarks/bench_pair.py --budgets 300 --seeds 2 --arms alone,pair"])


def report(results: dict, commands: list[str]) -> None:
    by: dict = {}
    for key, r in results.items():
        budget = key.split("|")[0]
        for column in COLUMNS:
            if column in r:
                by.setdefault(budget, {}).setdefault(column, []).append(r[column])
        if "shape" in r:
            by[budget]["shape"] = r["shape"]
    rows = [{"budget": f"{float(b):.0f} s", "prior": v.get("shape", "-"),
             **{c: cell(v[c]) if c in v else "-" for c in COLUMNS}}
            for b, v in sorted(by.items(), key=lambda kv: float(kv[0]))]
    body = ("tiny-shakespeare on this 2-core machine, one run after the other, each a fresh CLI process; cells: "
            "fair val loss (nats/char, whole val split), mean ± standard deviation over seeds (each seed in "
            "brackets). The pair's two members train at once, one thread each, for the same budget as the prior "
            "alone; the mixture's weights are fitted on val. The sweep columns are `charsearch sweep` itself (a sweep "
            "file with `search_space: auto` and the budget, a fresh store), whose plan on 2 cores trains the prior "
            "twice at once, seeds apart, without a search; then its `best --export` (the better member) and "
            "`best --export --ensemble 2` (their mixture, weights fitted on val). The prior is the shape the plan "
            "chose from its calibration in that run.\n\n" + table(rows))
    write_section("pair-cpu", "One model on both cores, or two at once (CPU)", body,
                  "; then ".join(commands))
    print(body)


if __name__ == "__main__":
    main()
