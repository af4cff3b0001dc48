"""The chaos benchmark's short run in the suite (benchmarks/bench_chaos.py --points --cycles 3 --seed 3): three
seeded faults, each at a named point of a small sweep (6 tiny trials, 2 at a time, local Ray, an `mlflow server`
on loopback), then `--resume` until the sweep finishes; every check of the benchmark must hold: the sweep
finished, no trial lost, none duplicated in MLflow or in the Optuna study `report` rebuilds, no run left
RUNNING, `best --export` wrote the trial with the lowest recorded val loss."""

import random
import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_chaos  # noqa: E402

pytestmark = pytest.mark.slow

SEED = 3  # three different faults: SIGTERM, a kill with MLflow's writes held, a trial's worker killed
_rng = random.Random(SEED)
DRAWS = [bench_chaos.draw(_rng, list(bench_chaos.KINDS), None) for _ in range(3)]


@pytest.mark.parametrize("cycle", range(3), ids=[f"{kind} at {point}" for kind, point in DRAWS])
def test_a_sweep_survives_a_fault_at_a_named_point(cycle, shakespeare, monkeypatch):
    monkeypatch.setattr(bench_chaos, "SHAKESPEARE", shakespeare)
    kind, point = DRAWS[cycle]
    result = bench_chaos.run_cycle(cycle, kind, point, keep=False)
    print(result)
    assert result["phase"] == point  # the fault hit the sweep where it was meant to, not after its end
    assert bench_chaos.passed(result), result
