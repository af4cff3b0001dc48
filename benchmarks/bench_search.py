"""Does the search pay for itself? At equal wall time on the same machine, one after the other:
(a) `charsearch train` with its defaults, (b) the automatically sized sweep (`charsearch sweep --data
C --time T`: TPE), (c) the same auto-sized sweep with random search; on tiny-shakespeare and on a
corpus of another kind built here (Python source from the standard library).

    python benchmarks/bench_search.py [--time 600] [--seeds 2] [--second-time 300]

Every run is a real CLI process in a fresh project folder. The curve of each is the best fair val loss
so far against wall time since its command started: for `train`, read off its evaluation lines as they
come; for a sweep, from MLflow (each val_loss metric at the time it was logged). Writes the
`search-cpu` section of BENCHMARKS.md and benchmarks/plots/search_cpu.png.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PLOTS, SHAKESPEARE, save_json, table, write_section  # noqa: E402

VAL_LINE = re.compile(r"val ([0-9.]+) nats/char")
PROGRESS_LINE = re.compile(r"iter (\d+)/\d+ \(epoch ([0-9.]+)\)")


def python_corpus(dest: Path, size: int = 1_100_000) -> Path:
    """~1.1 MB of the standard library's Python source, files in sorted order (same text on any
    machine with the same Python)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for f in sorted(stdlib.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(parts)[:size], encoding="utf-8")
    return dest


def env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "PYTHONUNBUFFERED": "1"}


def run_train(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    return follow_train([sys.executable, "-m", "charsearch", "train", "--data", str(corpus), "--max-time", str(budget),
                         "--seed", str(seed), "--checkpoint-dir", str(project / "cv")], project)


def follow_train(cmd: list[str], project: Path, extra_env: dict | None = None) -> dict:
    """A `charsearch train` command, its best val loss so far read off its evaluation lines as they come."""
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=project, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    points, best, progress = [], float("inf"), {}
    for line in p.stderr:
        m, at = VAL_LINE.search(line), PROGRESS_LINE.search(line)
        if at:
            progress["steps"], progress["epochs"] = int(at[1]), float(at[2])
        if m:
            if float(m[1]) < best and at:
                progress["best_epoch"] = float(at[2])
            best = min(best, float(m[1]))
            points.append((time.time() - t0, best))
    p.wait()
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed")
    # steps and passes over the train split at the last evaluation, and the pass of the best one
    return {"points": points, "best": best, "wall": time.time() - t0, "calibration_s": 0.0, **progress}


def run_sweep(corpus: Path, budget: float, seed: int, algorithm: str, project: Path, extra: tuple = (),
              train: dict | None = None) -> dict:
    """An auto sweep from a sweep file (its fixed `train` options, if given), with `extra` command-line flags."""
    name = f"bench-{algorithm}-{seed}"
    sweep = {"name": name, "data": {"corpus": str(corpus)}, "search_space": "auto",
             "search": {"algorithm": algorithm, "seed": seed}, "budget": {"sweep_time": budget},
             **({"train": train} if train else {})}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(path), *extra], cwd=project, env=env(),
                       capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        raise SystemExit(f"sweep {name} failed:\n{r.stderr[-3000:]}")
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.data.tags.get("charsearch.kind") == "sweep")
    values = []
    for run in runs:
        if run.data.tags.get("charsearch.kind") == "trial":
            values += [(m.timestamp / 1000 - t0, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]
    points, best = [], float("inf")
    for t, v in sorted(values):
        best = min(best, v)
        points.append((t, best))
    cal = re.search(r"measured in (\d+) s", r.stderr)
    winner = re.search(r"best val loss .*?trial \w+: (\{.*\})", r.stdout)
    trials = sum(run.data.tags.get("charsearch.kind") == "trial" for run in runs)
    # where each trial ended (characters trained, outcome): ASHA's stops show where it read its first rung
    ends = sorted((run.data.metrics.get("chars_trained"), run.data.tags.get("charsearch.outcome")) for run in runs
                  if run.data.tags.get("charsearch.kind") == "trial" and "chars_trained" in run.data.metrics)
    finisher = next((run for run in runs if "charsearch.finish_s" in run.data.tags), None)
    return {"points": points, "best": parent.data.metrics["best_val_loss"], "wall": wall, "trials": trials,
            "trial_ends": ends, "winner_constant": constant_share(client, finisher) if finisher else None,
            "calibration_s": float(cal[1]) if cal else None, "summary": r.stdout.splitlines()[0],
            "winner": winner[1] if winner else "", "plan": plan_lines(r.stderr)}


def constant_share(client, run) -> float | None:
    """The share of its characters a sweep's winner trained at its constant rate, before the finish's decay: its
    last report at its peak rate over its last report (reports are logged on the characters-trained axis)."""
    history = client.get_metric_history(run.info.run_id, "learning_rate")
    if not history:
        return None
    peak = max(m.value for m in history)
    return max(m.step for m in history if m.value >= 0.999 * peak) / max(max(m.step for m in history), 1)


def plan_lines(text: str) -> list[str]:
    """An auto sweep's plan as printed (calibration rates, kept shapes, the first trial): kept with the
    results, so a row's sizing can be read afterwards."""
    return [line for line in text.splitlines() if line.startswith("# ")][:40]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=float, default=600, help="seconds per run on tiny-shakespeare")
    ap.add_argument("--second-time", type=float, default=300, help="seconds per run on the Python corpus")
    ap.add_argument("--seeds", type=int, default=2, help="seeds of (a) and (b) on tiny-shakespeare")
    ap.add_argument("--report-only", action="store_true", help="redraw from benchmarks/plots/search_cpu.json")
    args = ap.parse_args()
    if args.report_only:
        import json
        report(json.loads((PLOTS / "search_cpu.json").read_text()), args)
        return
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {"tiny-shakespeare": (tmp / "shakespeare" / "input.txt", args.time, args.seeds),
                   "Python stdlib source": (python_corpus(tmp / "pysrc" / "input.txt"), args.second_time, 1)}
        (tmp / "shakespeare").mkdir(exist_ok=True)
        corpora["tiny-shakespeare"][0].write_bytes(SHAKESPEARE.read_bytes())
        for corpus_name, (corpus, budget, seeds) in corpora.items():
            for seed in range(seeds):
                for method in ("auto sweep (TPE)", "train defaults", "auto sweep, random search"):
                    if method.endswith("random search") and seed > 0:  # one run: TPE vs random is not the claim
                        continue
                    project = tmp / f"p-{len(results)}"
                    project.mkdir()
                    print(f"{corpus_name}, {method}, seed {seed}, {budget:g} s ...", file=sys.stderr, flush=True)
                    if method == "train defaults":
                        r = run_train(corpus, budget, 123 + seed, project)
                    else:
                        r = run_sweep(corpus, budget, seed, "random" if "random" in method else "tpe", project)
                    print(f"  best {r['best']:.4f} in {r['wall']:.0f} s", file=sys.stderr, flush=True)
                    results[f"{corpus_name}|{method}|{seed}"] = {**r, "budget": budget}
    save_json("search_cpu", results)
    report(results, args)


