"""Packing: aggregate training throughput of K trials sharing one device, through `charsearch sweep`.

    python benchmarks/bench_packing.py [--device cuda|cpu] [--ks 1,2,4,8,16] [--trial-time 60]

For each K, one sweep of K identical small trials (2x128 LSTM, B50 S50, distinct seeds) runs K at a
time with 1/K of the GPU each (on CPU: one core each). Compared in the same run with the packed
capacity: K independent `charsearch train` processes of the same config, started together.

- aggregate chars/s = characters trained by all trials / sweep wall time (the `charsearch sweep`
  command from start to exit: Ray start-up, scheduling, data loading and evaluation all count);
- sweep efficiency = characters trained / (sweep wall x packed capacity).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAKESPEARE, bar_chart, save_json, table, write_section  # noqa: E402

CONFIG = {"model": "lstm", "rnn_size": 128, "num_layers": 2, "batch_size": 50, "seq_length": 50}


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("RAY_AUTH_MODE", "disabled")
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def capacity(project: Path, k: int, seconds: float, device: str) -> float:
    """Aggregate chars/s of K plain trainer processes run side by side (no Ray, no MLflow)."""
    procs = []
    for i in range(k):
        cmd = [sys.executable, "-m", "charsearch", "train", "--data", "tinyshakespeare", "--quiet",
               "--max-time", str(seconds), "--max-epochs", "1000", "--eval-every", "1000000", "--seed", str(i),
               "--device", device, "--checkpoint-dir", f"cap{k}-{i}"]
        cmd += [f"--{k_.replace('_', '-')}={v}" for k_, v in CONFIG.items()]
        e = env()
        if device == "cpu":
            e["OMP_NUM_THREADS"] = "1"
        procs.append(subprocess.Popen(cmd, cwd=project, env=e, stdout=subprocess.PIPE, text=True))
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        total += float(out.split(" chars/s")[0].rsplit(";", 1)[1].replace(",", ""))
    return total


def packed_sweep(project: Path, k: int, seconds: float, device: str) -> tuple[float, float]:
    """(characters trained by all K trials, wall seconds of the whole `charsearch sweep` command)."""
    name = f"pack{k}"
    sweep = {
        "name": name, "data": {"corpus": "tinyshakespeare"},
        "train": {k_: v for k_, v in CONFIG.items()},
        "search_space": {"seed": {"choice": list(range(1, k + 1))}},
        "search": {"algorithm": "random", "seed": 0, "num_samples": k, "max_concurrent": k},
        "scheduler": {"type": "none", "report_every_epochs": 1.0},
        "budget": {"trial_max_epochs": 1000, "trial_max_time": seconds},
        "resources": {"cpu": 1, "gpu": (1.0 / k) if device == "cuda" else 0},
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project, env=env(), check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[name])
    trials = runs[runs["tags.charsearch.kind"] == "trial"]
    return float(trials["metrics.chars_trained"].sum()), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ks", default=None, help="comma-separated K values (default 1,2,4,8,16 on GPU, 1,2 on CPU)")
    ap.add_argument("--trial-time", type=float, default=60.0, help="seconds each trial trains")
    args = ap.parse_args()
    ks = [int(k) for k in (args.ks or ("1,2,4,8,16" if args.device == "cuda" else "1,2")).split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "data" / "tinyshakespeare").mkdir(parents=True)
        (project / "data" / "tinyshakespeare" / "input.txt").write_bytes(SHAKESPEARE.read_bytes())
        base = None
        for k in ks:
            cap = capacity(project, k, args.trial_time, args.device)
            chars, wall = packed_sweep(project, k, args.trial_time, args.device)
            agg = chars / wall
            base = base or agg
            rows.append({"K": k, "capacity chars/s (K processes)": cap, "sweep chars/s": agg,
                         "× K=1 sweep": f"{agg / base:.2f}×", "sweep wall s": wall,
                         "efficiency": f"{agg / cap:.0%}"})
            print(rows[-1], flush=True)
    save_json(f"packing_{args.device}", rows)
    body = (f"Device: **{args.device}**; each trial: LSTM 2x128, B50 S50, trains {args.trial_time:g} s "
            f"({'1/K of the GPU' if args.device == 'cuda' else 'one CPU core'} each), evaluates once per epoch. "
            f"Capacity: K `charsearch train` processes side by side for the same time. Sweep chars/s: all "
            f"characters trained / wall time of the whole `charsearch sweep` command (Ray start-up included); "
            f"efficiency = sweep chars/s / capacity.\n\n" + table(rows) + "\n\n"
            + bar_chart(f"packing_{args.device}", {f"K={r['K']} {what}": r[col] for r in rows for what, col in
                                                   (("capacity", "capacity chars/s (K processes)"),
                                                    ("sweep", "sweep chars/s"))},
                        "chars/s (all trials together)", f"Packed trials ({args.device})"))
    write_section(f"packing-{args.device}", f"Packed trials through charsearch sweep ({args.device})", body,
                  f"python benchmarks/bench_packing.py --device {args.device} --trial-time {args.trial_time:g}")


if __name__ == "__main__":
    main()
