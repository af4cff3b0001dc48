"""Selection beyond the minimum, on CPU: a sweep whose trials train to their end (four shapes, one trial
each, --trial-time seconds on one thread each, two at a time) on tiny-shakespeare with a test split
(train 0.85 / val 0.1 / test 0.05); then `charsearch best --export` (the single lowest-val model) and
`charsearch best --export --ensemble 4` (greedy selection with replacement on val), each scored on the
test split that selection never saw, and each one's sampling speed (one stream, one CPU thread).

    python benchmarks/bench_select.py [--seeds 3] [--trial-time 300]

Selection bias: the winner's test loss minus its val loss, against the same gap for a trial chosen at
random among the top five (its expectation: the mean gap of the top five). Writes the `select-cpu`
section of BENCHMARKS.md and benchmarks/plots/select_cpu.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env  # noqa: E402
from common import SHAKESPEARE, save_json, table, write_section  # noqa: E402

SHAPES = ["gru 2x192", "lstm 2x128", "gru 2x128", "lstm 1x256"]


def sweep_file(project: Path, seed: int, trial_time: float) -> Path:
    d = {"name": f"select-{seed}", "data": {"corpus": "data/tinyshakespeare/input.txt", "val_frac": 0.1,
                                            "test_frac": 0.05},
         "train": {"seed": seed, "learning_rate": 3e-3, "dropout": 0.1, "batch_size": 64, "seq_length": 128,
                   "lr_schedule": "wsd", "decay_frac": 0.3},
         "search_space": {"shape": {"choice": SHAPES}},
         "search": {"algorithm": "random", "seed": seed, "num_samples": len(SHAPES), "max_concurrent": 2,
                    "points_to_evaluate": [{"shape": s} for s in SHAPES]},
         "scheduler": {"type": "none", "report_every_epochs": 0.25},
         "budget": {"sweep_time": 0, "trial_max_epochs": 100, "trial_max_time": trial_time},
         "resources": {"cpu": 1, "gpu": 0}}
    path = project / "select.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def charsearch(project: Path, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "charsearch", *map(str, args)], cwd=project, env=env(),
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"charsearch {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def one_seed(seed: int, trial_time: float) -> dict:
    from charsearch.core import artifact
    from charsearch.ship.candidates import sampling_rate
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        corpus = project / "data" / "tinyshakespeare" / "input.txt"
        corpus.parent.mkdir(parents=True)
        shutil.copy(SHAKESPEARE, corpus)
        charsearch(project, "sweep", sweep_file(project, seed, trial_time))
        table_text = charsearch(project, "best", "--export", "single.pt")
        charsearch(project, "best", "--export", "ensemble.pt", "--ensemble", len(SHAPES))
        rows = [line.split() for line in table_text.splitlines()[2:2 + len(SHAPES)]]
        top = [(float(r[2]), float(r[3])) for r in rows[:5]]  # (val, test) of the top trials, best first
        single, ens = artifact.load(project / "single.pt"), artifact.load(project / "ensemble.pt")
        return {"seed": seed, "single_val": top[0][0], "single_test": single.summary["test_loss"],
                "ensemble_val": ens.summary["val_loss"], "ensemble_test": ens.summary["test_loss"],
                "ensemble": ens.summary["ensemble_trials"], "winner_gap": top[0][1] - top[0][0],
                "random_top_gap": statistics.mean(t - v for v, t in top),
                "single_rate": sampling_rate(single), "ensemble_rate": sampling_rate(ens),
                "single_mb": (project / "single.pt").stat().st_size / 1e6,
                "ensemble_mb": (project / "ensemble.pt").stat().st_size / 1e6}


def spread(values: list[float], digits: int = 4) -> str:
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trial-time", type=float, default=300)
    args = ap.parse_args()
    runs = []
    for seed in range(args.seeds):
        runs.append(one_seed(seed, args.trial_time))
        print(runs[-1], flush=True)
    save_json("select_cpu", runs)
    col = lambda k, d=4: spread([r[k] for r in runs], d)  # noqa: E731
    per_seed = lambda k, d=4: ", ".join(f"{r[k]:.{d}f}" for r in runs)  # noqa: E731
    rows = [
        {"model": "single best (lowest val)", "val (nats/char)": col("single_val"), "test (nats/char)": col("single_test"),
         "test, per seed": per_seed("single_test"), "sampling chars/s": col("single_rate", 0),
         "file MB": col("single_mb", 2)},
        {"model": f"ensemble of the top {len(SHAPES)} (greedy)", "val (nats/char)": col("ensemble_val"),
         "test (nats/char)": col("ensemble_test"), "test, per seed": per_seed("ensemble_test"),
         "sampling chars/s": col("ensemble_rate", 0), "file MB": col("ensemble_mb", 2)},
    ]
    gain = [r["single_test"] - r["ensemble_test"] for r in runs]
    bias = [{"selection bias (test - val)": "the winner", "mean ± sd over seeds": col("winner_gap"),
             "per seed": per_seed("winner_gap")},
            {"selection bias (test - val)": "a trial at random among the top five (expectation)",
             "mean ± sd over seeds": col("random_top_gap"), "per seed": per_seed("random_top_gap")}]
    body = (f"A CPU sweep whose trials train to their end: {', '.join(SHAPES)}, one trial each, "
            f"{args.trial_time:.0f} s on one thread each, two at a time, Adam 3e-3 with a wsd schedule, dropout 0.1, "
            f"batch 64 x 128, on tiny-shakespeare split train 0.85 / val 0.1 / test 0.05 (the test split is never "
            f"used to choose). `charsearch best --export` against `--ensemble {len(SHAPES)}`; ± is the standard "
            f"deviation over {args.seeds} seeds (of the trials' initialisation). The ensemble's test loss is "
            f"{spread(gain)} nats/char below the single best's. Sampling speed: one stream, one CPU thread.\n\n"
            + table(rows) + "\n\n" + table(bias) + "\n\nEnsembles per seed (trial:weight): "
            + "; ".join(r["ensemble"] for r in runs))
    write_section("select-cpu", "Selection: held-out test, ensemble, selection bias (CPU)", body,
                  f"python benchmarks/bench_select.py --seeds {args.seeds} --trial-time {args.trial_time:.0f}")


if __name__ == "__main__":
    main()
