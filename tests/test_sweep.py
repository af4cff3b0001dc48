"""Real sweeps through the command line: local Ray, OptunaSearch, ASHA, MLflow with a SQLite store."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import mlflow
import pytest
import torch
import yaml
from ray import cloudpickle

from .conftest import charsearch, kill_session, runs, session_pids, store_uri, sweep_file, wait_until
from .conftest import cli_env as env

pytestmark = pytest.mark.slow






def test_smoke_sweep_end_to_end(smoke_sweep):
    project, uri, r = smoke_sweep
    assert "sweep smoke: 4 trials" in r.stdout and "trials:" in r.stderr and "Traceback" not in r.stderr
    parents, children = runs(uri, "smoke")
    assert len(parents) == 1 and len(children) == 4
    parent = parents.iloc[0]
    assert parent.status == "FINISHED" and (children["tags.mlflow.parentRunId"] == parent.run_id).all()
    client = mlflow.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.run_id)} == {"sweep.yaml", "resolved.yaml"}
    assert children["tags.ray.trial_id"].is_unique and (children.status == "FINISHED").all()
    assert set(children["tags.charsearch.outcome"]) <= {"finished", "stopped_early"}
    assert (children["tags.device"] == "cpu").all()  # the device each trial trained on, as a tag
    for name in ("rnn_size", "num_layers", "dropout", "learning_rate", "seq_length", "batch_size", "use_ss",
                 "optimizer", "grad_clip"):
        assert children[f"params.{name}"].notna().all(), name  # every hyperparameter is a param
    for _, child in children.iterrows():
        history = client.get_metric_history(child.run_id, "val_loss")
        steps = [m.step for m in history]
        # step = characters trained; a trial ASHA stopped at its first rung reported once (the rung is on a report)
        least = 2 if child["tags.charsearch.outcome"] == "finished" else 1
        assert len(history) >= least and steps == sorted(steps) and steps[0] > 0
        assert min(m.value for m in history) == pytest.approx(child["metrics.best_val_loss"])
        assert client.get_metric_history(child.run_id, "train_loss")
        assert client.get_metric_history(child.run_id, "chars_per_sec")
        assert [a.path for a in client.list_artifacts(child.run_id, "model")] == ["model/model.pt"]
    assert parent["metrics.best_val_loss"] == pytest.approx(children["metrics.best_val_loss"].min())

    best = charsearch("best", "--export", "model.pt", cwd=project)
    assert best.returncode == 0, best.stderr
    winner = children.loc[children["metrics.best_val_loss"].idxmin()]
    exported = torch.load(project / "model.pt", weights_only=True)
    assert exported["summary"]["trial_id"] == winner["tags.ray.trial_id"]
    assert exported["summary"]["val_loss"] == pytest.approx(winner["metrics.best_val_loss"])
    assert best.stdout.splitlines()[2].split()[1] == winner["tags.ray.trial_id"]  # first row of the table
    sample = charsearch("sample", "model.pt", "--primetext", "KING:", "--length", "60", cwd=project)
    assert sample.returncode == 0 and sample.stdout.startswith("KING:") and len(sample.stdout) == 66

    # selection needs MLflow only: a copy of the project without Ray's result folder
    bare = project.parent / "smoke-bare"
    shutil.copytree(project, bare, ignore=shutil.ignore_patterns("ray_results"))
    again = charsearch("best", "--experiment", "smoke", "--export", "again.pt", "--top", "2", cwd=bare)
    assert again.returncode == 0, again.stderr
    assert torch.load(bare / "again.pt", weights_only=True)["summary"]["trial_id"] == winner["tags.ray.trial_id"]


def test_resume_after_the_driver_is_killed(project):
    # reports (and checkpoints) every 0.01 epoch: the driver is killed with trials some checkpoints past
    # the last experiment state Tune saved; each resumes from a checkpoint that still exists
    path = sweep_file(project, "resume", search={"num_samples": 6, "max_concurrent": 2}, budget={"sweep_time": 0},
                      scheduler={"type": "none", "report_every_epochs": 0.01})
    uri = store_uri(project)
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    def one_ended_one_running():
        # read MLflow only once the driver has created its tables and parent run
        if not list((project / "ray_results" / "resume").glob("*/charsearch.json")):
            return None
        _, children = runs(uri, "resume")
        ended, running = children[children.status == "FINISHED"], children[children.status == "RUNNING"]
        client = mlflow.MlflowClient(uri)
        if 1 <= len(ended) < 6 and any(len(client.get_metric_history(x, "val_loss")) >= 4 for x in running.run_id):
            return [ended]
        return None

    try:  # kill once at least one trial has ended and been recorded, and another has reported a few times
        (ended_before,) = wait_until(one_ended_one_running, 240, "one trial ended and another running", every=1)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        kill_session(p.pid)
    wait_until(lambda: not session_pids(p.pid), 60, "the killed driver's processes to exit")
    # as Tune would have, had it gone on registering checkpoints before its next snapshot: only each
    # unfinished trial's newest checkpoint is left, and the saved state may name one that is gone
    ended_ids = set(ended_before["tags.ray.trial_id"])
    for trial_dir in (project / "ray_results" / "resume").glob("*/trial_*"):
        if trial_dir.name.removeprefix("trial_") in ended_ids:
            continue
        # the kill itself may have left the newest folder without its files (Tune was copying it): kept as it is
        folders = sorted(trial_dir.glob("checkpoint_*"))
        *older, last = [f for f in folders if (f / "checkpoint.pt").exists()] or [None]
        for old in older:
            shutil.rmtree(old)
        # and as a driver killed while Tune copied a newer checkpoint to storage: a folder with a file cut short
        if last is not None:
            partial = shutil.copytree(last, trial_dir / f"checkpoint_{int(folders[-1].name.split('_')[1]) + 1:06d}")
            state = partial / "checkpoint.pt"  # what a resumed trial loads
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    # as a driver killed while Tune copied its saved state would leave it: the search algorithm's state copied,
    # the trials' not, so the search algorithm counts (and holds a concurrency slot for) a trial Tune never saved
    (newest,) = sorted((project / "ray_results" / "resume").glob("*/search_gen_state-*.json"))[-1:]
    saved = cloudpickle.loads(newest.read_bytes())
    saved["counter"] += 1
    saved["name:ConcurrencyLimiter"]["live_trials"].add("lost0001")
    newest.write_bytes(cloudpickle.dumps(saved))
    # and as a driver killed while Ray wrote its experiment state (a plain write): a newer state, truncated
    (state,) = sorted((project / "ray_results" / "resume").glob("*/experiment_state-*.json"))[-1:]
    truncated = state.with_name("experiment_state-9999-12-31_23-59-59.json")
    truncated.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    r = charsearch("sweep", path, "--resume", cwd=project)
    assert r.returncode == 0, r.stderr
    assert f"note: {truncated.name} was truncated" in r.stderr and truncated.with_suffix(".json.damaged").exists()
    errors = [e.read_text()[-1500:] for e in (project / "ray_results" / "resume").glob("*/trial_*/error.txt")]
    assert "0 failed" in r.stdout.splitlines()[0] and "Could not recover" not in r.stderr, (r.stdout, errors,
                                                                                         r.stderr[-3000:])
    parents, children = runs(uri, "resume")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"  # the same parent run, reopened
    trials = children[children["metrics.best_val_loss"].notna()]
    assert trials["tags.ray.trial_id"].is_unique  # no trial recorded twice
    assert (trials.status == "FINISHED").sum() == 6  # every trial finished exactly once
    assert not (children.status == "RUNNING").any()
    # a trial that had started but was never saved in Ray's state is closed, not left RUNNING
    assert (children[children["metrics.best_val_loss"].isna()].status == "KILLED").all()
    for _, before in ended_before.iterrows():  # finished trials were neither rerun nor lost
        after = children[children.run_id == before.run_id].iloc[0]
        assert after.end_time == before.end_time and after["metrics.best_val_loss"] == before["metrics.best_val_loss"]


    # the sweep has finished: --resume reopens nothing, whatever it is asked, and says why in one line
    for args, extra, problem in (
            (["--num-samples", "8"], {}, "finished: nothing to resume; run it without --resume to start a new sweep"),
            ([], {}, "finished: nothing to resume"),
            ([], {"MLFLOW_TRACKING_URI": store_uri(project, "other.db")}, "the sweep records to sqlite:///")):
        again = charsearch("sweep", path, "--resume", *args, cwd=project, **extra)
        assert again.returncode == 2 and problem in again.stderr and len(again.stderr.splitlines()) == 1, again.stderr
    parents_after, children_after = runs(uri, "resume")
    assert parents_after.iloc[0].status == "FINISHED" and parents_after.iloc[0].end_time == parents.iloc[0].end_time
    assert len(children_after) == len(children) and not (project / "other.db").exists()


def test_a_driver_killed_before_ray_saved_any_state_resumes_by_starting_again_in_its_run(project):
    # the driver is killed once the sweep's record and parent run exist; Ray's saved state is then taken away,
    # as a kill before Tune's first save leaves it (Tune cannot restore that: it would start without a space)
    path = sweep_file(project, "early", search={"num_samples": 3, "max_concurrent": 2}, budget={"sweep_time": 0},
                      scheduler={"type": "none", "report_every_epochs": 0.05})
    uri = store_uri(project)
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: list((project / "ray_results" / "early").glob("*/charsearch.json")), 120, "the record")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        kill_session(p.pid)
    wait_until(lambda: not session_pids(p.pid), 60, "the killed driver's processes to exit")
    (exp_dir,) = (project / "ray_results" / "early").glob("*/")
    for state in [*exp_dir.glob("experiment_state-*.json"), *exp_dir.glob("search_gen_state-*.json")]:
        state.unlink()
    # and the only state there is, truncated as a kill during Ray's first write leaves it
    (exp_dir / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')
    r = charsearch("sweep", path, "--resume", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "was truncated (a kill while Ray wrote it): set aside; no earlier state is kept" in r.stderr, r.stderr
    assert "the sweep was stopped before Ray saved the state of its trials: it starts again, in the same MLflow run" \
        in r.stderr and "Traceback" not in r.stderr, r.stderr
    parents, children = runs(uri, "early")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"  # the same parent run, reopened
    trials = children[children["metrics.best_val_loss"].notna()]
    assert len(trials) == 3 and trials["tags.ray.trial_id"].is_unique
    assert not (children.status == "RUNNING").any()
    assert list((project / "ray_results" / "early").glob("*/")) == [exp_dir]  # the same experiment folder


def test_a_sweep_killed_after_its_trials_ended_before_mlflow_heard_of_it_resumes_and_records_them(project):
    # as a driver killed at the sweep's end with its MLflow writes held (the server away) leaves it: Tune saved
    # every trial as ended, MLflow holds none of them and the parent run RUNNING. Tune resumes that without a
    # step: the trials are recorded from its saved state all the same. One trial Tune saved as still running,
    # its last checkpoint at its end (killed as it ended): restored at its end, it reports that end again
    path = sweep_file(project, "late", search={"num_samples": 2, "max_concurrent": 2}, budget={"sweep_time": 0},
                      scheduler={"type": "none", "report_every_epochs": 0.05})
    uri = store_uri(project)
    first = charsearch("sweep", path, cwd=project)
    assert first.returncode == 0, first.stderr
    parents, children = runs(uri, "late")
    values = dict(zip(children["tags.ray.trial_id"], children["metrics.best_val_loss"]))
    client = mlflow.MlflowClient(uri)
    for run_id in children.run_id:
        client.delete_run(run_id)
    client.update_run(parents.iloc[0].run_id, status="RUNNING")
    state = max((project / "ray_results" / "late").glob("*/experiment_state-*.json"))
    saved = json.loads(state.read_text())
    trial = json.loads(saved["trial_data"][0][0])
    saved["trial_data"][0][0] = json.dumps({**trial, "status": "RUNNING"})
    state.write_text(json.dumps(saved))
    r = charsearch("sweep", path, "--resume", cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sweep late: 2 trials (2 finished, 0 failed)"), r.stdout
    parents, children = runs(uri, "late")
    assert parents.iloc[0].status == "FINISHED" and (children.status == "FINISHED").all()
    assert dict(zip(children["tags.ray.trial_id"], children["metrics.best_val_loss"])) == values
    best = charsearch("best", "--export", "model.pt", cwd=project)
    assert best.returncode == 0, best.stderr


def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_it_resumes(project):
    path = sweep_file(project, "term", search={"num_samples": 4, "max_concurrent": 2}, budget={"sweep_time": 0},
                      scheduler={"type": "none", "report_every_epochs": 0.02})
    uri = store_uri(project)
    tmp = project / "tmp"  # its own temp folder: the trial folders it leaves are its own, whatever else runs
    tmp.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project,
                         env=env(TMPDIR=str(tmp), RAY_TMPDIR="/tmp/ray"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    def reported_twice():
        if not list((project / "ray_results" / "term").glob("*/charsearch.json")):
            return False
        _, children = runs(uri, "term")
        client = mlflow.MlflowClient(uri)
        return any(len(client.get_metric_history(x, "val_loss")) >= 2 for x in children.run_id)

    try:
        wait_until(reported_twice, 240, "a trial to report twice", every=1)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        kill_session(p.pid)
    assert p.returncode == 130, err
    assert "interrupted: continue with" in err and "Traceback" not in err and "Fatal" not in err, err[-3000:]
    parents, children = runs(uri, "term")
    assert parents.iloc[0].status == "KILLED" and not (children.status == "RUNNING").any()
    assert not list(tmp.glob("charsearch-trial-*"))  # the stopped trials' folders went with their processes
    # --resume continues the sweep as it started: a changed file is refused, naming what changed
    d = yaml.safe_load(path.read_text())
    d["search_space"]["rnn_size"] = {"choice": [32, 48]}
    path.with_name("term-edited.yaml").write_text(yaml.safe_dump(d))
    for args, problem in ((["--num-samples", "6"], "(search.num_samples: 4 -> 6)"),
                          ([path.with_name("term-edited.yaml")], "(search_space.rnn_size: {'choice': [32, 64]} -> "
                                                                 "{'choice': [32, 48]})")):
        again = charsearch("sweep", *(args if args[0] != "--num-samples" else [path, *args]), "--resume", cwd=project)
        assert again.returncode == 2 and f"changed since the sweep started {problem}" in again.stderr, again.stderr
    r = charsearch("sweep", path, "--resume", cwd=project, TMPDIR=str(tmp), RAY_TMPDIR="/tmp/ray")
    assert r.returncode == 0, r.stderr
    parents, children = runs(uri, "term")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"
    assert (children[children["metrics.best_val_loss"].notna()].status == "FINISHED").sum() == 4
    assert not list(tmp.glob("charsearch-trial-*"))


def test_failed_trial_is_recorded_and_the_sweep_goes_on(project):
    # a learning rate that diverges in some trials; GPUs asked for on a machine that has none
    path = sweep_file(project, "faulty", search={"algorithm": "random", "seed": 3, "num_samples": 4},
                      train={"optimizer": "rmsprop", "grad_clip": 0.0}, resources={"gpu": 0.5})
    d = yaml.safe_load(path.read_text())
    d["search_space"]["learning_rate"] = {"choice": [0.004, 80.0]}
    path.write_text(yaml.safe_dump(d))
    other = store_uri(project, "elsewhere.db")
    r = charsearch("sweep", path, cwd=project, MLFLOW_TRACKING_URI=other)
    assert r.returncode == 0, r.stderr
    if not torch.cuda.is_available():
        assert "has no GPU: trials run on CPU" in r.stderr
    assert not (project / "mlruns" / "mlflow.db").exists()  # MLFLOW_TRACKING_URI wins over the file's URI
    _, children = runs(other, "faulty")
    lr = children["params.learning_rate"].astype(float)
    failed, ok = children[lr == 80.0], children[lr != 80.0]
    assert len(failed) >= 1 and len(ok) >= 1, "seed 3 should pick both learning rates"
    assert (failed.status == "FAILED").all() and (failed["tags.charsearch.outcome"] == "failed").all()
    assert failed["tags.error"].str.contains("diverged").all()
    assert (ok.status == "FINISHED").all()
    assert f"{len(failed)} failed" in r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 40  # one line per failed trial, not Ray's
    assert re.search(r"trial \w+ failed: .*diverged", r.stderr)


def test_a_second_sweep_of_the_same_corpus_and_budget_starts_where_the_first_ended(smoke_sweep, tmp_path):
    import sqlite3
    first_project, _, _ = smoke_sweep
    project = tmp_path / "again"
    shutil.copytree(first_project, project, ignore=shutil.ignore_patterns("ray_results", "*.pt"))
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:  # the copy's new artifacts stay in the copy
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (str(first_project), str(project)))
    uri = store_uri(project)
    parents, first = runs(uri, "smoke")
    assert len(parents) == 1
    first_parent = parents.iloc[0]
    d = yaml.safe_load((project / "sweeps" / "smoke.yaml").read_text())
    d["search"].update(warm_start=True, num_samples=2)
    (project / "sweeps" / "smoke.yaml").write_text(yaml.safe_dump(d))

    r = charsearch("sweep", "sweeps/smoke.yaml", cwd=project)
    assert r.returncode == 0, r.stderr
    known = first["metrics.best_val_loss"].notna().sum()
    assert re.search(rf"warm start: {known} trial\(s\) of smoke-\S+ .* their best configuration runs first", r.stderr)
    parents, children = runs(uri, "smoke")
    second_parent = parents[parents.run_id != first_parent.run_id].iloc[0]
    assert second_parent["tags.charsearch.warm_start"] == first_parent.run_id
    ours = children[children["tags.mlflow.parentRunId"] == second_parent.run_id]
    assert len(ours) == 2
    # the first sweep's best configuration ran again (first: both start together, so either may report first)
    best = first.loc[first["metrics.best_val_loss"].idxmin()]
    keys = [f"params.{key}" for key in d["search_space"]]
    assert any((row[keys] == best[keys]).all() for _, row in ours.iterrows())
    assert not (first_project / "mlruns" / second_parent.experiment_id / second_parent.run_id).exists()
