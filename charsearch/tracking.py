"""MLflow: an experiment per sweep, a parent run per sweep invocation, a nested child run per trial.

All writes go through one MlflowClient in the sweep's driver process, so a SQLite store has a single
writer and cluster nodes never need to reach the tracking store. Child runs are found again by their
trial id, so resuming a sweep continues a trial's run instead of creating a duplicate.

Ray's MLflowLoggerCallback is not used: it cannot nest runs under a parent, logs every numeric result
key at step = iteration (charsearch steps by characters trained, the fair axis), and on resume opens a
second run for every trial that was in flight.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from .config import DEFAULT_TRACKING_URI  # noqa: E402
from .errors import UsageError  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..." etc.

KIND_TAG = "charsearch.kind"  # "sweep" (parent) or "trial" (child)
TRIAL_TAG = "ray.trial_id"
SWEEP_TAG = "charsearch.sweep"
OUTCOME_TAG = "charsearch.outcome"  # one of OUTCOMES
OUTCOMES = ("finished", "stopped_early", "cut_by_budget", "interrupted", "failed")
OUTCOME_WORDS = {"finished": "finished", "stopped_early": "stopped early by ASHA", "cut_by_budget": "cut by the budget",
                 "interrupted": "interrupted", "failed": "failed"}
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


def client_for(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


class Tracker:
    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = client_for(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id

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

    def reopen_sweep(self, parent_id: str) -> None:
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        self.reopen_trials()

    def reopen_trials(self) -> None:
        for run in self.child_runs():
            self.runs[run.data.tags[TRIAL_TAG]] = run.info.run_id

    def finish_sweep(self, status: str, metrics: dict, tags: dict) -> None:
        self._log(self.parent_id, metrics, step=0)
        self.client.log_batch(self.parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        # trials the sweep did not see end (the driver stopped) must not stay RUNNING for ever
        for run in self.child_runs():
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, OUTCOME_TAG, "interrupted")
                self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_id, status)

    def child_runs(self):
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=10000)

    # --- trials (child runs) ------------------------------------------------------------------

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> str:
        """The trial's run: the existing one when a resumed sweep restarts it, else a new nested run."""
        run_id = self.runs.get(trial_id)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=trial_name, tags={
            "mlflow.parentRunId": self.parent_id, KIND_TAG: "trial", TRIAL_TAG: trial_id, "ray.trial_name": trial_name,
            SWEEP_TAG: self.client.get_experiment(self.experiment_id).name})
        run_id = self.runs[trial_id] = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
        return run_id

    def trial_result(self, trial_id: str, result: dict) -> None:
        run_id = self.runs.get(trial_id)
        if run_id and "val_loss" in result:
            self._log(run_id, {k: result[k] for k in STEP_METRICS if k in result}, step=int(result["chars_trained"]))

    def trial_tags(self, trial_id: str, tags: dict) -> None:
        if trial_id in self.runs:
            self.client.log_batch(self.runs[trial_id], tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def trial_ended(self, trial_id: str, summary: dict, model_file: Path | None = None,
                    error: str | None = None) -> None:
        """Log a trial's final numbers, error and model file; `close_trial` then sets its status."""
        run_id = self.runs.get(trial_id)
        if run_id is None:  # the trial failed before it started (no run was opened)
            return
        self._log(run_id, summary, step=int(summary.get("chars_trained", 0) or 0))
        if error:
            self.client.set_tag(run_id, "error", error[-4000:])
        if model_file is not None and model_file.is_file():
            with tempfile.TemporaryDirectory() as d:  # logged under the fixed name select.py looks for
                named = Path(d) / Path(MODEL_ARTIFACT).name
                shutil.copyfile(model_file, named)
                self.client.log_artifact(run_id, str(named), artifact_path=str(Path(MODEL_ARTIFACT).parent))

    def close_trial(self, trial_id: str, outcome: str) -> None:
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.client.set_tag(run_id, OUTCOME_TAG, outcome)
            self.client.set_terminated(run_id, "FAILED" if outcome == "failed" else "FINISHED")

    def _log(self, run_id: str, metrics: dict, step: int) -> None:
        ts = int(1000 * time.time())
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)
