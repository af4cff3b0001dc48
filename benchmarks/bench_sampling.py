"""Sampling on CPU: charsearch's sampler vs the naive per-character loop of the PyTorch char-RNN lesson.

    python benchmarks/bench_sampling.py [--threads 2] [--length 2000]

Same architecture (2x512 LSTM, tiny-shakespeare's 65 characters), same CPU threads. The naive loop,
as the lesson writes it: for every character, one-hot encode in numpy, run the network on one step,
softmax, copy the probabilities to numpy and draw with np.random.choice. charsearch: one step of the
model per character for all streams at once, top-k/temperature/multinomial in torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bar_chart, corpus_text, save_json, table, write_section  # noqa: E402
from reference_trainer import SeedLSTM, one_hot_encode  # noqa: E402

from charsearch.core.artifact import ModelFile
from charsearch.core.data import Vocab
from charsearch.core.model import CharRNN
from charsearch.core.sample import SampleOptions, Sampler


def naive_sample(net: SeedLSTM, chars: list[str], size: int, prime: str = "The", top_k: int | None = None) -> str:
    """The lesson's sample(): predict() one character at a time."""
    char2int = {c: i for i, c in enumerate(chars)}

    def predict(char, h):
        x = np.array([[char2int[char]]])
        x = one_hot_encode(x, len(chars))
        inputs = torch.from_numpy(x)
        h = tuple(each.data for each in h)
        out, h = net(inputs, h)
        p = F.softmax(out, dim=1).data
        if top_k is None:
            top_ch = np.arange(len(chars))
        else:
            p, top_ch = p.topk(top_k)
            top_ch = top_ch.numpy().squeeze()
        p = p.numpy().squeeze()
        return chars[np.random.choice(top_ch, p=p / p.sum())], h

    net.eval()
    with torch.no_grad():
        h = tuple(torch.zeros(net.lstm.num_layers, 1, net.n_hidden) for _ in range(2))
        out = list(prime)
        for ch in prime:
            char, h = predict(ch, h)
        out.append(char)
        for _ in range(size):
            char, h = predict(out[-1], h)
            out.append(char)
    return "".join(out)


def rate(fn, chars_made: int, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, chars_made / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    length = 100 if args.quick else args.length
    chars = sorted(set(corpus_text()))
    torch.manual_seed(0)
    naive_net = SeedLSTM(len(chars), 512, 2)
    model = CharRNN(len(chars), "lstm", 512, 2, dropout=0.5)
    sampler = Sampler(ModelFile(dict(model.config), Vocab(tuple(chars)), model.state_dict()))
    naive = rate(lambda: naive_sample(naive_net, chars, length), length)
    torch.backends.mkldnn.enabled = False  # PyTorch's oneDNN LSTM is ~10x slower for one step at batch 1
    naive_plain = rate(lambda: naive_sample(naive_net, chars, length), length)
    torch.backends.mkldnn.enabled = True  # charsearch runs with PyTorch's defaults
    single = rate(lambda: sampler.generate(SampleOptions(primetext="The", length=length, seed=1)), length)
    rows = [{"sampler": "naive lesson loop (1 stream), PyTorch defaults", "chars/s": naive, "× naive": "1.00×"},
            {"sampler": "naive lesson loop (1 stream), oneDNN off", "chars/s": naive_plain,
             "× naive": f"{naive_plain / naive:.2f}×"},
            {"sampler": "charsearch, 1 stream", "chars/s": single, "× naive": f"{single / naive:.2f}×"}]
    for streams in (16, 64):
        batched = rate(lambda: sampler.generate(SampleOptions(primetext="The", length=length, seed=1,
                                                              num_samples=streams)), length * streams)
        rows.append({"sampler": f"charsearch, {streams} streams batched", "chars/s": batched,
                     "× naive": f"{batched / naive:.2f}×"})
    for r in rows:
        print(r, flush=True)
    if args.quick:
        return
    save_json("sampling_cpu", rows)
    body = (f"2x512 LSTM, 65-character vocabulary, {args.threads} CPU threads, {length} characters per sample, best "
            f"of 3 runs (generation only; process start-up not included: `charsearch sample` imports torch but not "
            f"Ray or MLflow). Aggregate chars/s over all streams. charsearch steps the recurrent layers as plain "
            f"matrix products with the first layer's input projection precomputed per character "
            f"(`charsearch.core.sample.Stepper`); nn.LSTM spends most of a one-step call on per-call overhead. "
            f"× is over the lesson loop as written (PyTorch defaults); the oneDNN-off row shows the loop "
            f"with that one setting changed.\n\n" + table(rows) + "\n\n"
            + bar_chart("sampling_cpu", {r["sampler"]: r["chars/s"] for r in rows}, "chars/s",
                        f"Sampling a 2x512 LSTM on {args.threads} CPU threads"))
    write_section("sampling-cpu", "Sampling on CPU", body, f"python benchmarks/bench_sampling.py --threads {args.threads}")


if __name__ == "__main__":
    main()
