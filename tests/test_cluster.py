"""A sweep on a real two-node Ray cluster with a real MLflow tracking server, all on 127.0.0.1.

Each Ray node is its own `ray start --block` process session with one CPU and a custom resource that
names it, in its own temp dir (so `ray.init()` elsewhere on this machine never finds this cluster);
the tracking server is `mlflow server` with a SQLite backend and proxied artifacts, kept in a bucket of a
real S3 server (SeaweedFS, conftest.s3_server) where the cluster's sweeps may also keep Ray's storage.
Everything is stopped by its session id, also when a test fails.
"""

import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pyarrow.fs
import pytest
import torch

from .conftest import (S3_BUCKET, S3_KEYS, charsearch, cli_env, kill_session, runs, s3_server, session_pids, start,
                       store_uri, sweep_file, wait_until)
from .web import free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


class Cluster:
    """Ray head (node_a) + worker (node_b) + MLflow server; `stop()` ends every process it started."""

    def __init__(self, root: Path, backend: str | None = None, s3: str | None = None):
        self.root = root
        self.s3 = s3  # an S3 server's host:port: the tracking server's artifacts go to its bucket
        self.backend = backend or store_uri(root, "mlflow.db")  # MLflow's backend store
        # Ray's socket paths must stay under 107 bytes: a short temp dir of its own, not pytest's
        self.ray_tmp = Path(f"/tmp/csc-{secrets.token_hex(3)}")
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ids: dict[str, str] = {}  # "node_a"/"node_b" -> Ray node id
        self.mlflow_port = free_port()
        self.tracking_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.artifacts = f"s3://{S3_BUCKET}/mlflow-artifacts" if s3 else str(root / "mlflow-artifacts")

    def ray_node(self, name: str, head: bool) -> None:
        # the head's temp dir is where Ray looks by default when RAY_TMPDIR is ray_tmp: it stands for
        # /tmp/ray, the cluster `ray start --head` leaves for every `ray.init()` on the machine
        temp_dir = self.ray_tmp / ("ray" if head else name)
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps({name: 1}),
               "--node-ip-address", "127.0.0.1", "--object-store-memory", str(200 * 2**20),
               "--temp-dir", str(temp_dir), "--dashboard-agent-listen-port", str(free_port()),
               "--disable-usage-stats"]
        if head:
            cmd += ["--head", "--port", str(self.port), "--include-dashboard=false", "--dashboard-port", str(free_port())]
        else:
            cmd += ["--address", self.address]
        self.procs[name] = start(cmd, self.root / f"ray-{name}.log", **S3_KEYS)  # trials may checkpoint to S3

    def start_mlflow(self, log: str = "mlflow.log") -> None:
        self.mlflow_log = self.root / log
        self.procs["mlflow"] = start(
            [MLFLOW, "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.mlflow_port),
             "--workers", "1"],
            self.mlflow_log, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **S3_KEYS,
            **({"MLFLOW_S3_ENDPOINT_URL": f"http://{self.s3}"} if self.s3 else {}))

    def start(self) -> None:
        self.start_mlflow()
        self.ray_node("node_a", head=True)
        wait_until(lambda: self.nodes(), 60, "the Ray head")
        self.ray_node("node_b", head=False)
        nodes = wait_until(lambda: (n := self.nodes()) and len(n) == 2 and n, 60, "the Ray worker to join")
        self.node_ids = {name: n["NodeID"] for n in nodes for name in ("node_a", "node_b") if name in n["Resources"]}
        assert set(self.node_ids) == {"node_a", "node_b"}, nodes
        wait_until(self.mlflow_healthy, 90, "the MLflow server")

    def nodes(self) -> list[dict]:
        """The cluster's live nodes, read by a Ray driver of its own (Ray's own view)."""
        if self.procs["node_a"].poll() is not None:
            raise AssertionError("the Ray head exited:\n" + (self.root / "ray-node_a.log").read_text()[-3000:])
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([n for n in ray.nodes() if n['Alive']]))" % self.address)
        try:
            r = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return []
        return json.loads(r.stdout.splitlines()[-1]) if r.returncode == 0 else []

    def mlflow_healthy(self) -> bool:
        if self.procs["mlflow"].poll() is not None:
            raise AssertionError("mlflow server exited:\n" + self.mlflow_log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, name: str) -> None:
        p = self.procs[name]
        kill_session(p.pid)
        p.wait(timeout=30)

    def stop(self) -> None:
        for p in self.procs.values():
            kill_session(p.pid)
        try:
            for name, p in self.procs.items():
                p.wait(timeout=30)
                wait_until(lambda: not session_pids(p.pid), 30, f"the processes of {name} to exit")
        finally:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    c = Cluster(tmp_path_factory.mktemp("cluster"), s3=s3[0])
    try:
        c.start()
        yield c
    finally:
        c.stop()






