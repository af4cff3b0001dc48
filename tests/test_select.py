"""Selection and the MLflow UI against a real MLflow SQLite store (runs written through charsearch.tracking)."""

import http.client
import os
import signal
import subprocess
import sys
import urllib.request

import mlflow
import pytest
import torch

from charsearch.cli import main
from charsearch.tracking.layout import SHOWN_LOSS_TAG
from charsearch.ui import sweep_page

from .conftest import Trial, record_sweep, store_uri, write_model
from .web import free_port, wait_http


def model_file(path, seed):
    write_model(path, "ab\nc", seed=seed, val_loss=float(seed))
    return path


@pytest.fixture
def store(workdir):
    """A sweep 'exp' with three trials: val 1.5 (no model file), 1.7 and 2.0 (with model files)."""
    uri = store_uri(workdir)
    t = record_sweep(uri, "exp", [Trial(trial, {"rnn_size": rnn, "dropout": 0.1}, [val + 0.5, val],
                                        model=model_file(workdir / f"{trial}.pt", int(val * 10)) if has_model else None,
                                        summary={"chars_per_sec": 5e4})
                                  for trial, val, rnn, has_model in (("t1", 1.7, 64, True), ("t2", 2.0, 32, True),
                                                                     ("t3", 1.5, 128, False))],
                     params={"num_samples": 3}, files={"sweep.yaml": "name: exp\n"}, run_name="exp-1")
    t.share_view(["rnn_size"])
    return uri


def test_best_ranks_trials_and_exports_the_best_that_has_a_model(store, workdir, capsys):
    assert main(["best", "--tracking-uri", store, "--export", "best.pt"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:5]]
    assert [r[1] for r in rows] == ["t3", "t1", "t2"] and [r[2] for r in rows] == ["1.5", "1.7", "2.0"]
    assert "rnn_size" in out.splitlines()[1] and "dropout" not in out.splitlines()[1]  # only what varied
    exported = torch.load(workdir / "best.pt", weights_only=True)
    assert exported["summary"]["val_loss"] == 17.0  # t3 has no model file: t1 is the best exportable one
    assert exported["summary"]["experiment"] == "exp" and exported["summary"]["mlflow_run_id"]


def test_tracking_uri_from_the_environment(store, workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["best", "--top", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # title, header, one row


@pytest.mark.parametrize("argv, match", [
    (["best", "--experiment", "nope"], "no experiment 'nope'.*known: exp"),
    (["best", "--top", "0"], "--top must be >= 1"),
    (["best", "--tracking-uri", "file:./mlruns"], "no longer writes the plain file store"),
    (["ui", "--tracking-uri", "http://127.0.0.1:1"], "is a tracking server"),
])
def test_selection_errors(store, capsys, argv, match, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re
    assert re.search(match, err), err


def test_best_without_any_sweep(workdir, capsys):
    assert main(["best", "--tracking-uri", store_uri(workdir, "empty.db")]) == 2
    assert "no sweeps recorded" in capsys.readouterr().err


def test_the_ui_opens_on_the_latest_sweep_and_shows_its_val_losses_rounded(store, workdir):
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("exp")
    assert sweep_page(store) == ("exp", f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                                        "&viewStateShareKey=charsearch-latest-sweep")
    assert sweep_page(store_uri(workdir, "empty.db")) == ("", "")  # MLflow's own home page then
    shown = {r.data.tags["ray.trial_id"]: r.data.tags[SHOWN_LOSS_TAG]
             for r in client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'trial'")}
    assert shown == {"t1": "1.7000", "t2": "2.0000", "t3": "1.5000"}


def asgi_get(app, path: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET through an ASGI app, as uvicorn would call it."""
    import asyncio
    sent = []
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:5000")], "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 1), "root_path": ""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0].get("headers", [])), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_ui_app_leaves_the_landing_page_to_mlflow_where_it_cannot_find_the_sweep(monkeypatch, tmp_path):
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR

    from charsearch.ui import app
    broken = f"sqlite:///{tmp_path}/missing-folder/mlflow.db"  # the lookup fails: MLflow's page, not an error
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, broken)
    with pytest.raises(OSError):
        sweep_page(broken)
    status, headers, body = asgi_get(app(), "/")
    assert status == 200 and b"location" not in headers and body.lower().startswith(b"<!doctype html")
    monkeypatch.delenv(BACKEND_STORE_URI_ENV_VAR)  # `mlflow server --app-name charsearch` run by hand, no store named
    status, headers, _ = asgi_get(app(), "/")
    assert status == 200 and b"location" not in headers


@pytest.mark.slow
def test_ui_serves_the_store_on_localhost(store, workdir):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "ui", "--port", str(port), "--tracking-uri", store],
                         cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", p, timeout=60)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
        body = urllib.request.urlopen(req, timeout=10).read().decode()
        assert '"name": "exp"' in body or '"name":"exp"' in body
        exp_id = mlflow.MlflowClient(store).get_experiment_by_name("exp").experiment_id
        lines = [p.stderr.readline().strip() for _ in range(2)]
        route = f"#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=charsearch-latest-sweep"
        assert lines == [f"MLflow UI for {store} at http://127.0.0.1:{port}/ : it opens on the latest sweep's "
                         "trials ('exp') (Ctrl-C stops it)", f"latest sweep 'exp': http://127.0.0.1:{port}/{route}"]
        # the bare address opens the sweep's runs table, not MLflow's home page; any other path is MLflow's
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Location")) == (302, f"/?sweep{route}")
        answer.read()
        conn.request("GET", "/?sweep")
        answer = conn.getresponse()
        assert answer.status == 200 and b"<html" in answer.read().lower()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_best_shows_the_varying_parameters_in_a_fixed_order(workdir, capsys):
    uri = store_uri(workdir)
    record_sweep(uri, "exp", [Trial("t1", {"seq_length": 50, "rnn_size": 64, "dropout": 0.1}, [1.5]),
                              Trial("t2", {"dropout": 0.2, "rnn_size": 32, "seq_length": 100}, [1.6])])
    assert main(["best", "--tracking-uri", uri]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert [c for c in header if c in ("dropout", "rnn_size", "seq_length")] == ["dropout", "rnn_size", "seq_length"]


def test_best_of_a_single_trial_shows_the_searched_parameters_only(workdir, capsys):
    import yaml
    uri = store_uri(workdir)
    resolved = {"name": "one", "space": {"rnn_size": {"choice": [64, 128]}}, "train_frac": 0.9, "val_frac": 0.1}
    record_sweep(uri, "one", [Trial("t1", {"rnn_size": 64, "decay_rate": 0.95, "embed_size": 0}, [1.5])],
                 files={"resolved.yaml": yaml.safe_dump(resolved)})
    assert main(["best", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert "rnn_size" in header and "decay_rate" not in header and "embed_size" not in header, out
    assert out.splitlines()[0] == "experiment 'one': 1 trial, best first", out
