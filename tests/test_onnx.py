"""`charsearch export --format onnx`: one generation step as an ONNX graph, checked against onnxruntime."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from charsearch.cli import main
from charsearch.core import artifact
from charsearch.core.data import Vocab
from charsearch.core.model import CharRNN
from charsearch.core.onnx_step import greatest_difference

from .conftest import ROOT, make_text

ort = pytest.importorskip("onnxruntime", reason="pip install -e '.[onnx]' for the ONNX export's tests")
pytest.importorskip("onnx")
VOCAB = Vocab(tuple(chr(65 + i) for i in range(50)))
spec = importlib.util.spec_from_file_location("onnx_sample", ROOT / "docs" / "examples" / "onnx_sample.py")
onnx_sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onnx_sample)


def model_file(path, cell, cutoffs=(), seed=0):
    torch.manual_seed(seed)
    m = CharRNN(len(VOCAB), cell, 16, 2, cutoffs=list(cutoffs))
    if cutoffs:
        m.rank_by(torch.rand(len(VOCAB)))
    artifact.save(path, artifact.ModelFile(dict(m.config), VOCAB, m.state_dict()).to_dict())
    return path


def ensemble_file(path):
    members = [artifact.load(model_file(path.with_name(f"m{i}.pt"), cell, seed=i))
               for i, cell in enumerate(("lstm", "gru"))]
    artifact.save(path, artifact.EnsembleFile(members, [0.3, 0.7], VOCAB).to_dict())
    return path


@pytest.mark.parametrize("make", [
    lambda p: model_file(p, "lstm"), lambda p: model_file(p, "gru"), lambda p: model_file(p, "rnn"),
    lambda p: model_file(p, "lstm", cutoffs=(10, 30)), lambda p: model_file(p, "gru", cutoffs=(10, 30)),
    ensemble_file,
], ids=["lstm", "gru", "rnn", "lstm-adaptive", "gru-adaptive", "ensemble"])
def test_the_onnx_step_gives_the_models_log_probabilities_over_hundreds_of_steps(tmp_path, capsys, make):
    path = make(tmp_path / "model.pt")
    assert main(["export", str(path), "--out", str(tmp_path / "model.onnx")]) == 0
    assert "one generation step as ONNX" in capsys.readouterr().out
    meta = ort.InferenceSession(str(tmp_path / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["charsearch.vocab"]) == list(VOCAB.chars)
    worst = greatest_difference(artifact.load(path), tmp_path / "model.onnx", steps=300, first=3)
    assert worst <= 1e-5


def test_a_greedy_onnx_sample_is_the_greedy_charsearch_sample(tmp_path):
    """The documented onnxruntime loop (docs/examples/onnx_sample.py), greedy, writes what `charsearch sample
    --argmax` writes, for 500 characters of a trained model."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30_000))
    assert main(["train", "--data", str(corpus), "--rnn-size", "48", "--num-layers", "1", "--max-epochs", "1",
                 "--eval-every", "100", "--checkpoint-dir", str(tmp_path / "cv"), "--quiet"]) == 0
    (checkpoint,) = [p for p in (tmp_path / "cv").glob("*.pt")][-1:]
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.pt")]) == 0
    cli = subprocess.run([sys.executable, "-m", "charsearch", "sample", str(tmp_path / "m.pt"), "--argmax",
                          "--length", "500"], capture_output=True, text=True, check=True).stdout
    onnx_text = onnx_sample.sample(str(tmp_path / "m.onnx"), "\n", 500, argmax=True)
    assert onnx_text[1:] == cli[:-1]  # the CLI starts after a newline and ends its output with one


def test_writing_onnx_is_refused_in_one_line_without_the_onnx_package(tmp_path, capsys, monkeypatch):
    from .conftest import one_line_error
    path = model_file(tmp_path / "m.pt", "gru")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    one_line_error(capsys, "export", path, "--out", tmp_path / "m.onnx", match=r"needs the onnx package: pip install")
    assert not (tmp_path / "m.onnx").exists()