def test_a_cluster_on_this_machine_is_joined_only_when_asked(cluster):
    """`ray.init()` joins the cluster `ray start` registered on the machine; a sweep without --address
    starts a Ray of its own instead, and `--address auto` joins that cluster."""
    code = ("import sys, ray; from charsearch.search.resources import init_ray; init_ray(sys.argv[1] or None, False); "
            "print(sorted(k for n in ray.nodes() if n['Alive'] for k in n['Resources'] if k.startswith('node_')))")
    seen = {}
    for address in ("", "auto"):
        p = subprocess.Popen([sys.executable, "-c", code, address], env=cli_env(RAY_TMPDIR=str(cluster.ray_tmp)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=120)
        finally:
            kill_session(p.pid)
        assert p.returncode == 0, err
        seen[address] = out.strip().splitlines()[-1]
    assert seen == {"": "[]", "auto": "['node_a', 'node_b']"}


def test_a_storage_uri_pyarrow_cannot_open_is_one_clear_error(project):
    path = sweep_file(project, "badstore", ray={"storage": "nosuchfs://bucket/ray"})
    r = charsearch("sweep", path, cwd=project, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"charsearch sweep: error: {path}: ray.storage 'nosuchfs://bucket/ray': Unrecognized filesystem type in URI: "
        f"nosuchfs://bucket/ray"]


def test_sweep_on_two_nodes_with_a_tracking_server(cluster, project, tmp_path_factory, s3):
    shared = tmp_path_factory.mktemp("shared")  # stands for NFS or an object store: every node sees it
    path = sweep_file(project, "cluster", budget={"sweep_time": 0},
                      ray={"storage": f"file://{shared}/ray_results"})
    r = charsearch("sweep", path, "--address", cluster.address, "--tracking-uri", cluster.tracking_uri,
                   cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "sweep cluster: 4 trials" in r.stdout and "Traceback" not in r.stderr
    assert f"Ray results: file://{shared}/ray_results/cluster/" in r.stdout
    assert not (project / "mlruns").exists() and not (project / "ray_results").exists()  # nothing local

    parents, children = runs(cluster.tracking_uri, "cluster")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"
    # the GCS reports the machine's primary IP whatever address the driver used
    assert parents.iloc[0]["tags.charsearch.ray_address"].endswith(f":{cluster.port}")
    assert len(children) == 4 and children["tags.ray.trial_id"].is_unique and (children.status == "FINISHED").all()
    # placement: the node each trial reported from, against the ids of the two started nodes
    where = dict(zip(children["tags.ray.trial_id"], children["tags.node_id"]))
    by_node = {name: sorted(t for t, n in where.items() if n == node) for name, node in cluster.node_ids.items()}
    print("trials by node:", json.dumps(by_node))
    assert set(where.values()) == set(cluster.node_ids.values()), (where, cluster.node_ids)
    assert children["tags.node_ip"].str.len().gt(0).all() and children["tags.hostname"].str.len().gt(0).all()

    # the models are on the server's artifact store, uploaded through the server (proxied artifacts)
    client = mlflow.MlflowClient(cluster.tracking_uri)
    assert client.get_experiment_by_name("cluster").artifact_location.startswith("mlflow-artifacts:")
    for run_id in children.run_id:
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt"]
    _, fs = s3  # in the S3 server's bucket
    stored = fs.get_file_info(pyarrow.fs.FileSelector(f"{S3_BUCKET}/mlflow-artifacts", recursive=True))
    assert sum(f.base_name == "model.pt" for f in stored) == 4
    # checkpoints went to the shared storage, from both nodes
    exp_dirs = list((shared / "ray_results" / "cluster").glob("*/charsearch.json"))
    assert len(exp_dirs) == 1 and len(list(exp_dirs[0].parent.glob("trial_*/checkpoint_*/model.pt"))) >= 4

    # selection from a machine that sees only the tracking server: no Ray results, no corpus, no store
    shutil.rmtree(shared / "ray_results")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    best = charsearch("best", "--export", "model.pt", cwd=elsewhere, MLFLOW_TRACKING_URI=cluster.tracking_uri)
    assert best.returncode == 0, best.stderr
    winner = children.loc[children["metrics.best_val_loss"].idxmin()]
    exported = torch.load(elsewhere / "model.pt", weights_only=True)
    assert exported["summary"]["trial_id"] == winner["tags.ray.trial_id"]
    assert exported["summary"]["val_loss"] == pytest.approx(winner["metrics.best_val_loss"])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model.pt"]
    sample = charsearch("sample", "model.pt", "--primetext", "KING:", "--length", "40", cwd=elsewhere)
    assert sample.returncode == 0 and sample.stdout.startswith("KING:")


def test_worker_node_lost_then_driver_killed_and_resumed_from_s3(cluster, project, s3):
    """Kill the worker node while one of its trials runs: Tune reruns that trial on the head node from its
    last checkpoint in the S3 bucket (ray.max_failures), in the same MLflow run. Then kill the driver while
    that trial reports again: `--resume` reads the sweep's record and Ray's state from the bucket and
    completes the sweep, each trial once, nothing of Ray's on local disk."""
    epochs = 0.25
    path = sweep_file(project, "cluster-loss", search={"num_samples": 3, "max_concurrent": 2},
                      scheduler={"type": "none", "report_every_epochs": 0.04},
                      budget={"sweep_time": 0, "trial_max_epochs": epochs, "trial_max_time": 0},
                      ray={"storage": f"s3://{S3_BUCKET}/loss?endpoint_override={s3[0]}&scheme=http",
                           "max_failures": 2})
    worker, head = cluster.node_ids["node_b"], cluster.node_ids["node_a"]
    through = {"MLFLOW_TRACKING_URI": cluster.tracking_uri, **S3_KEYS}
    with open(project / "driver.log", "w") as log:  # a file, not a pipe: a full pipe would stall the driver
        driver = subprocess.Popen(
            [sys.executable, "-m", "charsearch", "sweep", str(path), "--address", cluster.address],
            cwd=project, env=cli_env(**through), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    client = mlflow.MlflowClient(cluster.tracking_uri)

    def reporting(node: str, run_id: str | None = None, after: int = 0):
        """A running trial of this sweep that has reported (and checkpointed) from `node`, past step `after`."""
        _, children = runs(cluster.tracking_uri, "cluster-loss")
        if children.empty or "tags.node_id" not in children or "metrics.val_loss" not in children:
            return None
        found = children[(children["tags.node_id"] == node) & children["metrics.val_loss"].notna()
                         & (children.status == "RUNNING") & (run_id is None or children.run_id == run_id)]
        found = [t for _, t in found.iterrows()
                 if max(m.step for m in client.get_metric_history(t.run_id, "val_loss")) > after]
        return found[0].to_dict() if found else None

    try:
        t0 = time.monotonic()
        victim = wait_until(lambda: reporting(worker), 150, "a trial reporting from the worker node", every=0.3)
        steps_before = [m.step for m in client.get_metric_history(victim["run_id"], "val_loss")]
        cluster.kill("node_b")
        print(f"killed the worker node {time.monotonic() - t0:.1f} s into the sweep, while trial "
              f"{victim['tags.ray.trial_id']} was at {steps_before[-1]} chars")
        wait_until(lambda: reporting(head, victim["run_id"], steps_before[-1]), 150,
                   "the trial to report again from the head node", every=0.3)
        kill_session(driver.pid)
        driver.wait(timeout=30)
        print(f"killed the driver {time.monotonic() - t0:.1f} s into the sweep; its status lines:\n"
              f"{(project / 'driver.log').read_text()}")
    finally:
        kill_session(driver.pid)
    assert not (project / "ray_results").exists()  # nothing of Ray's went to the local disk
    r = charsearch("sweep", path, "--resume", "--address", cluster.address, cwd=project, **through)
    assert r.returncode == 0, r.stderr
    # (a new driver on a cluster that lost a node first gets Ray's own "(raylet) ... marked dead" lines)
    assert "\nsweep cluster-loss: 3 trials (3 finished, 0 failed)" in f"\n{r.stdout}", r.stdout + r.stderr
    assert f"Ray results: s3://{S3_BUCKET}/loss/cluster-loss/" in r.stdout

    parents, children = runs(cluster.tracking_uri, "cluster-loss")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"  # the same parent run, reopened
    assert len(children) == 3 and children["tags.ray.trial_id"].is_unique  # every trial once, no duplicate runs
    assert (children.status == "FINISHED").all() and (children["tags.charsearch.outcome"] == "finished").all()
    assert (children["metrics.epoch"] >= epochs - 1e-9).all()  # each trained its full budget
    victim = children[children.run_id == victim["run_id"]].iloc[0]
    assert victim["tags.charsearch.retries"] == "1" and victim["tags.charsearch.retry_error"]
    assert victim["tags.node_id"] == head  # rerun on the surviving node
    # resumed from its checkpoints: the history goes on past the steps logged before each kill, none repeated
    steps = [m.step for m in client.get_metric_history(victim.run_id, "val_loss")]
    print(f"trial {victim['tags.ray.trial_id']} val_loss steps: before the node's loss {steps_before}, in all {steps}")
    assert steps[:len(steps_before)] == steps_before and len(steps) > len(steps_before)
    assert steps == sorted(set(steps))
    # the bucket holds the record, finished and naming the parent run, and each trial's checkpoints
    _, fs = s3
    files = fs.get_file_info(pyarrow.fs.FileSelector(f"{S3_BUCKET}/loss/cluster-loss", recursive=True))
    (record,) = [f.path for f in files if f.base_name == "charsearch.json"]
    with fs.open_input_stream(record) as f:
        saved = json.loads(f.read())
    assert saved["status"] == "FINISHED" and saved["parent_run_id"] == parents.iloc[0].run_id
    checkpointed = {f.path.split("/trial_")[1].split("/")[0] for f in files if "/checkpoint_" in f.path}
    assert set(children["tags.ray.trial_id"]) <= checkpointed
    best = charsearch("best", "--experiment", "cluster-loss", "--export", "model.pt", cwd=project,
                      MLFLOW_TRACKING_URI=cluster.tracking_uri)
    assert best.returncode == 0, best.stderr
    winner = children.loc[children["metrics.best_val_loss"].idxmin(), "tags.ray.trial_id"]
    assert torch.load(project / "model.pt", weights_only=True)["summary"]["trial_id"] == winner
