"""The ONNX step graph against charsearch's own sampler, on this CPU, one after the other: agreement of the
log-probabilities over 300 steps, file sizes, and one stream's sampling speed (onnxruntime running the
documented loop, docs/examples/onnx_sample.py, against `charsearch sample`'s Sampler, both one thread).

    python benchmarks/bench_onnx.py          # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from charsearch.core import artifact
from charsearch.core.config import SampleOptions
from charsearch.core.data import Vocab
from charsearch.core.model import CharRNN
from charsearch.core.onnx_step import export_onnx, greatest_difference
from charsearch.core.sample import Sampler, cpu_sampling

from common import ROOT, corpus_text, table, write_section

SHAPES = (("lstm", 2, 128), ("lstm", 2, 512), ("gru", 2, 256))
LENGTH = 2000
RUNS = 3
spec = importlib.util.spec_from_file_location("onnx_sample", ROOT / "docs" / "examples" / "onnx_sample.py")
onnx_sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onnx_sample)


def best_rate(fn) -> float:
    fn(20)  # warm-up
    rates = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn(LENGTH)
        rates.append(LENGTH / (time.perf_counter() - t0))
    return max(rates)


def main() -> None:
    chars = "".join(sorted(set(corpus_text())))
    vocab = Vocab(tuple(chars))
    rows = []
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for cell, layers, size in SHAPES:
            torch.manual_seed(0)
            m = CharRNN(len(vocab), cell, size, layers)
            mf = artifact.ModelFile(dict(m.config), vocab, m.state_dict())
            pt, onnx = Path(tmp) / "m.pt", Path(tmp) / "m.onnx"
            artifact.save(pt, mf.to_dict())
            export_onnx(mf, onnx)
            sampler = Sampler(mf, "cpu")
            with cpu_sampling():
                torch_rate = best_rate(lambda n: sampler.generate(SampleOptions("\n", n, seed=1)))
            onnx_rate = best_rate(lambda n: onnx_sample.sample(str(onnx), "\n", n, seed=1))
            rows.append({"model": f"{cell} {layers}x{size}", "max log-prob difference (300 steps)":
                         f"{greatest_difference(mf, onnx):.1e}", "model.pt": f"{pt.stat().st_size / 1e6:.2f} MB",
                         "model.onnx": f"{onnx.stat().st_size / 1e6:.2f} MB",
                         "charsearch sample (chars/s)": f"{torch_rate:,.0f}",
                         "onnxruntime loop (chars/s)": f"{onnx_rate:,.0f}", "ratio": f"{onnx_rate / torch_rate:.2f}"})
            print(rows[-1], flush=True)
    body = (f"One stream of {LENGTH:,} characters from a randomly initialised model over tiny-shakespeare's "
            f"{len(vocab)} characters, best of {RUNS} runs each, one after the other in one process. "
            f"charsearch: `Sampler.generate` with `cpu_sampling()` (one thread, as `charsearch sample` runs). "
            f"ONNX: the documented loop (docs/examples/onnx_sample.py: one `session.run` per character, "
            f"numpy softmax and draw) on onnxruntime {ort.__version__} with its default session options.\n\n"
            + table(rows))
    write_section("onnx", "ONNX step graph against charsearch sample (CPU)", body, "python benchmarks/bench_onnx.py")


if __name__ == "__main__":
    main()
