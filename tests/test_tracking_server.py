"""Shared tracking for a team's cluster, for real: an `mlflow server` on PostgreSQL, and its faults.

A real PostgreSQL server (a cluster in a temp folder of its own, started as the `postgres` system user
when the tests run as root, listening on 127.0.0.1 and a Unix socket in that folder) backs a real
`mlflow server` with proxied artifacts, beside the two-node Ray cluster of test_cluster. Injected:
the tracking server stopped mid-sweep and started again; two sweeps at once and the same sweep name
started twice; the sweep's driver killed mid-sweep, then resumed. Each test checks what MLflow holds
afterwards: runs, metrics, outcomes, models.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from charsearch.cli import main
from charsearch.tracking.tracker import Tracker

from .conftest import charsearch, cli_env, kill_session, runs, store_uri, sweep_file
from .test_cluster import Cluster, free_port, wait_until

pytestmark = pytest.mark.slow

OUTAGE_S = 15  # longer than the driver's MLflow client retries (set short below), shorter than the sweep
DB_OUTAGE_S = 10
STATUS_LINE = re.compile(r"^\d+:\d\d(:\d\d)? elapsed")


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian keeps it off PATH), else initdb's on PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    found = dirs[0] if dirs else shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """A PostgreSQL cluster in a temp folder, superuser `mlflow`, trust authentication (loopback only).
    PostgreSQL refuses to run as root: as root, its tools run as the `postgres` system user."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="cspg-"))  # short: the socket path has a length limit
        self.data = self.root / "data"
        self.port = free_port()
        self.as_owner: list[str] = []
        self.running = False
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def tool(self, name: str, *args, owner: bool = True) -> None:
        with open(self.root / "tools.log", "a") as log:
            r = subprocess.run([*(self.as_owner if owner else []), str(self.bin / name), *map(str, args)],
                               cwd=self.root, stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode:
            raise AssertionError(f"{name} failed:\n" + (self.root / "tools.log").read_text()[-3000:])

    def start(self) -> None:
        if not self.data.exists():
            self.tool("initdb", "-D", self.data, "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync",
                      "--no-instructions")
        # durability settings off: a throwaway database on a 2-core CI machine
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off")
        self.tool("pg_ctl", "-D", self.data, "-l", self.root / "postgres.log", "-o", opts, "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.tool("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            self.running = False

    def createdb(self, name: str) -> None:
        self.tool("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "mlflow", name, owner=False)

    def uri(self, db: str) -> str:
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, *args):
        import psycopg2
        with psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", dbname=db) as con:
            with con.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (initdb under /usr/lib/postgresql/*/bin or on PATH): "
                    "apt-get install postgresql-15")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` system user to run PostgreSQL as")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed: pip install -e '.[postgres]'")
    pg = Postgres(bin_dir)
    try:
        pg.start()
        pg.createdb("mlflow")
        pg.createdb("optuna")  # the report's study: Optuna and MLflow each keep an alembic_version table
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(pg.root, ignore_errors=True)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """Two Ray nodes and an `mlflow server --backend-store-uri postgresql+psycopg2://...` on 127.0.0.1."""
    c = Cluster(tmp_path_factory.mktemp("team"), backend=postgres.uri("mlflow"))
    try:
        c.start()
        yield c
    finally:
        c.stop()




def short_sweep(project: Path, name: str, samples: int, seconds: float) -> Path:
    """`samples` trials of `seconds` each, two at a time, evaluating every 0.05 epoch (a second or two)."""
    return sweep_file(project, name, search={"num_samples": samples, "max_concurrent": 2},
                      scheduler={"type": "none", "report_every_epochs": 0.05},
                      budget={"sweep_time": 0, "trial_max_epochs": 10, "trial_max_time": seconds},
                      ray={"storage": str(project / "ray_results")})


def start_sweep(team: Cluster, project: Path, path: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charsearch", "sweep", str(path), "--address", team.address, *args], cwd=project,
        env=cli_env(MLFLOW_TRACKING_URI=team.tracking_uri, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def assert_quiet(out: str, err: str) -> None:
    """The terminal: the summary on stdout, the live line on stderr; none of MLflow's run links."""
    assert "View run" not in out + err and "View experiment" not in out + err, out + err
    assert "Traceback" not in err, err


def assert_all_recorded(uri: str, experiment: str, n: int):
    """One finished parent run; n trial runs, one per trial, each ended with its outcome, best_val_loss
    and model. Returns (parents, children)."""
    parents, children = runs(uri, experiment)
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED", parents.T
    assert len(children) == n and children["tags.ray.trial_id"].is_unique, children.T
    assert (children.status == "FINISHED").all() and (children["tags.charsearch.outcome"] == "finished").all()
    assert children["metrics.best_val_loss"].notna().all()
    client = mlflow.MlflowClient(uri)
    for run_id in children.run_id:
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt"]
    return parents, children


def test_smoke_sweep_best_report_and_register_through_mlflow_on_postgresql(team, postgres, project,
                                                                            tmp_path_factory):
    path = sweep_file(project, "pgsmoke", budget={"sweep_time": 0}, ray={"storage": str(project / "ray_results")})
    t0 = time.monotonic()
    r = charsearch("sweep", path, "--address", team.address, "--tracking-uri", team.tracking_uri, cwd=project)
    print(f"smoke sweep on two nodes, MLflow on PostgreSQL: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stderr
    assert "sweep pgsmoke: 4 trials" in r.stdout
    assert_quiet(r.stdout, r.stderr)
    parents, children = runs(team.tracking_uri, "pgsmoke")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"
    assert len(children) == 4 and children["tags.ray.trial_id"].is_unique and (children.status == "FINISHED").all()
    # the runs are rows of PostgreSQL's database, their metric histories too
    rows = postgres.query("mlflow", "select r.status, count(distinct r.run_uuid), count(*) from runs r "
                          "join experiments e on e.experiment_id = r.experiment_id "
                          "join metrics m on m.run_uuid = r.run_uuid where e.name = %s group by r.status", "pgsmoke")
    assert [(status, n) for status, n, _ in rows] == [("FINISHED", 5)], rows
    client = mlflow.MlflowClient(team.tracking_uri)
    for run_id in children.run_id:
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt"]

    # from a folder with nothing in it but the server's URL
    elsewhere = tmp_path_factory.mktemp("pg-elsewhere")
    best = charsearch("best", "--experiment", "pgsmoke", "--export", "model.pt", "--register", "pgsmoke-lstm",
                      cwd=elsewhere, MLFLOW_TRACKING_URI=team.tracking_uri)
    assert best.returncode == 0, best.stderr
    assert_quiet(best.stdout, best.stderr)
    winner = children.loc[children["metrics.best_val_loss"].idxmin()]
    exported = torch.load(elsewhere / "model.pt", weights_only=True)
    assert exported["summary"]["trial_id"] == winner["tags.ray.trial_id"]
    version = client.get_model_version("pgsmoke-lstm", "1")
    assert version.tags["trial_id"] == winner["tags.ray.trial_id"] and version.run_id == winner.run_id

    optuna_db = postgres.uri("optuna")
    report = charsearch("report", "--experiment", "pgsmoke", "--out", "report", "--storage", optuna_db,
                        cwd=elsewhere, MLFLOW_TRACKING_URI=team.tracking_uri)
    assert report.returncode == 0, report.stderr
    assert_quiet(report.stdout, report.stderr)
    assert (elsewhere / "report" / "summary.txt").is_file() and list((elsewhere / "report").glob("*.png"))
    parent = parents.iloc[0]
    assert "report/summary.txt" in [a.path for a in client.list_artifacts(parent.run_id, "report")]
    import optuna
    study = optuna.load_study(study_name=parent["tags.mlflow.runName"], storage=optuna_db)
    assert len(study.trials) == 4


def test_two_sweeps_at_once_and_the_same_sweep_started_twice(team, project, tmp_path, capsys):
    """Two people, one server: sweeps `alice` and `bob` at once, and `alice` started a second time while
    the first runs. Each invocation is its own parent run; `best` ranks every trial of the sweep name,
    `report` describes its latest invocation."""
    files = {name: short_sweep(project, name, samples=2, seconds=4) for name in ("alice", "bob")}
    drivers = []
    try:
        for name in ("alice", "bob", "alice"):
            drivers.append(start_sweep(team, project, files[name]))
            time.sleep(1.5)  # a sweep's Ray results folder is named by the second it started in
        ends = [d.communicate(timeout=300) for d in drivers]
    finally:
        for d in drivers:
            kill_session(d.pid)
    for d, (out, err) in zip(drivers, ends):
        assert d.returncode == 0, err
        assert_quiet(out, err)

    parents, children = runs(team.tracking_uri, "alice")
    assert len(parents) == 2 and (parents.status == "FINISHED").all()
    assert len(children) == 4 and children["tags.ray.trial_id"].is_unique and (children.status == "FINISHED").all()
    by_parent = children.groupby("tags.mlflow.parentRunId").size()
    assert sorted(by_parent.index) == sorted(parents.run_id) and (by_parent == 2).all()
    assert (children["tags.charsearch.sweep"] == "alice").all()
    bob_parents, bob_children = runs(team.tracking_uri, "bob")
    assert len(bob_parents) == 1 and len(bob_children) == 2
    assert set(bob_children["tags.mlflow.parentRunId"]) == {bob_parents.iloc[0].run_id}

    assert main(["best", "--tracking-uri", team.tracking_uri, "--experiment", "alice"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment 'alice': 4 trials, best first; its latest sweep: 2 trials")
    latest = parents.sort_values("start_time").iloc[-1]
    assert main(["report", "--tracking-uri", team.tracking_uri, "--experiment", "alice", "--out",
                 str(tmp_path / "report"), "--storage", store_uri(tmp_path, "optuna.db")]) == 0
    out = capsys.readouterr().out
    assert latest.run_id in out
    client = mlflow.MlflowClient(team.tracking_uri)
    reported = {run_id: bool(client.list_artifacts(run_id, "report")) for run_id in parents.run_id}
    assert reported == {run_id: run_id == latest.run_id for run_id in parents.run_id}


def test_tracking_database_and_server_stopped_mid_sweep(team, postgres, project):
    """Once trials report, stop the tracking server's PostgreSQL server for a while (MLflow answers 503
    meanwhile), then the MLflow server itself, for longer than the driver's client retries, and start it
    again. The trials train on throughout, and afterwards MLflow holds every trial's results, outcome and
    model."""
    path = short_sweep(project, "outage", samples=6, seconds=10)
    driver = start_sweep(team, project, path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                         MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        def reported():
            _, children = runs(team.tracking_uri, "outage")
            return not children.empty and "metrics.val_loss" in children and children["metrics.val_loss"].notna().any()
        wait_until(reported, 150, "a trial's first result in MLflow", every=0.5)
        postgres.stop()
        db_down = time.time()
        time.sleep(DB_OUTAGE_S)
        postgres.start()
        db_up = time.time()
        team.kill("mlflow")
        down = time.time()
        time.sleep(OUTAGE_S)
        team.start_mlflow("mlflow-restarted.log")
        wait_until(team.mlflow_healthy, 90, "the MLflow server to start again")
        up = time.time()
        print(f"database away for {db_up - db_down:.1f} s, then the MLflow server for {up - down:.1f} s")
        out, err = driver.communicate(timeout=300)
    finally:
        kill_session(driver.pid)
    print(f"the sweep's terminal:\n{out}{err}")
    assert driver.returncode == 0, err
    assert_quiet(out, err)
    assert "MLflow away for" in err  # the live line said so meanwhile
    assert all(STATUS_LINE.match(line) for line in err.splitlines() if line.strip()), err

    _, children = assert_all_recorded(team.tracking_uri, "outage", 6)
    # results made while the server or its database was away reached MLflow, with the time they were made
    client = mlflow.MlflowClient(team.tracking_uri)
    history = {run_id: client.get_metric_history(run_id, "val_loss") for run_id in children.run_id}
    points = [m.timestamp / 1000 for h in history.values() for m in h]
    server_away, db_away = sum(down < t < up for t in points), sum(db_down < t < db_up for t in points)
    print(f"val_loss points: {len(points)}, made while the server was away: {server_away}, while its "
          f"database was: {db_away}")
    assert server_away and db_away
    for h in history.values():  # each step once, in order
        steps = [m.step for m in h]
        assert steps == sorted(set(steps))


def test_a_resumed_sweep_waits_for_a_tracking_server_away_as_its_trials_are_read(team, monkeypatch):
    """A resumed sweep reads what ended before once its parent run is reopened: were the server to go away
    in between, the read waits for it (one line) and goes on when it is back, rather than spending MLflow's
    own retries and ending the sweep with a traceback."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # MLflow gives up in seconds: the hold retries
    first = Tracker(team.tracking_uri, "held", background=True)
    parent = first.start_sweep("held-1", params={}, files={}, tags={})
    first.trial_started("t1", "trial_t1", {"lr": 0.002})
    first.trial_ended("t1", {"best_val_loss": 1.5})
    first.close_trial("t1", "finished")
    assert first.flush() == ""
    resumed = Tracker(team.tracking_uri, "held", background=True)
    resumed.reopen_sweep(parent)
    team.kill("mlflow")
    lines, read = [], {}
    reader = threading.Thread(target=lambda: read.update(runs=resumed.ended_before(lines.append)), daemon=True)
    reader.start()
    try:
        time.sleep(OUTAGE_S)
        assert reader.is_alive() and lines == [
            f"MLflow at {team.tracking_uri} does not answer: the sweep waits for it to read the runs of the trials "
            f"that ended before (Ctrl-C stops; --resume goes on from there)"]
    finally:
        team.start_mlflow("mlflow-held.log")
    wait_until(team.mlflow_healthy, 90, "the MLflow server to start again")
    reader.join(timeout=120)
    assert not reader.is_alive()
    (run,) = read["runs"]
    assert run.data.tags["ray.trial_id"] == "t1" and run.data.metrics["best_val_loss"] == 1.5 and len(lines) == 1


def test_driver_killed_mid_sweep_then_resumed(team, project):
    """SIGKILL the sweep's driver once a trial has ended, then `--resume`: no finished trial lost or
    rerun, no trial recorded twice, no run left RUNNING."""
    path = short_sweep(project, "killed", samples=4, seconds=6)
    driver = start_sweep(team, project, path)
    try:
        def one_ended():
            _, children = runs(team.tracking_uri, "killed")
            ended = children[children.status == "FINISHED"] if not children.empty else children
            return [ended] if 1 <= len(ended) < 4 else None
        [ended_before] = wait_until(one_ended, 180, "a trial to end", every=0.3)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_session(driver.pid)
    _, children = runs(team.tracking_uri, "killed")
    print(f"driver killed: {len(ended_before)} trial(s) ended, {(children.status == 'RUNNING').sum()} run(s) RUNNING")
    r = charsearch("sweep", path, "--resume", "--address", team.address, "--tracking-uri", team.tracking_uri,
                   cwd=project)
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout, r.stderr)
    parents, children = runs(team.tracking_uri, "killed")
    assert len(parents) == 1 and parents.iloc[0].status == "FINISHED"  # the same parent run, reopened
    assert not (children.status == "RUNNING").any()
    trials = children[children["metrics.best_val_loss"].notna()]
    assert trials["tags.ray.trial_id"].is_unique and (trials.status == "FINISHED").sum() == 4
    # a trial that had started but was never saved in Ray's state is closed, not left RUNNING
    assert (children[children["metrics.best_val_loss"].isna()].status == "KILLED").all()
    for _, before in ended_before.iterrows():  # ended trials were neither rerun nor lost
        after = children[children.run_id == before.run_id].iloc[0]
        assert after.end_time == before.end_time and after["metrics.best_val_loss"] == before["metrics.best_val_loss"]
