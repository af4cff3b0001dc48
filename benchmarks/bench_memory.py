"""GPU memory per trial: peak memory of the largest model of a sweep's search space, and how many such
trials fit on the GPU at once.

    python benchmarks/bench_memory.py [--sweep sweeps/shakespeare.yaml] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAKESPEARE, table, write_section  # noqa: E402

from charsearch.core.data import load_corpus
from charsearch.core.train import train
from charsearch.search.resources import corners as _corners
from charsearch.search.resources import gpu_share, step_work
from charsearch.search.sweepfile import load_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", default="sweeps/shakespeare.yaml")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_memory.py measures GPU memory: it needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data" / "tinyshakespeare" / "input.txt"
        data.parent.mkdir(parents=True)
        data.write_bytes(SHAKESPEARE.read_bytes())
        sweep = load_sweep(args.sweep, data_root=str(Path(tmp) / "data"))
        sweep.corpus = str(data)
        corpus = load_corpus(data)
        corners = sorted(_corners(sweep), key=lambda p: step_work(sweep, p, len(corpus.vocab)))
        total = torch.cuda.get_device_properties(0).total_memory
        rows = []
        for params in (corners[0], corners[-1]):
            cfg = sweep.trial_config(params)
            ipe = (int(len(corpus.ids) * cfg.train_frac) - 1) // (cfg.batch_size * cfg.seq_length)
            cfg.max_epochs, cfg.eval_every, cfg.checkpoint_dir, cfg.device = args.steps / ipe, args.steps, tmp, "cuda"
            torch.cuda.reset_peak_memory_stats()
            train(cfg, corpus, progress=False)
            peak = torch.cuda.max_memory_reserved()
            rows.append({"trial": f"{cfg.model} {cfg.num_layers}x{cfg.rnn_size} B{cfg.batch_size} S{cfg.seq_length}",
                         "peak reserved (MiB)": peak / 2**20, "CUDA context (MiB, approx.)": 500,
                         "fit on this GPU": int(total // (peak + 500 * 2**20)),
                         "auto GPU share": gpu_share(step_work(sweep, params, len(corpus.vocab)))})
            print(rows[-1], flush=True)
    body = (f"Peak memory reserved by PyTorch while training the smallest and the largest trial of `{args.sweep}` "
            f"({args.steps} steps incl. one fair validation pass), plus ~500 MiB of CUDA context per process; "
            f"'fit' = trials of that size that fit in {total / 2**30:.0f} GiB at once.\n\n" + table(rows))
    write_section("memory", "GPU memory per trial", body, f"python benchmarks/bench_memory.py --sweep {args.sweep}")


if __name__ == "__main__":
    main()
