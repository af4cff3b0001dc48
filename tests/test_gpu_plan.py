"""GPU-sized auto sweeps without a GPU: the plan from injected calibration figures, and a real sweep on a
Ray node that declares GPUs (`ray start --num-gpus 2`): what each trial asks for and where it lands. The
measuring itself runs only on a real GPU (tests/test_gpu.py, `pytest -m gpu`)."""

import json
import re
import secrets
from pathlib import Path

import pytest

from charsearch.search import autosize
from charsearch.search.calibrate import Calibration
from charsearch.search.sweepfile import SweepConfig

from .conftest import charsearch, kill_session, runs, start, store_uri, wait_until
from .web import free_port

GIB = 2 ** 30


def h100(per_gpu=8, gpus=2, **changes) -> Calibration:
    """Figures in the shape of one H100's (a 2x128 LSTM: 535k chars/s alone, 3.65M with eight packed): the
    packing curve and each shape's single-trial rate and memory per trial."""
    single = {"lstm 2x128": 700_000, "lstm 2x512": 500_000, "lstm 2x1024": 400_000, "gru 2x512": 520_000}
    params = {"lstm 2x128": 230_000, "lstm 2x512": 3_300_000, "lstm 2x1024": 12_900_000, "gru 2x512": 2_500_000}
    memory = {"lstm 2x128": 0.8 * GIB, "lstm 2x512": 2 * GIB, "lstm 2x1024": 12 * GIB, "gru 2x512": 1.8 * GIB}
    cal = Calibration("NVIDIA H100", per_gpu * gpus, 1, params=params, gpus=gpus, per_gpu=per_gpu,
                      gpu_memory=80 * GIB, memory=memory, single=single,
                      packing={1: 535_000, 2: 1_015_000, 4: 2_280_000, 8: 3_654_000}, seconds=30.0,
                      cpu_per_trial=1.0)
    for k, v in changes.items():
        setattr(cal, k, v)
    cal.rates = {s: round(cal.packed_rate(s, cal.per_gpu)) for s in cal.single}
    return cal


def test_a_gpu_plan_packs_trials_where_throughput_grows_and_memory_allows():
    p = autosize.plan(h100(), budget_s=1200, train_chars=10_000_000, val_chars=110_000, vocab_size=65)
    # eight 2x1024 trials would take 96 GiB of an 80 GiB GPU: dropped; the others fit eight at once
    assert "lstm 2x1024" not in p.shapes and "lstm 2x512" in p.shapes
    # a GPU reads the corpus so often that the prior's pressure is far above the CPU's bound: it searches all the
    # same (one prior alone would leave most of the GPU idle)
    assert autosize.pressure(p)[1] > autosize.MAX_SEARCH_PRESSURE and p.searching
    sweep = autosize.apply(SweepConfig(path="", name="g", corpus="c.txt"), p)
    assert sweep.gpu == 0.125 and sweep.max_concurrent == 16 and sweep.cpu == 1.0  # 8 per GPU, both GPUs
    assert sweep.space["batch_size"].values == [64, 128, 256]
    # a shape's rate packed 8 to a GPU: its single rate times the packing efficiency 3.654M / (8 x 535k)
    assert p.calibration.rates["lstm 2x512"] == round(500_000 * 3_654_000 / (8 * 535_000))
    text = p.describe()
    assert "8 trials per GPU x 2 GPU(s), 0.125 of a GPU" in text and "K=8: 3,654,000" in text
    assert re.search(r"lstm 2x1024 .* 12.9 GB/trial  dropped", text)


def test_fewer_trials_are_packed_when_larger_ones_take_the_memory():
    cal = h100(per_gpu=2, packing={1: 535_000, 2: 1_015_000}, memory={
        "lstm 2x128": 0.8 * GIB, "lstm 2x512": 30 * GIB, "lstm 2x1024": 50 * GIB, "gru 2x512": 30 * GIB})
    p = autosize.plan(cal, budget_s=1200, train_chars=20_000_000, val_chars=110_000, vocab_size=65)
    assert "lstm 2x1024" not in p.shapes and "lstm 2x512" in p.shapes  # 2 x 30 GiB fit in 72, 2 x 50 do not
    assert autosize.apply(SweepConfig(path="", name="g", corpus="c.txt"), p).gpu == 0.5


