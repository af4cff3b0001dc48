"""Trainer throughput: charsearch's trainer vs the seed-style reference trainer, same config, same run.

    python benchmarks/bench_trainer.py [--device cpu|cuda] [--quick]

Both train an LSTM on tiny-shakespeare; throughput (characters per second) is taken over the steps after
a warm-up. charsearch's variants show what each per-step choice is worth: the default (loss read back
every 10 steps, bf16 autocast on CUDA), a host sync every step, fp32, torch.compile.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus_text, save_json, table, write_section  # noqa: E402
from reference_trainer import train_steps  # noqa: E402

from charsearch.config import TrainConfig  # noqa: E402
from charsearch.data import load_corpus  # noqa: E402
from charsearch.train import train  # noqa: E402


def charsearch_rate(path: Path, hidden: int, layers: int, batch: int, seq: int, warmup: int, steps: int,
                    device: str, **options) -> float:
    """chars/s of charsearch's trainer over the steps between the first and the last evaluation."""
    corpus = load_corpus(path)
    n_train = int(len(corpus.ids) * 0.98)
    ipe = (n_train - 1) // (batch * seq)
    evals: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=str(path), model="lstm", rnn_size=hidden, num_layers=layers, batch_size=batch,
                          seq_length=seq, dropout=0.5, train_frac=0.98, val_frac=0.02, eval_every=warmup,
                          max_epochs=(warmup + steps - 0.5) / ipe, device=device, checkpoint_dir=tmp,
                          **options)
        train(cfg, corpus, on_eval=lambda m, p, b: evals.append(m), progress=False)
    # the trainer's chars_per_sec excludes evaluation time: train time so far = chars / rate
    t0 = evals[0]["chars_trained"] / evals[0]["chars_per_sec"]
    t1 = evals[-1]["chars_trained"] / evals[-1]["chars_per_sec"]
    return (evals[-1]["chars_trained"] - evals[0]["chars_trained"]) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a few steps only (checks the script runs)")
    args = ap.parse_args()
    text = corpus_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_text(text, encoding="utf-8")
        chars = sorted(set(text))
        encoded = np.array([chars.index(c) for c in text[:400_000]], dtype=np.int64)
        if args.device == "cpu":
            configs = [(128, 2, 50, 50, 10, 60), (512, 2, 64, 100, 3, 10)]
        else:
            configs = [(128, 2, 50, 50, 50, 1000), (512, 2, 64, 100, 50, 600), (512, 2, 128, 100, 50, 400)]
        if args.quick:
            configs = [(h, l, b, s, 2, 3) for h, l, b, s, _, _ in configs[:1]]
        variants = {"charsearch": {}, "sync every step": {"print_every": 1}}
        if args.device != "cpu":
            variants.update({"fp32": {"precision": "fp32"}, "torch.compile": {"compile": True}})
        rows, raw = [], []
        for hidden, layers, batch, seq, warmup, steps in configs:
            ref = train_steps(encoded, len(chars), hidden, layers, batch, seq, steps, warmup, args.device)
            row = {"config": f"LSTM {layers}x{hidden} B{batch} S{seq}", "reference chars/s": ref}
            for name, options in variants.items():
                rate = charsearch_rate(path, hidden, layers, batch, seq, warmup, steps, args.device, **options)
                row[f"{name} chars/s"] = rate
                row[f"{name} ×"] = f"{rate / ref:.2f}×"
            print(row, flush=True)
            rows.append(row)
            raw.append({k: v for k, v in row.items()})
    if args.quick:
        return
    save_json(f"trainer_{args.device}", raw)
    body = (f"Device: **{args.device}**. Reference: the seed-style trainer (benchmarks/reference_trainer.py: one-hot "
            f"input, batches copied from the host each step, `loss.item()` every step, Adam, dropout 0.5). charsearch: "
            f"`charsearch.train.train` with the same sizes (embedding input, data on the device, loss read back every "
            f"10 steps{', bf16 autocast' if args.device != 'cpu' else ''}). Throughput over the steps after a warm-up; "
            f"× is charsearch over the reference.\n\n" + table(rows))
    write_section(f"trainer-{args.device}", f"Trainer throughput ({args.device})", body,
                  f"python benchmarks/bench_trainer.py --device {args.device}")


if __name__ == "__main__":
    main()
