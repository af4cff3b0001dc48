"""Trainer throughput: charsearch's trainer vs the seed-style reference trainer, same config, same run.

    python benchmarks/bench_trainer.py [--device cpu|cuda] [--quick]

Both train an LSTM on tiny-shakespeare for N steps from a fresh start; throughput = characters / wall. charsearch's variants show what each per-step choice is worth: the default (loss read back
every 10 steps, fp32), a host sync every step, fp16 autocast with loss scaling, torch.compile.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bar_chart, corpus_text, save_json, table, write_section  # noqa: E402
from reference_trainer import train_steps  # noqa: E402

from charsearch.core.config import TrainConfig
from charsearch.core.data import load_corpus
from charsearch.core.train import train


def charsearch_rate(path: Path, hidden: int, layers: int, batch: int, seq: int, steps: int, device: str,
                    **options) -> float:
    """chars/s of `charsearch.core.train.train` for `steps` steps from a fresh start. Counted against it: model
    and data set-up, one validation pass over a small val split and one checkpoint at the end."""
    corpus = load_corpus(path)
    val_frac = (batch * seq + 2) / len(corpus.ids)  # the smallest val split the run accepts
    ipe = (int(len(corpus.ids) * (1 - val_frac)) - 1) // (batch * seq)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=str(path), model="lstm", rnn_size=hidden, num_layers=layers, batch_size=batch,
                          seq_length=seq, dropout=0.5, train_frac=1 - val_frac, val_frac=val_frac,
                          eval_every=10**9, max_epochs=(steps - 0.5) / ipe, device=device, checkpoint_dir=tmp,
                          **options)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = train(cfg, corpus, progress=False)
        wall = time.perf_counter() - start
    assert result.iterations == steps
    return steps * batch * seq / wall


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
            configs = [(128, 2, 50, 50, 300), (512, 2, 64, 100, 20)]
        else:
            configs = [(128, 2, 50, 50, 2000), (512, 2, 64, 100, 1000), (512, 2, 128, 100, 600)]
        if args.quick:
            configs = [(h, l, b, s, 3) for h, l, b, s, _ in configs[:1]]
        variants = {"charsearch": {}}
        if args.device != "cpu":  # per-step choices that matter where the device runs asynchronously
            variants.update({"sync every step": {"print_every": 1}, "fp16": {"precision": "fp16"},
                             "torch.compile": {"compile": True}})
        rows, raw = [], []
        repeats = 1 if args.quick else 3
        for hidden, layers, batch, seq, steps in configs:
            best: dict[str, float] = {}
            for _ in range(repeats):  # interleaved, best of each: machine noise hits every variant alike
                best["reference"] = max(best.get("reference", 0.0), train_steps(
                    encoded, len(chars), hidden, layers, batch, seq, steps, 0, args.device))
                for name, options in variants.items():
                    best[name] = max(best.get(name, 0.0), charsearch_rate(
                        path, hidden, layers, batch, seq, steps, args.device, **options))
            ref = best["reference"]
            row = {"config": f"LSTM {layers}x{hidden} B{batch} S{seq}", "reference chars/s": ref}
            for name in variants:
                row[f"{name} chars/s"] = best[name]
                row[f"{name} ×"] = f"{best[name] / ref:.2f}×"
            print(row, flush=True)
            rows.append(row)
            raw.append({k: v for k, v in row.items()})
    if args.quick:
        return
    save_json(f"trainer_{args.device}", raw)
    body = (f"Device: **{args.device}**. Reference: the seed-style trainer (benchmarks/reference_trainer.py: one-hot "
            f"input, batches copied from the host each step, `loss.item()` every step, Adam, dropout 0.5). charsearch: "
            f"`charsearch.core.train.train` with the same sizes (one-hot input as a row lookup, data on the device, loss read back every "
            f"10 steps, fp32). Throughput: characters of "
            f"N training steps from a fresh start over wall time (first steps included for both; charsearch's set-up, "
            f"one validation pass and one checkpoint counted against it), best of {repeats} interleaved runs; × is "
            f"over the reference.\n\n" + table(rows) + "\n\n"
            + bar_chart(f"trainer_{args.device}", {f"{r['config']}: {name}": r[f"{name} chars/s"] for r in rows
                                                   for name in ("reference", *variants)},
                        "chars/s", f"Training throughput ({args.device})"))
    write_section(f"trainer-{args.device}", f"Trainer throughput ({args.device})", body,
                  f"python benchmarks/bench_trainer.py --device {args.device}")


if __name__ == "__main__":
    main()
