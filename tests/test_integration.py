"""End to end through the real command line: train on tiny-shakespeare, export, sample, inspect, eval."""

import math
import subprocess
import sys

import numpy as np
import pytest


def cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "charsearch", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_train_export_sample_inspect_on_tiny_shakespeare(tmp_path, shakespeare_slice):
    text = shakespeare_slice.read_text()
    counts = np.bincount(np.frombuffer(text.encode(), np.uint8))
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())  # about 3.3 nats/char: what a model with no context achieves

    out = cli("train", "--data", shakespeare_slice, "--rnn-size", "128", "--num-layers", "1", "--batch-size", "32",
              "--seq-length", "64", "--learning-rate", "0.004", "--max-epochs", "8", "--eval-every", "100",
              "--lr-schedule", "constant", "--quiet", cwd=tmp_path)
    best = float(out.split("best val loss ")[1].split()[0])
    # by epochs, not seconds: what it learns does not depend on what else the machine runs (~2.0 here)
    assert best < unigram - 1.0, (best, unigram)

    ckpt = out.split("best checkpoint: ")[1].split()[0]
    cli("export", ckpt, "--out", "model.pt", cwd=tmp_path)
    sample = cli("sample", "model.pt", "--primetext", "ROMEO:", "--length", "300", "--temperature", "0.7", cwd=tmp_path)
    assert sample.startswith("ROMEO:") and len(sample) == 307
    words = sample.split()
    assert sum(w.strip(".,;:!?'").lower() in {"the", "and", "to", "of", "i", "you", "my", "a", "that", "is"}
               for w in words) >= 3, sample  # learned some English
    info = cli("inspect", "model.pt", cwd=tmp_path)
    assert f"{best:.4f} nats/char" in info and "lstm 1x128" in info
    ev = cli("eval", "model.pt", "--data", shakespeare_slice, cwd=tmp_path)
    assert math.isclose(float(ev.split()[1]), best, abs_tol=1e-4)
