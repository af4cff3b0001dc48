"""A large vocabulary at the speed of a small one: `charsearch train` with its defaults (a 2x128 LSTM) on
the CJK corpus of bench_suite.py (~800 k characters, ~4,000 distinct), the output layer a full softmax
against the adaptive softmax `softmax: auto` picks there, each for the same wall time, one after the
other; chars/s (training only) and the best fair val loss (the adaptive softmax's is the exact loss of
its distribution, so the two compare).

    python benchmarks/bench_softmax.py [--time 300] [--seeds 2]

Writes the `softmax-cpu` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env  # noqa: E402
from bench_suite import cjk_corpus  # noqa: E402
from common import save_json, table, write_section  # noqa: E402

RESULT = re.compile(r"best val loss ([0-9.]+) nats/char .* after ([0-9.]+) epochs .*; ([\d,]+) chars/s")


def run(corpus: Path, softmax: str, budget: float, seed: int, folder: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "charsearch", "train", "--data", str(corpus), "--softmax", softmax,
                        "--max-time", str(budget), "--seed", str(123 + seed), "--checkpoint-dir", str(folder), "--quiet"],
                       env=env(), capture_output=True, text=True)
    m = RESULT.search(r.stdout)
    if r.returncode or not m:
        raise SystemExit(f"train --softmax {softmax} failed:\n{r.stderr[-3000:]}")
    return {"best": float(m[1]), "epochs": float(m[2]), "rate": float(m[3].replace(",", ""))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=float, default=300)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    results = {"full": [], "adaptive": []}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = cjk_corpus(Path(tmp) / "cjk" / "input.txt")
        for seed in range(args.seeds):
            for softmax in results:
                results[softmax].append(run(corpus, softmax, args.time, seed, Path(tmp) / f"{softmax}{seed}"))
                print(softmax, seed, results[softmax][-1], flush=True)
    save_json("softmax_cpu", results)
    spread = lambda xs, d: f"{statistics.mean(xs):,.{d}f}" + (f" ± {statistics.stdev(xs):,.{d}f}" if len(xs) > 1 else "")  # noqa: E731
    rows = [{"output layer": k, "chars/s (training)": spread([r["rate"] for r in v], 0),
             "best val (nats/char)": spread([r["best"] for r in v], 4),
             "per seed": ", ".join(f"{r['best']:.4f}" for r in v), "epochs": spread([r["epochs"] for r in v], 2)}
            for k, v in results.items()]
    speedup = statistics.mean(r["rate"] for r in results["adaptive"]) / statistics.mean(r["rate"] for r in results["full"])
    body = (f"`charsearch train` defaults (LSTM 2x128, trained embedding), {args.time:.0f} s each on 2 CPU threads, "
            f"one after the other, on the CJK corpus of bench_suite.py. The adaptive softmax (head of the 256 most "
            f"frequent characters, clusters to 1,024 and beyond, each 4x narrower) trains {speedup:.1f}x as many "
            f"characters per second. ± is the standard deviation over {args.seeds} seeds.\n\n" + table(rows))
    write_section("softmax-cpu", "A large vocabulary: full against adaptive softmax (CPU)", body,
                  f"python benchmarks/bench_softmax.py --time {args.time:.0f} --seeds {args.seeds}")


if __name__ == "__main__":
    main()
