"""The GPU path at equal wall time on one GPU, one after the other: (a) `charsearch train` with its
defaults, (b) the auto-sized sweep (`charsearch sweep --data tinyshakespeare --time T`, sized on the
GPU: calibration, K trials packed per GPU, the winner finished on the whole GPU), (c) the hand-written
`sweeps/shakespeare.yaml` with `--sweep-time T`.

    python benchmarks/bench_search_gpu.py [--time 1200]

Writes the `search-gpu` section of BENCHMARKS.md and benchmarks/plots/search_gpu.json. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env, run_sweep, run_train  # noqa: E402
from common import ROOT, SHAKESPEARE, save_json, table, write_section  # noqa: E402


def run_file(budget: float, project: Path) -> dict:
    """sweeps/shakespeare.yaml with its budget set to `budget`; best val from MLflow."""
    shutil.copy(ROOT / "sweeps" / "shakespeare.yaml", project / "shakespeare.yaml")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", "shakespeare.yaml", "--sweep-time", str(budget)],
                       cwd=project, env=env(), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"sweeps/shakespeare.yaml failed:\n{r.stderr[-3000:]}")
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("shakespeare")
    parent = next(x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("charsearch.kind") == "sweep")
    return {"best": parent.data.metrics["best_val_loss"], "wall": time.time() - t0, "summary": r.stdout.splitlines()[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=float, default=1200, help="seconds per run")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_search_gpu.py: no CUDA GPU here; it measures the GPU path")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, run in (("train defaults", lambda p, c: run_train(c, args.time, 123, p)),
                            ("auto sweep (GPU-sized)", lambda p, c: run_sweep(c, args.time, 0, "tpe", p)),
                            ("sweeps/shakespeare.yaml", lambda p, c: run_file(args.time, p))):
            project = Path(tmp) / method.split()[0].replace("/", "-")
            corpus = project / "data" / "tinyshakespeare" / "input.txt"
            corpus.parent.mkdir(parents=True)
            shutil.copy(SHAKESPEARE, corpus)
            result = run(project, corpus)
            rows.append({"method": method, "budget": f"{args.time:.0f} s", "best val (nats/char)": f"{result['best']:.4f}",
                         "wall (s)": f"{result['wall']:.0f}", "summary": result.get("summary", result.get("winner", ""))})
            print(rows[-1], flush=True)
    save_json("search_gpu", rows)
    body = ("One GPU, tiny-shakespeare, one run each after the other (one seed: a first reading, not a spread). "
            "Best val: the lowest fair val loss reached within the run.\n\n" + table(rows))
    write_section("search-gpu", "Search vs defaults at equal wall time (one GPU)", body,
                  f"python benchmarks/bench_search_gpu.py --time {args.time:.0f}")


if __name__ == "__main__":
    main()
