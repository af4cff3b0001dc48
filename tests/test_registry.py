"""`charsearch best --register`: a python_function model in a real MLflow store and registry, loaded back
by MLflow and served by `mlflow models serve`."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from charsearch.cli import main
from charsearch.core import artifact
from charsearch.core.sample import SampleOptions, Sampler

from .conftest import Trial, cli_env, kill_session, record_sweep, store_uri, write_model
from .web import free_port, one_thread, wait_http

CHARS = tuple(sorted(set("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")))


@pytest.fixture
def store(workdir):
    """A sweep 'exp' in its own SQLite store: trial t1 (val 1.7) and t2 (val 2.0), each with a model file.
    Returns (uri, {trial: run id}, {trial: model file})."""
    uri = store_uri(workdir)
    files = {trial: workdir / f"{trial}.pt" for trial in ("t1", "t2")}
    for (trial, path), val, seed in zip(files.items(), (1.7, 2.0), (1, 2)):
        write_model(path, CHARS, size=32, seed=seed, val_loss=val)
    t = record_sweep(uri, "exp", [Trial(trial, {"rnn_size": 32}, [val], model=files[trial])
                                  for trial, val in (("t1", 1.7), ("t2", 2.0))],
                     params={"num_samples": 2}, files={"sweep.yaml": "name: exp\n"}, run_name="exp-1")
    return uri, dict(t.runs), files


def expected(model_file: Path, prime: str, length: int, temperature: float = 1.0, seed: int = 123) -> str:
    return one_thread(lambda: Sampler(artifact.load(model_file)).generate(
        SampleOptions(prime, length, temperature, seed=seed))[0])


def test_register_logs_the_best_trial_as_a_pyfunc_model_and_a_tagged_version(store, capsys):
    uri, runs, files = store
    client = MlflowClient(uri)
    before = client.get_run(runs["t1"]).info
    assert main(["best", "--tracking-uri", uri, "--register", "charlm"]) == 0
    out = capsys.readouterr().out
    assert "registered charlm version 1: trial t1 (val 1.7000 nats/char" in out
    assert "mlflow models serve -m models:/charlm/1 --env-manager local" in out

    v = client.get_model_version("charlm", "1")
    assert v.run_id == runs["t1"] and v.status == "READY"
    assert {k: v.tags[k] for k in ("val_loss", "sweep", "trial_id", "source_run_id", "architecture")} == {
        "val_loss": "1.700000", "sweep": "exp", "trial_id": "t1", "source_run_id": runs["t1"],
        "architecture": "gru 1x32"}
    assert v.tags["sweep_run_id"] == client.get_run(runs["t1"]).data.tags["mlflow.parentRunId"]
    assert "from sweep 'exp', trial t1: best fair val loss 1.7000 nats/char" in v.description
    logged = client.get_logged_model(v.source.removeprefix("models:/"))
    assert logged.source_run_id == runs["t1"]
    assert logged.experiment_id == client.get_experiment_by_name("exp").experiment_id  # the sweep's, not Default
    after = client.get_run(runs["t1"]).info  # linked to the trial's run, which was not reopened
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)

    # MLflow loads it back (models from code: no pickle) and it samples exactly as the model file does
    model = mlflow.pyfunc.load_model("models:/charlm/1")
    assert model.metadata.get_input_schema().input_names() == ["prime_text", "length", "temperature", "seed"]
    got = model.predict(pd.DataFrame([{"prime_text": "ROMEO:", "temperature": 0.8, "length": 120, "seed": 3},
                                      {"prime_text": "The ", "temperature": 1.2, "length": 40, "seed": 4}]))
    assert got == [expected(files["t1"], "ROMEO:", 120, 0.8, 3), expected(files["t1"], "The ", 40, 1.2, 4)]
    assert got[0].startswith("ROMEO:") and len(got[0]) == 126
    assert model.predict(pd.DataFrame({"prime_text": ["A"]})) == [expected(files["t1"], "A", 500)]  # defaults
    with pytest.raises(MlflowException, match="temperature must be > 0"):
        model.predict(pd.DataFrame([{"prime_text": "A", "temperature": 0.0}]))
    with pytest.raises(MlflowException, match="length must be <= 5,000"):
        model.predict(pd.DataFrame([{"prime_text": "A", "length": 5001}]))

    assert main(["best", "--tracking-uri", uri, "--register", "charlm"]) == 0  # a new version each time
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'charlm'")) == [1, 2]


def test_register_without_any_model_file(workdir, capsys):
    uri = store_uri(workdir)
    record_sweep(uri, "exp", [Trial("t1", {"rnn_size": 32}, [1.5])])
    assert main(["best", "--tracking-uri", uri, "--register", "charlm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no trial of experiment 'exp' has a model yet" in err
    assert MlflowClient(uri).search_registered_models() == []


def test_a_name_the_registry_refuses_is_refused_before_anything_is_logged(store, capsys):
    uri, _, _ = store
    assert main(["best", "--tracking-uri", uri, "--register", "team/charlm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--register 'team/charlm': Invalid model name" in err
    client = MlflowClient(uri)
    assert client.search_logged_models([client.get_experiment_by_name("exp").experiment_id]) == []


def invoke(port: int, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_sampling_requests(store, workdir):
    uri, runs, files = store
    assert main(["best", "--tracking-uri", uri, "--register", "charlm"]) == 0
    port = free_port()
    log = workdir / "models-serve.log"
    # MLflow starts its scoring server with `uvicorn` from PATH: this interpreter's scripts come first
    env = cli_env(MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/charlm/1",
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                         cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        startup = wait_http(f"http://127.0.0.1:{port}/ping", p, timeout=120, log=log)
        print(f"mlflow models serve answered after {startup:.1f} s")
        status, body = invoke(port, {"dataframe_records": [
            {"prime_text": "ROMEO:", "temperature": 0.8, "length": 200, "seed": 1},
            {"prime_text": "The ", "temperature": 1, "length": 30, "seed": 2}]})
        assert status == 200, body
        assert body["predictions"] == [expected(files["t1"], "ROMEO:", 200, 0.8, 1),
                                       expected(files["t1"], "The ", 30, 1.0, 2)]
        assert body["predictions"][0].startswith("ROMEO:") and len(body["predictions"][0]) == 206
        status, body = invoke(port, {"dataframe_records": [{"prime_text": "ROMEO:", "temperature": -1}]})
        assert status == 400 and "temperature must be > 0" in body["message"], body
        status, body = invoke(port, {"dataframe_records": [{"prime_text": "ROMEO{"}]})
        assert status == 400 and "prime_text has characters the model's vocabulary lacks: '{'" in body["message"]
    finally:
        kill_session(p.pid)
        p.wait()