def test_a_calibration_file_round_trips_and_a_bad_one_is_one_line(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(h100().to_dict()))
    again = Calibration.from_file(path)
    assert again == h100() and again.packing[8] == 3_654_000
    for change, problem in (({"per_gpu": 0}, "needs per_gpu >= 1"), ({"rates": {**h100().rates, "lstm 2x128": -1}}, "positive"),
                            ({"rates": {"cnn 2x8": 1}, "params": {"cnn 2x8": 1}, "single": {"cnn 2x8": 1},
                              "memory": {}}, "shape"), ({"extra": 1}, "expected a JSON object")):
        path.write_text(json.dumps({**h100().to_dict(), **change}))
        with pytest.raises(Exception, match=problem) as e:
            Calibration.from_file(path)
        assert "\n" not in str(e.value)


@pytest.fixture
def gpu_node(tmp_path):
    """A one-node Ray cluster that declares two GPUs (there are none: trials train on CPU)."""
    port = free_port()
    ray_tmp = Path(f"/tmp/csg-{secrets.token_hex(3)}")  # Ray's socket paths must stay short
    head = start([str(Path(__import__("sys").executable).with_name("ray")), "start", "--block", "--head",
                  "--port", str(port), "--num-cpus", "2", "--num-gpus", "2", "--node-ip-address", "127.0.0.1",
                  "--include-dashboard=false", "--temp-dir", str(ray_tmp), "--disable-usage-stats",
                  "--object-store-memory", str(200 * 2 ** 20)], tmp_path / "ray.log")
    address = f"127.0.0.1:{port}"
    wait_until(lambda: (tmp_path / "ray.log").exists() and "Ray runtime started" in (tmp_path / "ray.log").read_text()
               or head.poll() is not None, 90, "the Ray head")
    assert head.poll() is None, (tmp_path / "ray.log").read_text()[-3000:]
    yield address
    kill_session(head.pid)


@pytest.mark.slow
def test_an_auto_sweep_on_a_node_with_gpus_packs_its_trials_on_them(gpu_node, workdir, shakespeare_slice):
    # figures of a slow GPU, so the shapes it keeps also train on this machine's CPUs
    cal = Calibration("a slow GPU", 4, 1, params={"lstm 1x64": 22_000, "lstm 2x64": 55_000},
                      gpus=1, per_gpu=2, gpu_memory=16 * GIB, memory={"lstm 1x64": GIB, "lstm 2x64": GIB},
                      single={"lstm 1x64": 60_000, "lstm 2x64": 40_000}, packing={1: 60_000, 2: 110_000},
                      seconds=1.0, cpu_per_trial=0.5)
    cal.rates = {s: round(cal.packed_rate(s, 2)) for s in cal.single}
    (workdir / "cal.json").write_text(json.dumps(cal.to_dict()))
    args = ["sweep", "--data", shakespeare_slice, "--time", "75", "--calibration", "cal.json", "--address", gpu_node,
            "--search", "always"]
    dry = charsearch(*args, "--dry-run", cwd=workdir, RAY_ADDRESS=gpu_node)
    assert dry.returncode == 0, dry.stderr
    # the cluster's two GPUs, two trials on each: half a GPU and half a CPU per trial
    assert "2 trials per GPU x 2 GPU(s), 0.5 of a GPU and 0.5 CPU each" in dry.stdout, dry.stdout
    assert "max_concurrent: 4" in dry.stdout and re.search(r"# resources per trial: cpu 0\.5, gpu 0\.5", dry.stdout)
    # without a calibration the GPU is measured where Ray puts a GPU task: declared GPUs cannot be
    r = charsearch(*args[:5], "--address", gpu_node, "--search", "always", "--dry-run", cwd=workdir, RAY_ADDRESS=gpu_node)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the process it gave one to sees no CUDA device" in r.stderr and "Traceback" not in r.stderr
    r = charsearch(*args, cwd=workdir, RAY_ADDRESS=gpu_node, timeout=400)
    assert r.returncode == 0, r.stderr
    _, trials = runs(store_uri(workdir), "auto-shakespeare200k")
    assert len(trials) >= 2
    assert (trials["tags.gpu_share"].astype(float) == 0.5).all()  # what each trial asked Ray for
    assert set(trials["tags.gpu_ids"]) == {"0", "1"}  # and where Ray put it: both declared GPUs in use


def test_the_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh on a machine without CUDA: one line, exit 2, nothing written (no log, no
    BENCHMARKS.md change)."""
    import subprocess
    import sys

    from .conftest import ROOT
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    before = (ROOT / "BENCHMARKS.md").read_text()
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and "gpu_check: no CUDA GPU here (torch" in r.stderr, r.stderr
    assert not (ROOT / "benchmarks" / "gpu_check.log").exists()
    assert (ROOT / "BENCHMARKS.md").read_text() == before
