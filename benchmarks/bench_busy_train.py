"""`charsearch train` on a machine that other work shares: its threads fixed, or chosen as it trains.

    python benchmarks/bench_busy_train.py [--max-time 60] [--runs 1]

One command, `charsearch train` on the first 200,000 characters of tiny-shakespeare (an LSTM 1x128, batch
32 x 64, 8 epochs or --max-time seconds, whichever comes first), runs on a quiet machine and beside other
work: a process training an LSTM 2x128 with one torch thread, or with two (a second training job). Each
machine runs it three ways: `--threads 2` and `--threads 1` (fixed), and the default (every core, or one
where other work makes them slower: timed at the start and watched as it trains, core/threads.py).
The table gives its training rate, the val loss it reached, the epochs it trained and its wall time.

Writes the `busy-train` section of BENCHMARKS.md and benchmarks/plots/busy-train.json.
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
from bench_busy import OTHER_WORK  # noqa: E402
from common import ROOT, corpus_text, git_rev, save_json, table, write_section  # noqa: E402

CHARS = 200_000
TRAIN = ["--rnn-size", "128", "--num-layers", "1", "--batch-size", "32", "--seq-length", "64", "--learning-rate",
         "0.004", "--max-epochs", "8", "--eval-every", "100", "--lr-schedule", "constant", "--quiet"]


def run(threads: int | None, other_threads: int, max_time: int, folder: Path) -> dict:
    data = folder / "input.txt"
    data.write_text(corpus_text()[:CHARS])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    other = subprocess.Popen([sys.executable, "-c", OTHER_WORK.format(threads=other_threads)]) if other_threads else None
    try:
        time.sleep(2 if other else 0)  # the other work is running before the command starts
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "charsearch", "train", "--data", str(data), *TRAIN,
                            "--max-time", str(max_time), *(["--threads", str(threads)] if threads else [])],
                           cwd=folder, env=env, capture_output=True, text=True)
        wall = time.time() - t0
    finally:
        if other:
            other.kill()
            other.wait()
    if r.returncode:
        raise SystemExit(f"charsearch train failed: {r.stderr.strip().splitlines()[-1]}")
    m = re.search(r"best val loss ([0-9.]+) nats/char .*? after ([0-9.]+) epochs \((\w+)\); ([\d,]+) chars/s", r.stdout)
    return {"val": float(m[1]), "epochs": float(m[2]), "stop": m[3], "rate": float(m[4].replace(",", "")),
            "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-time", type=int, default=60, help="seconds each command may train (--max-time)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    results, rows = [], []
    for other_threads, machine in ((0, "quiet"), (1, "beside 1 busy thread"), (2, "beside a 2-thread job")):
        for threads, how in ((2, "--threads 2"), (1, "--threads 1"), (None, "default")):
            for run_index in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="bench-busy-train-") as d:
                    r = run(threads, other_threads, args.max_time, Path(d))
                print(machine, how, r, flush=True)
                results.append({"machine": machine, "threads": how, "run": run_index, **r})
                rows.append({"machine": machine, "threads": how, "chars/s": f"{r['rate']:,.0f}",
                             "best val": f"{r['val']:.4f}", "epochs": f"{r['epochs']:.2f}",
                             "stopped by": "8 epochs" if r["stop"] == "max_epochs" else f"{args.max_time} s",
                             "wall s": f"{r['wall']:.0f}"})
    save_json("busy-train", {"max_time": args.max_time, "rev": git_rev(), "results": results})
    body = (f"`charsearch train` (LSTM 1x128, batch 32 x 64, learning rate 0.004, the first {CHARS:,} characters "
            f"of tiny-shakespeare, 8 epochs or {args.max_time} s of training, whichever comes first) on this "
            "2-core machine: quiet, beside a process training an LSTM 2x128 on one torch thread, and beside one "
            "training it on two (as a second training job would). Threads: fixed by `--threads`, or the default "
            "(every core, or one where other work makes them slower: timed at the start and watched as it "
            "trains). chars/s: training characters per second of training (evaluations excluded); wall: the "
            f"whole command. {args.runs} run(s) per row.\n\n" + table(rows))
    print(body)
    if not args.no_write:
        write_section("busy-train", "One training command on a busy machine", body,
                      f"python benchmarks/bench_busy_train.py --max-time {args.max_time} --runs {args.runs}")


if __name__ == "__main__":
    main()
