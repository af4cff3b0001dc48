"""Time to quality: `charsearch sweep sweeps/shakespeare.yaml` with TPE vs the same sweep with random
search, same budget, one after the other on the same GPU; best fair val loss so far vs wall time.

    python benchmarks/bench_quality.py [--sweep sweeps/shakespeare.yaml] [--sweep-time 1200]

Reads both sweeps back from MLflow (a trial's best val loss counts from the moment its run ended) and
plots best-so-far against wall time to benchmarks/plots/quality.png.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PLOTS, ROOT, SHAKESPEARE, save_json, table, write_section  # noqa: E402


def best_so_far(uri: str, experiment: str) -> tuple[list[tuple[float, float]], float]:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    parent = runs[runs["tags.charsearch.kind"] == "sweep"].iloc[0]
    trials = runs[(runs["tags.charsearch.kind"] == "trial") & runs["metrics.best_val_loss"].notna()]
    t0 = parent.start_time
    points, best = [], float("inf")
    for _, r in trials.sort_values("end_time").iterrows():
        best = min(best, r["metrics.best_val_loss"])
        points.append(((r.end_time - t0).total_seconds(), best))
    return points, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/shakespeare.yaml", help="the sweep file both searches run")
    ap.add_argument("--sweep-time", type=float, default=1200)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "data" / "tinyshakespeare").mkdir(parents=True)
        (project / "data" / "tinyshakespeare" / "input.txt").write_bytes(SHAKESPEARE.read_bytes())
        base = yaml.safe_load((ROOT / args.sweep).read_text())
        for algorithm in ("tpe", "random"):
            sweep = {**base, "name": f"quality-{algorithm}", "search": {**base["search"], "algorithm": algorithm}}
            path = project / f"{algorithm}.yaml"
            path.write_text(yaml.safe_dump(sweep))
            env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
            subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(path), "--sweep-time",
                            str(args.sweep_time)], cwd=project, env=env, check=True)
            results[algorithm] = best_so_far(f"sqlite:///{project}/mlruns/mlflow.db", sweep["name"])
    where = f"one GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for algorithm, (points, _) in results.items():
        ax.step([p[0] / 60 for p in points], [p[1] for p in points], where="post", label=algorithm)
    ax.axhline(1.40, ls="--", c="gray", lw=0.8, label="target 1.40")
    ax.axhline(1.4697, ls=":", c="gray", lw=0.8, label="nanoGPT baby GPT 1.4697")
    ax.set(xlabel="wall time (min)", ylabel="best fair val loss (nats/char)", title=f"tiny-shakespeare, {where}")
    ax.legend()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "quality.png", dpi=120, bbox_inches="tight")
    rows = []
    for algorithm, (points, best) in results.items():
        reach = next((t for t, v in points if v <= 1.40), None)
        rows.append({"search": algorithm, "best val (nats/char)": best, "trials ended": len(points),
                     "minutes to ≤ 1.40": f"{reach / 60:.1f}" if reach else "not reached"})
    save_json("quality", {k: v[0] for k, v in results.items()})
    body = (f"`charsearch sweep {args.sweep} --sweep-time {args.sweep_time:g}` with TPE, then with random "
            f"search (same file, `search.algorithm: random`).\n\n" + table(rows) + "\n\n![best so far](benchmarks/plots/quality.png)")
    write_section("quality", f"Time to quality (tiny-shakespeare, {where})", body,
                  f"python benchmarks/bench_quality.py --sweep {args.sweep} --sweep-time {args.sweep_time:g}")


if __name__ == "__main__":
    main()