def report(results: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = []
    groups: dict = {}
    for key, r in results.items():
        corpus, method, seed = key.split("|")
        groups.setdefault((corpus, method), []).append(r)
    for (corpus, method), rs in groups.items():
        bests = [r["best"] for r in rs]
        spread = f" ± {statistics.stdev(bests):.3f}" if len(bests) > 1 else ""
        cal = [r["calibration_s"] for r in rs if r.get("calibration_s")]
        rows.append({"corpus": corpus, "method": method, "budget": f"{rs[0]['budget']:g} s",
                     "best val (nats/char)": f"{statistics.mean(bests):.4f}{spread}",
                     "runs": ", ".join(f"{b:.4f}" for b in bests),
                     "wall (s)": ", ".join(f"{r['wall']:.0f}" for r in rs),
                     "calibration (s)": ", ".join(f"{c:.0f}" for c in cal) or "-",
                     "winner": "; ".join(r["winner"] for r in rs if r.get("winner")) or "2x128 LSTM (defaults)"})
    corpora = list(dict.fromkeys(k[0] for k in groups))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
    colours = {"train defaults": "#777777", "auto sweep (TPE)": "#1f6fb4", "auto sweep, random search": "#d9822b"}
    for ax, corpus in zip(axes[0], corpora):
        for key, r in results.items():
            c, method, seed = key.split("|")
            if c != corpus or not r["points"]:
                continue
            ax.step([p[0] / 60 for p in r["points"]], [p[1] for p in r["points"]], where="post",
                    color=colours[method], alpha=1.0 if seed == "0" else 0.55, label=method if seed == "0" else None)
        finals = [r["best"] for k, r in results.items() if k.startswith(corpus)]
        ax.set_ylim(min(finals) - 0.05, max(finals) + 0.4)  # every method's end in view
        ax.set(xlabel="wall time since the command started (min)", ylabel="best fair val loss so far (nats/char)",
               title=corpus)
        ax.grid(alpha=0.3)
        ax.legend()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "search_cpu.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    body = (
        "Same 2-core machine, one run after the other, each a fresh CLI process and project. (a) `charsearch "
        "train --data C --max-time T` (the defaults: 2x128 LSTM, Adam 2e-3, char-rnn's step decay); (b) "
        "`charsearch sweep` of a file with `search_space: auto` and `budget.sweep_time: T` (the same sweep "
        "`--data C --time T` runs): calibration, then TPE with ASHA on all cores, then the best trial trains on "
        "with the whole machine and its learning rate decaying to 0; (c) the same with `search.algorithm: "
        "random`. Best val: the lowest fair val loss (nats/char) reached within the run; ± is the standard "
        "deviation over seeds (seed of the search, or `--seed` of train). Wall: the whole command, start-up, "
        "calibration and shutdown included. The second corpus is ~1.1 MB of the Python standard library's "
        "source (`*.py` files in sorted order), built by the script.\n\n"
        + table(rows) + "\n\n![best val vs wall time](benchmarks/plots/search_cpu.png)")
    write_section("search-cpu", "Search vs defaults at equal wall time (CPU)", body,
                  f"python benchmarks/bench_search.py --time {args.time:g} --second-time {args.second_time:g} "
                  f"--seeds {args.seeds}")


if __name__ == "__main__":
    main()
