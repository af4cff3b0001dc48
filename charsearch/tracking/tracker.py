"""A sweep's runs in MLflow: an experiment per sweep, a parent run per sweep invocation, a nested child
run per trial (tracking.layout names what they hold).

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

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from charsearch.tracking.layout import (
    KIND_TAG,
    METRIC,
    MODEL_ARTIFACT,
    OUTCOME_TAG,
    OUTCOMES,
    SHARED_VIEW,
    SHOWN_LOSS_TAG,
    STEP_METRICS,
    SWEEP_TAG,
    TRIAL_TAG,
)
from charsearch.tracking.store import client_for
from charsearch.tracking.writer import FLUSH_STALL_S, passing, writer_for


class Tracker:
    """A sweep's runs. With `background`, writes go through the process's Writer for the store (a
    sweep's driver); without, each is made before the method returns."""

    def __init__(self, uri: str, experiment: str, background: bool = False):
        self.uri = uri
        self.client = client_for(uri)
        self.experiment = experiment
        self.experiment_id = self._experiment_id(experiment)
        self.parent_id: str | None = None
        self.reopened = False  # a resumed sweep's parent run: its trials may have ended before
        self.runs: dict[str, str] = {}  # trial id -> run id (filled in by the writes themselves)
        # each trial's last val_loss step in its run: the results a restarted trial reports again from an
        # older checkpoint (Ray's saved state, or a retry, may name the one before its latest) are not
        # logged twice
        self.logged_through: dict[str, int] = {}
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
        # column order is given, and its side panel leaves ~1200 px of a 1600 px window; widths that hold
        # each header whole (MLflow's 100 px cut "charsearch.outcome")
        columns = [f"tags.`{SHOWN_LOSS_TAG}`", f"tags.`{OUTCOME_TAG}`", *(f"params.`{name}`" for name in searched),
                   f"tags.`{TRIAL_TAG}`"]
        widths = {c: max(100, 8 * len(c.split("`")[1]) + 48) for c in columns}
        view = {"searchFilter": f"tags.mlflow.parentRunId = '{self.parent_id}'",
                "orderByKey": f"metrics.`{METRIC}`", "orderByAsc": True,
                "selectedColumns": columns, "columnOrder": columns, "columnWidths": widths}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{SHARED_VIEW}", json.dumps(view))

    def reopen_sweep(self, parent_id: str) -> None:
        self.parent_id, self.reopened = parent_id, True
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
                    self.client.set_terminated(run.info.run_id, OUTCOMES["interrupted"].run_status)
        self._submit("closing trials left open", close_open_trials)
        self._submit("the sweep's end", lambda: self.client.set_terminated(self.parent_id, status))
        return self.flush()

    def ended_before(self, waiting=None) -> list:
        """The trial runs of a reopened sweep (none for a new one), read in line with the writes before:
        a store that is away is waited for, `waiting(line)` told once (Writer.call)."""
        if not self.reopened:
            return []
        if self.writer is None:
            return self.child_runs()
        return self.writer.call("the runs of the trials that ended before", self.child_runs, waiting)

    def child_runs(self):
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=10000)

    # --- trials (child runs) ------------------------------------------------------------------

    def trial_started(self, trial_id: str, trial_name: str, params: dict) -> None:
        """The trial's run: the existing one when a resumed sweep restarts it, else a new nested run, which
        starts now (not when the background write is made)."""
        params = [Param(k, str(v)) for k, v in sorted(params.items())]
        started = int(1000 * time.time())

        def op():
            run_id = self.runs.get(trial_id)
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
                steps = [m.step for m in self.client.get_metric_history(run_id, "val_loss")]
                self.logged_through[trial_id] = max(steps, default=-1)
                return
            # a create whose answer was lost (the server went away meanwhile) may have made the run
            found = self.client.search_runs(
                [self.experiment_id], max_results=1,
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if found:
                run_id = found[0].info.run_id
            else:
                run_id = self.client.create_run(self.experiment_id, start_time=started, run_name=trial_name, tags={
                    "mlflow.parentRunId": self.parent_id, KIND_TAG: "trial", TRIAL_TAG: trial_id,
                    "ray.trial_name": trial_name, SWEEP_TAG: self.experiment}).info.run_id
            self.runs[trial_id] = run_id
            self.client.log_batch(run_id, params=params)
        self._submit(f"trial {trial_id}'s run", op)

    def trial_result(self, trial_id: str, result: dict) -> None:
        if "val_loss" in result:
            self._log(trial_id, {k: result[k] for k in STEP_METRICS if k in result},
                      step=int(result["chars_trained"]), what=f"trial {trial_id}'s results", once=True)

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
        loss = summary.get(METRIC)
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.trial_tags(trial_id, {SHOWN_LOSS_TAG: f"{loss:.4f}"})
        if error:
            def tag_error():
                if trial_id in self.runs:
                    self.client.set_tag(self.runs[trial_id], "error", error[-4000:])
            self._submit(f"trial {trial_id}'s error", tag_error)
        if model_file is not None and model_file.is_file():
            # logged under the fixed name selection looks for (layout.MODEL_ARTIFACT)
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
                self.client.set_terminated(run_id, OUTCOMES[outcome].run_status)
        self._submit(f"trial {trial_id}'s outcome", op)

    def _log(self, trial_or_run: str, metrics: dict, step: int, what: str, once: bool = False) -> None:
        """Metrics of a trial (by trial id) or of the parent run (by run id), stamped now: a retried
        write repeats the same points, which the store keeps once. `once`: not at a step the trial's run
        holds already (a restarted trial reporting again)."""
        ts = int(1000 * time.time())
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if not batch:
            return

        def op():
            run_id = trial_or_run if trial_or_run == self.parent_id else self.runs.get(trial_or_run)
            if once and step <= self.logged_through.get(trial_or_run, -1):
                return
            if run_id is not None:
                self.client.log_batch(run_id, metrics=batch)
                if once:
                    self.logged_through[trial_or_run] = step
        self._submit(what, op)
