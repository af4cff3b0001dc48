"""The CUDA path: training on the GPU (fp32, and fp16 autocast with loss scaling; fused optimizer; data on the device), exporting a
CPU-portable model file from it, sampling on CPU, a sweep whose trials share one GPU, and the GPU calibration of an
auto sweep.
Marked `gpu`: skipped without CUDA (`pytest -m gpu` runs them on a GPU machine)."""

import pytest
import torch

from charsearch.core import artifact
from charsearch.core.config import TrainConfig
from charsearch.core.data import load_corpus
from charsearch.core.model import CharRNN
from charsearch.core.sample import SampleOptions, Sampler, Stepper
from charsearch.core.train import Evaluator, train

from .conftest import charsearch, copy_shakespeare, runs, store_uri, sweep_file

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cudnn_forward_and_the_generation_step_match_the_cpu(cell):
    torch.manual_seed(0)
    model = CharRNN(30, cell, 64, 2, dropout=0.2).eval()
    ids = torch.randint(0, 30, (4, 50))
    with torch.no_grad():
        cpu, _ = model(ids)
        gpu_model = model.to("cuda")
        gpu, state = gpu_model(ids.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
        step = Stepper(gpu_model)
        _, state = gpu_model(ids[:, :1].cuda())
        states = step.split(state)
        for t in range(1, 10):
            logits, states = step(ids[:, t].cuda(), states)
            torch.testing.assert_close(logits.cpu(), cpu[:, t], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_training_on_the_gpu_gives_a_model_file_that_loads_and_samples_on_cpu(small_corpus, tmp_path, precision):
    cfg = TrainConfig(data=str(small_corpus), rnn_size=64, num_layers=2, batch_size=16, seq_length=32,
                      max_epochs=2.0, eval_every=30, learning_rate=5e-3, seed=1, device="cuda",
                      precision=precision, checkpoint_dir=str(tmp_path / "cv"))
    r = train(cfg, progress=False)
    assert r.best_val_loss < 2.5  # learned: a uniform guess over 20-odd characters is ~3.0
    mf = artifact.export(r.best_checkpoint, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", map_location="meta", weights_only=True)
    assert all(t.dtype == torch.float32 for t in raw["state_dict"].values())
    loaded = artifact.load(tmp_path / "m.pt")
    assert all(t.device.type == "cpu" for t in loaded.state_dict.values())
    # the recorded val loss (fp32 validation on the GPU) is what the CPU computes from the file
    _, val, _ = load_corpus(small_corpus).split(0.9, 0.1)
    assert Evaluator(val, torch.device("cpu"))(loaded.build()) == pytest.approx(r.best_val_loss, rel=2e-3)
    text = Sampler(mf, "cpu").generate(SampleOptions(length=200, seed=3))[0]
    assert len(text) == 200 and set(text) <= set(mf.vocab.chars)


def test_resume_on_the_gpu_continues_the_run(small_corpus, tmp_path):
    base = dict(data=str(small_corpus), rnn_size=32, num_layers=2, batch_size=8, seq_length=16, max_epochs=1.0,
                eval_every=30, learning_rate=5e-3, seed=1, device="cuda")
    first = train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "a")),
                  on_eval=lambda m, p, b: m["iteration"] >= 60, progress=False)
    assert first.iterations == 60
    full = train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "b")), progress=False)
    resumed = train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "c"), init_from=str(first.latest_checkpoint)),
                    progress=False)
    assert resumed.iterations == full.iterations
    # cuDNN's kernels are not bit-reproducible across runs; the resumed run stays on the same course
    assert resumed.history[-1]["val_loss"] == pytest.approx(full.history[-1]["val_loss"], abs=0.05)


@pytest.mark.slow
def test_a_sweep_packs_its_trials_on_the_gpu(tmp_path, shakespeare):
    copy_shakespeare(tmp_path, shakespeare)
    path = sweep_file(tmp_path, "gpu", resources={"cpu": 1, "gpu": 0.25},
                      search={"num_samples": 4, "max_concurrent": 4})
    r = charsearch("sweep", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _, trials = runs(store_uri(tmp_path), "gpu")
    assert len(trials) == 4 and (trials.status == "FINISHED").all()
    assert (trials["tags.device"] == torch.cuda.get_device_name()).all()
    out = tmp_path / "best.pt"
    r = charsearch("best", "--experiment", "gpu", "--export", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = charsearch("sample", str(out), "--length", "100", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and len(r.stdout) >= 100, r.stderr


def test_an_auto_sized_sweep_says_the_gpus_here_stay_unused(tmp_path, shakespeare):
    copy_shakespeare(tmp_path, shakespeare)
    r = charsearch("sweep", "--data", "tinyshakespeare", "--time", "10m", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "GPU(s) here stay unused" in r.stderr and "gpu: 0.0" in r.stdout


def test_the_gpu_calibration_measures_shapes_memory_and_packing():
    import json

    from charsearch.search.calibrate import REFERENCE, calibrate_gpu, calibration_problem
    families = {("lstm", 2): (128, 256)}
    cal = calibrate_gpu(65, budget_s=300, gpus=1, cpus=4, max_params=1e7, families=families, fraction=0.02)
    assert set(cal.rates) == {"lstm 2x128", "lstm 2x256"} and REFERENCE in cal.single
    assert all(v > 1000 for v in cal.rates.values()) and all(m > 2 ** 20 for m in cal.memory.values())
    assert 1 in cal.packing and cal.per_gpu == max(cal.packing) and cal.parallel == cal.per_gpu
    assert calibration_problem(json.loads(json.dumps(cal.to_dict()))) is None
