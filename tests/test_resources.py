"""Trial resources: GPU shares by model size, and no GPU trials left pending on a cluster without GPUs."""

import pytest

from charsearch.search.resources import gpu_share, step_work, trial_resources
from charsearch.search.sweepfile import load_sweep

from .conftest import ROOT, make_text


@pytest.fixture
def sweep(workdir):
    corpus = workdir / "data" / "tinyshakespeare" / "input.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text(make_text(50_000))
    return load_sweep(ROOT / "sweeps" / "shakespeare.yaml")


def test_step_work_is_characters_per_step_times_parameters(sweep):
    small = {"model": "lstm", "rnn_size": 128, "num_layers": 2, "batch_size": 50, "seq_length": 50}
    assert step_work(sweep, small, 65) == 50 * 50 * 240_321  # the 2x128 LSTM on a 65-character vocabulary


def test_gpu_share_grows_with_the_work_of_a_step(sweep):
    shares = [gpu_share(w) for w in (1e8, 7e9, 2e10, 1e11, 5e11)]
    assert shares == [0.125, 0.125, 0.25, 0.5, 1.0]
    small = {"model": "gru", "rnn_size": 256, "num_layers": 2, "batch_size": 32, "seq_length": 64}
    large = {"model": "lstm", "rnn_size": 1024, "num_layers": 3, "batch_size": 128, "seq_length": 150}
    assert gpu_share(step_work(sweep, small, 65)) == 0.125 and gpu_share(step_work(sweep, large, 65)) == 1.0


def test_auto_asks_per_trial_on_a_gpu_cluster_and_nothing_without_gpus(sweep):
    sweep.gpu = "auto"
    resources, note = trial_resources(sweep, cluster_gpus=0, vocab_size=65)
    assert resources == {"cpu": 1.0, "gpu": 0.0} and note == ""
    per_trial, _ = trial_resources(sweep, cluster_gpus=1, vocab_size=65)
    big = {"model": "lstm", "rnn_size": 1024, "num_layers": 3, "batch_size": 128, "seq_length": 150}
    assert per_trial(big).required_resources == {"CPU": 1.0, "GPU": 1.0}
    assert per_trial({**big, "rnn_size": 256, "batch_size": 32}).required_resources["GPU"] == 0.125


def test_gpus_asked_for_without_gpus_run_on_cpu_and_say_so(sweep):
    resources, note = trial_resources(sweep, cluster_gpus=0, vocab_size=65)
    assert resources == {"cpu": 1.0, "gpu": 0.0} and "has no GPU: trials run on CPU" in note
    resources, note = trial_resources(sweep, cluster_gpus=2, vocab_size=65)
    assert resources == {"cpu": 1.0, "gpu": 0.125} and note == ""
