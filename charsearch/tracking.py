"""MLflow: an experiment per sweep, a parent run per sweep invocation, a nested child run per trial.

All writes go through one MlflowClient in the sweep's driver process, so a SQLite store has a single
writer and cluster nodes never need to reach the tracking store. Child runs are found again by their
trial id, so resuming a sweep continues a trial's run instead of creating a duplicate.

The driver's writes during a sweep are made in order by one background thread (`Writer`): a tracking
server or database that is away holds up neither Ray Tune's loop nor the trials, and the writes wait,
in memory, until it is back. What is still unwritten when the sweep ends is waited for while it
progresses, then named in one line. Reads (the experiment, the runs of a resumed sweep) and the
sweep's parent run are synchronous: a sweep starts only against a store that answers.

Ray's MLflowLoggerCallback is not used: it cannot nest runs under a parent, logs every numeric result
key at step = iteration (charsearch steps by characters trained, the fair axis), and on resume opens a
second run for every trial that was in flight.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .config import DEFAULT_TRACKING_URI
from .errors import UsageError

KIND_TAG = "charsearch.kind"  # "sweep" (parent) or "trial" (child)
TRIAL_TAG = "ray.trial_id"
SWEEP_TAG = "charsearch.sweep"
RAY_EXPERIMENT_TAG = "charsearch.ray_experiment"  # on the parent run: the Ray experiment folder it records
OUTCOME_TAG = "charsearch.outcome"  # one of OUTCOMES
OUTCOMES = ("finished", "stopped_early", "cut_by_budget", "interrupted", "failed")
OUTCOME_WORDS = {"finished": "finished", "stopped_early": "stopped early by ASHA", "cut_by_budget": "cut by the budget",
                 "interrupted": "interrupted", "failed": "failed"}
SHARED_VIEW = "charsearch-latest-sweep"  # the key of the runs-table view each sweep shares (share_view)
COUNTS_TAG = "charsearch.counts"  # on the parent run: the sweep's trial counts as JSON
STEP_METRICS = ("train_loss", "val_loss", "val_bpc", "chars_per_sec", "epoch", "learning_rate", "ss_prob")
MODEL_ARTIFACT = "model/model.pt"


def describe_counts(c: dict) -> str:
    """'5 trials (2 finished, 3 stopped early by ASHA, 0 failed); 1 never started'"""
    ended = ", ".join(f"{c[o]} {OUTCOME_WORDS[o]}" for o in OUTCOMES if c.get(o) or o in ("finished", "failed"))
    never = f"; {c['never_started']} never started" if c.get("never_started") else ""
    return f"{c.get('started', 0)} trials ({ended}){never}"


def resolve_uri(flag: str | None = None, configured: str | None = None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the sweep file's, then the project default."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("file:", "/", ".")) or "://" not in uri:
        raise UsageError(f"tracking URI {uri!r}: MLflow 3 no longer writes the plain file store; use "
                         f"{DEFAULT_TRACKING_URI} (the default), another database URI, or http://host:port")
    return uri


def existing_store(uri: str) -> bool:
    """Whether a store is there to read: a local SQLite file must exist (MLflow would create it by looking);
    any other store is asked when it is used."""
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()


def client_for(uri: str) -> MlflowClient:
    configure()
    check_server(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # MLflow keeps one store per URI string for the process: a relative path must not outlive a chdir
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).absolute()}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


SERVER_PROBE_S = 5.0
_answered: set[str] = set()  # servers that answered once in this process: an outage later is the Writer's


def check_server(uri: str) -> None:
    """A tracking server named by an http(s) URI must answer before anything is written to it: MLflow's own
    client retries a refused connection for minutes. Any HTTP answer will do; none is one line."""
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_PROBE_S).close()
    except urllib.error.HTTPError:  # it answered
        pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UsageError(f"tracking server {uri} does not answer ({reason}); start it (e.g. mlflow server "
                         f"--port PORT) or pass another --tracking-uri") from None
    _answered.add(uri)


_configured = threading.Event()


def configure() -> None:
    """Quiet MLflow for a command line, once per process (a user's own environment wins): no artifact
    progress bars, no "View run at" line per ended run (the sweep keeps one live line), no table
    creation notices; the writers' retries on the live line instead of urllib3's warnings; and every
    background write waited for (a while) before the process exits."""
    if _configured.is_set():
        return
    _configured.set()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").addFilter(_QuietWriterRetries())
    atexit.register(_flush_at_exit)


class Writer:
    """One background thread making a process's MLflow writes to one store, in the order they were
    submitted. A write that fails for a passing reason (the server refuses connections, answers 5xx, its
    database is down) stays first in line and is tried again after 1, 2, 4 ... at most 10 s, until it
    goes through; one the store refuses (4xx: it can never succeed) is dropped and named at the end.
    Tracker methods make their writes safe to repeat: metrics keep the timestamp they were made with,
    a trial's run is looked for before one is created."""

    RETRY_MAX_S = 10.0
    THREAD_NAME = "charsearch-mlflow-writer"

    def __init__(self, uri: str):
        self.uri = uri
        self.ops: collections.deque = collections.deque()  # (what, fn)
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.failing_since: float | None = None  # time.monotonic() of the first failure of the write in hand
        self.reason = ""  # that failure, one line
        self.dropped: list[str] = []  # writes the store refused: "what (why)"
        self.progress_at = time.monotonic()  # the last write made

    def submit(self, what: str, fn) -> None:
        with self.cond:
            self.ops.append((what, fn))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def _run(self) -> None:
        delay = 1.0
        while True:
            with self.cond:
                while not self.ops:
                    self.cond.wait()
                what, fn = self.ops[0]
            try:
                fn()
            except Exception as e:  # noqa: BLE001 -- every failure is either retried or reported
                if passing(e):
                    with self.cond:
                        if self.failing_since is None:
                            self.failing_since = time.monotonic()
                        self.reason = first_line(e)
                    time.sleep(delay)
                    delay = min(2 * delay, self.RETRY_MAX_S)
                    continue
                with self.cond:
                    self.dropped.append(f"{what} ({first_line(e)})")
            delay = 1.0
            with self.cond:
                self.ops.popleft()
                self.failing_since, self.progress_at = None, time.monotonic()
                self.cond.notify_all()

    def flush(self, stall_s: float) -> bool:
        """Wait until every write submitted is made or dropped, or until none has been made for `stall_s`
        seconds. True when nothing is left waiting."""
        began = time.monotonic()
        with self.cond:
            while self.ops:
                if time.monotonic() - max(began, self.progress_at) > stall_s:
                    return False
                self.cond.wait(timeout=0.5)
        return True

    def status(self) -> str:
        """For the live line: '' while writes go through."""
        with self.cond:
            if self.failing_since is None or time.monotonic() - self.failing_since < 3.0:
                return ""
            away = int(time.monotonic() - self.failing_since)
            return f"MLflow away for {away // 60}:{away % 60:02d}, {len(self.ops)} writes held"

    def unwritten(self) -> str:
        """One line naming the writes still waiting or dropped ('' when there are none)."""
        with self.cond:
            waiting = list(dict.fromkeys(what for what, _ in self.ops))
            dropped, reason = self.dropped, self.reason
            self.dropped = []  # named once
        parts = []
        if waiting:
            parts.append(f"{len(self.ops)} writes not made ({reason or 'no answer'}): {', '.join(waiting)}")
        if dropped:
            parts.append(f"{len(dropped)} refused: {', '.join(dropped)}")
        line = "; ".join(parts)
        return f"MLflow at {self.uri}: {line[:600]}{' ...' if len(line) > 600 else ''}" if line else ""


def passing(e: Exception) -> bool:
    """A failure that may go away by itself: no connection, a server or database error (5xx)."""
    if isinstance(e, MlflowException):
        return e.get_http_status_code() >= 500
    return isinstance(e, OSError)  # requests' connection errors and timeouts among them


def first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


_writers: dict[str, Writer] = {}
_writers_lock = threading.Lock()
FLUSH_STALL_S = 120.0  # a sweep's end waits this long for a store that makes no progress


def writer_for(uri: str) -> Writer:
    """The process's writer for a store: the sweep's callback and its driver share it, so their writes
    keep one order (a trial's run is created before the sweep's end looks for runs left open)."""
    with _writers_lock:
        if uri not in _writers:
            _writers[uri] = Writer(uri)
        return _writers[uri]


def backlog() -> str:
    """What the live line says about MLflow: '' while its writes go through."""
    return "; ".join(s for w in list(_writers.values()) if (s := w.status()))


def _flush_at_exit() -> None:  # e.g. a command that used a Tracker without finishing a sweep
    for w in list(_writers.values()):
        w.flush(stall_s=10.0)


class _QuietWriterRetries(logging.Filter):
    """urllib3 warns on every retry; the writer's retries show on the live line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != Writer.THREAD_NAME



class Tracker:
    """A sweep's runs. With `background`, writes go through the process's Writer for the store (a
    sweep's driver); without, each is made before the method returns."""

    def __init__(self, uri: str, experiment: str, background: bool = False):
        self.uri = uri
        self.client = client_for(uri)
        self.experiment = experiment
        self.experiment_id = self._experiment_id(experiment)
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id (filled in by the writes themselves)
        self.writer = writer_for(uri) if background else None

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException as e:  # another sweep of the same name created it meanwhile
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def _submit(self, what: str, fn) -> None:
        if self.writer is None:
            fn()
        else:
            self.writer.submit(what, fn)

    def flush(self, stall_s: float = FLUSH_STALL_S) -> str:
        """Wait for this process's writes to the store; '' when all are made, else one line naming
        what is not."""
        if self.writer is None:
            return ""
        self.writer.flush(stall_s)
        return self.writer.unwritten()

    # --- the sweep (parent run) ---------------------------------------------------------------

    def start_sweep(self, run_name: str, params: dict, files: dict[str, str], tags: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={KIND_TAG: "sweep", **{k: str(v) for k, v in tags.items()}})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                (Path(d) / name).write_text(text, encoding="utf-8")
                self.client.log_artifact(self.parent_id, str(Path(d) / name))
        return self.parent_id

    def share_view(self, searched: list[str]) -> None:
        """The MLflow runs table as a view shared through MLflow's own experiment tag: this sweep's
        trials, best first, with val loss and the searched params (columns and sort otherwise live in
        each browser). Any MLflow UI on this store opens it at `?viewStateShareKey=SHARED_VIEW`."""
        # what decides first, the ids last: MLflow groups columns by kind (metrics, params, tags) unless a
        # column order is given, and its side panel leaves ~1200 px of a 1600 px window
        columns = ["metrics.`best_val_loss`", f"tags.`{OUTCOME_TAG}`", *(f"params.`{name}`" for name in searched),
                   f"tags.`{TRIAL_TAG}`"]
        view = {"searchFilter": f"tags.mlflow.parentRunId = '{self.parent_id}'",
                "orderByKey": "metrics.`best_val_loss`", "orderByAsc": True,
                "selectedColumns": columns, "columnOrder": columns}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{SHARED_VIEW}", json.dumps(view))

    def reopen_sweep(self, parent_id: str) -> None:
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        self.reopen_trials()

    def reopen_trials(self) -> None:
        """Learn the run of each trial of the sweep (in line with the writes before it)."""
        def op():
            for run in self.child_runs():
                self.runs[run.data.tags[TRIAL_TAG]] = run.info.run_id
        self._submit("the sweep's trial runs", op)

    def finish_sweep(self, status: str, metrics: dict, tags: dict) -> str:
        """End the parent run, and any trial run left open; waits for every write of the sweep. Returns
        '' or one line naming what could not be written."""
        self._log(self.parent_id, metrics, step=0, what="the sweep's results")
        parent_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        self._submit("the sweep's tags", lambda: self.client.log_batch(self.parent_id, tags=parent_tags))

        def close_open_trials():
            # trials the sweep did not see end (the driver stopped) must not stay RUNNING for ever
            for run in self.child_runs():
                if run.info.status == "RUNNING":
                    self.client.set_tag(run.info.run_id, OUTCOME_TAG, "interrupted")
                    self.client.set_terminated(run.info.run_id, "KILLED")
        self._submit("closing trials left open", close_open_trials)
        self._submit("the sweep's end", lambda: self.client.set_terminated(self.parent_id, status))
        return self.flush()

    def child_runs(self):
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=10000)

    # --- trials (child runs) ------------------------------------------------------------------

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> None:
        """The trial's run: the existing one when a resumed sweep restarts it, else a new nested run."""
        params = [Param(k, str(v)) for k, v in sorted(params.items())]

        def op():
            run_id = self.runs.get(trial_id)
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
                return
            # a create whose answer was lost (the server went away meanwhile) may have made the run
            found = self.client.search_runs(
                [self.experiment_id], max_results=1,
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if found:
                run_id = found[0].info.run_id
            else:
                run_id = self.client.create_run(self.experiment_id, run_name=trial_name, tags={
                    "mlflow.parentRunId": self.parent_id, KIND_TAG: "trial", TRIAL_TAG: trial_id,
                    "ray.trial_name": trial_name, SWEEP_TAG: self.experiment}).info.run_id
            self.runs[trial_id] = run_id
            self.client.log_batch(run_id, params=params)
        self._submit(f"trial {trial_id}'s run", op)

    def trial_result(self, trial_id: str, result: dict) -> None:
        if "val_loss" in result:
            self._log(trial_id, {k: result[k] for k in STEP_METRICS if k in result},
                      step=int(result["chars_trained"]), what=f"trial {trial_id}'s results")

    def trial_tags(self, trial_id: str, tags: dict) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]

        def op():
            if trial_id in self.runs:
                self.client.log_batch(self.runs[trial_id], tags=batch)
        self._submit(f"trial {trial_id}'s tags", op)

    def trial_ended(self, trial_id: str, summary: dict, model_file: Path | None = None,
                    error: str | None = None) -> None:
        """Log a trial's final numbers, error and model file; `close_trial` then sets its status. The
        model file is copied at once: the caller may remove it when this returns."""
        self._log(trial_id, summary, step=int(summary.get("chars_trained", 0) or 0),
                  what=f"trial {trial_id}'s results")
        if error:
            def tag_error():
                if trial_id in self.runs:
                    self.client.set_tag(self.runs[trial_id], "error", error[-4000:])
            self._submit(f"trial {trial_id}'s error", tag_error)
        if model_file is not None and model_file.is_file():
            # logged under the fixed name selection.py looks for
            staged = Path(tempfile.mkdtemp(prefix="charsearch-model-")) / Path(MODEL_ARTIFACT).name
            shutil.copyfile(model_file, staged)

            def upload():
                try:
                    if trial_id in self.runs:
                        self.client.log_artifact(self.runs[trial_id], str(staged),
                                                 artifact_path=str(Path(MODEL_ARTIFACT).parent))
                except Exception as e:
                    if passing(e):
                        raise
                    shutil.rmtree(staged.parent, ignore_errors=True)
                    raise
                shutil.rmtree(staged.parent, ignore_errors=True)
            self._submit(f"trial {trial_id}'s model", upload)

    def close_trial(self, trial_id: str, outcome: str) -> None:
        def op():
            run_id = self.runs.get(trial_id)
            if run_id is not None:  # else the trial failed before it started (no run was opened)
                self.client.set_tag(run_id, OUTCOME_TAG, outcome)
                self.client.set_terminated(run_id, "FAILED" if outcome == "failed" else "FINISHED")
        self._submit(f"trial {trial_id}'s outcome", op)

    def _log(self, trial_or_run: str, metrics: dict, step: int, what: str) -> None:
        """Metrics of a trial (by trial id) or of the parent run (by run id), stamped now: a retried
        write repeats the same points, which the store keeps once."""
        ts = int(1000 * time.time())
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if not batch:
            return

        def op():
            run_id = trial_or_run if trial_or_run == self.parent_id else self.runs.get(trial_or_run)
            if run_id is not None:
                self.client.log_batch(run_id, metrics=batch)
        self._submit(what, op)
