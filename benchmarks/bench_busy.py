"""A short auto sweep on a machine that other work shares, against one or more charsearch trees side by side.

    python benchmarks/bench_busy.py --tree before=/path/to/old/checkout --tree after=. [--time 180] [--runs 1]
                                    [--other-threads 1]

For each tree (and run), `charsearch sweep --data tinyshakespeare --time T` runs twice: on the quiet machine,
and beside "other work": another process training an LSTM 2x128 with --other-threads torch threads,
started before the sweep and stopped after it (what a second user's training job does). The
table gives the sweep's best val loss, its trials' training rate at their last report against the rate
calibration measured, the threads at the last report (where the tree logs them), the notes the sweep
printed, and its wall time.

Writes the `busy` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(os.environ.get("CHARSEARCH_SHAKESPEARE", ROOT.parent / "shared/data/tinyshakespeare/input.txt"))

OTHER_WORK = """
import torch
torch.set_num_threads({threads})
net = torch.nn.LSTM(128, 128, 2, batch_first=True)
opt = torch.optim.Adam(net.parameters())
x = torch.randn(32, 64, 128)
while True:
    opt.zero_grad()
    net(x)[0].sum().backward()
    opt.step()
"""


def run(tree: Path, budget: int, busy: int, folder: Path) -> dict:
    data = folder / "data" / "tinyshakespeare" / "input.txt"
    data.parent.mkdir(parents=True)
    data.write_bytes(SHAKESPEARE.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    other = subprocess.Popen([sys.executable, "-c", OTHER_WORK.format(threads=busy)]) if busy else None
    try:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", "--data", "tinyshakespeare", "--time",
                            str(budget)], cwd=folder, env=env, capture_output=True, text=True)
        wall = time.time() - t0
    finally:
        if other:
            other.kill()
            other.wait()
    if r.returncode:  # a row all the same: what the user got
        last = (r.stderr.strip() or r.stdout.strip() or "-").splitlines()[-1]
        return {"val": None, "shape": "-", "trials": "-", "rate": None, "calibrated": None, "threads": "-",
                "notes": [f"exit {r.returncode}: {last}"], "wall": wall}
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(re.search(r"MLflow: experiment '([^']+)'", r.stdout)[1])
    trials = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("charsearch.kind") == "trial"
              and "best_val_loss" in x.data.metrics]
    if not trials:
        return {"val": None, "shape": "-", "trials": 0, "rate": None, "calibrated": None, "threads": "-",
                "notes": [f"no trial reported: {r.stdout.strip().splitlines()[0] if r.stdout.strip() else '-'}"],
                "wall": wall}
    best = min(trials, key=lambda x: x.data.metrics.get("best_val_loss", float("inf")))
    shape = f"{best.data.params.get('model')} {best.data.params.get('num_layers')}x{best.data.params.get('rnn_size')}"
    measured = re.search(rf"#\s+{re.escape(shape)}\s+[\d,]+ params\s+([\d,]+) chars/s", r.stderr)
    threads = [m.value for m in client.get_metric_history(best.info.run_id, "threads")]
    return {"val": best.data.metrics["best_val_loss"], "shape": shape, "trials": len(trials),
            "rate": best.data.metrics.get("chars_per_sec"),
            "calibrated": float(measured[1].replace(",", "")) if measured else None,
            "threads": "→".join(dict.fromkeys(f"{t:g}" for t in threads)) if threads else "-",
            "notes": [line for line in r.stderr.splitlines() if line.startswith("note:")], "wall": wall}


def commit_of(tree: Path) -> str:
    r = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a charsearch checkout")
    ap.add_argument("--time", type=int, default=180)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--other-threads", type=int, default=1, help="the other work's torch threads")
    ap.add_argument("--machines", default="busy,quiet", help="busy, quiet or both")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree)]
    rows = []
    for busy in [{"busy": args.other_threads, "quiet": 0}[m] for m in args.machines.split(",")]:
        for name, tree in trees:
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="bench-busy-") as d:
                    r = run(tree, args.time, busy, Path(d))
                print(name, "busy" if busy else "quiet", r, flush=True)
                rate = "-" if r["rate"] is None else (
                    f"{r['rate']:,.0f}" + (f" ({r['rate'] / r['calibrated']:.0%})" if r["calibrated"] else ""))
                rows.append({"machine": "busy" if busy else "quiet", "tree": name,
                             "best val": "-" if r["val"] is None else f"{r['val']:.4f}",
                             "shape": r["shape"], "trials": r["trials"], "rate (of calibration)": rate,
                             "threads": r["threads"], "wall s": f"{r['wall']:.0f}",
                             "notes": "; ".join(n.removeprefix("note: ")[:120] for n in r["notes"]) or "-"})
    where = "quiet and beside" if "quiet" in args.machines else "beside"
    body = (f"`charsearch sweep --data tinyshakespeare --time {args.time}` on this 2-core machine, {where} "
            f"another process training an LSTM 2x128 with {args.other_threads} torch thread(s). Rate: the best trial's chars/s "
            "over its run at its last report, and its share of what calibration measured for its shape on one "
            "thread; threads: the trial's torch threads at its reports (where the tree logs them). Trees: "
            + ", ".join(f"{name} = {commit_of(tree)}" for name, tree in trees) + ". One run per row.\n\n"
            + table(rows))
    print(body)
    if not args.no_write:
        write_section("busy", "A short sweep on a busy machine", body,
                      f"python benchmarks/bench_busy.py --tree before=<checkout> --tree after=. "
                      f"--other-threads {args.other_threads}")


if __name__ == "__main__":
    main()
