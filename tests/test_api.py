"""The Python API: its docstring's examples run as they are written, and it takes what the CLI takes."""

import doctest
import subprocess
import sys

import pytest
import yaml

import charsearch
from charsearch import api
from charsearch.core.errors import UsageError

from .conftest import ROOT, cli_env, copy_shakespeare, write_model


def test_the_examples_in_the_api_docstrings_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failed, attempted = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert attempted >= 8 and failed == 0


def test_importing_charsearch_loads_nothing_heavy():
    code = "import sys, charsearch; print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_model_streams_scores_and_says_what_it_is(tmp_path):
    path = tmp_path / "m.pt"
    write_model(path, "abc\n", seed=0, val_loss=1.25)
    model = charsearch.load(path)
    pieces = list(model.stream("ab", length=10, seed=4))
    assert pieces[0] == "ab" and len(pieces) == 11 and all(len(p) == 1 for p in pieces[1:])
    assert "".join(pieces) == model.sample("ab", length=10, seed=4)
    assert model.sample("a", length=5, argmax=True) == model.sample("a", length=5, argmax=True, seed=9)
    assert model.info["summary"]["val_loss"] == 1.25 and model.info["vocabulary"] == "abc\n"
    assert 0 < model.score("abcabc\nab") < 5


@pytest.mark.parametrize("call, match", [
    (lambda tmp: charsearch.load(tmp / "missing.pt"), "no such file"),
    (lambda tmp: charsearch.train(tmp / "c.txt", rnn_sise=4), "unknown training option 'rnn_sise'"),
    (lambda tmp: charsearch.train(tmp / "c.txt", dropout=1.5), r"dropout: must be in \[0, 1\)"),
    (lambda tmp: charsearch.train(tmp / "c.txt", threads=0), "threads must be a whole number >= 1; got 0"),
    (lambda tmp: charsearch.train(tmp / "c.txt", threads="2"), "threads must be a whole number >= 1; got '2'"),
    (lambda tmp: charsearch.sweep(tmp / "c.txt"), "--data CORPUS --time DURATION"),
])
def test_bad_input_raises_the_clis_one_line_error(tmp_path, call, match):
    (tmp_path / "c.txt").write_text("some text " * 100)
    with pytest.raises(UsageError, match=match):
        call(tmp_path)


@pytest.mark.slow
def test_a_sweep_from_python_returns_its_trials_and_exports_the_best(tmp_path, shakespeare):
    copy_shakespeare(tmp_path, shakespeare)
    (tmp_path / "sweeps").mkdir()
    sweep = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    sweep["search"].update(num_samples=2)  # two trials: the API's path, not the search, is under test
    (tmp_path / "sweeps" / "smoke.yaml").write_text(yaml.safe_dump(sweep))
    code = ("import charsearch; r = charsearch.sweep('sweeps/smoke.yaml'); m = r.export('m.pt'); "
            "best = r.trials['metrics.best_val_loss'].min(); "
            "print(len(r.trials), abs(best - r.best_val_loss) < 1e-9, m.info['summary']['val_loss'] == best)")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["2", "True", "True"]
