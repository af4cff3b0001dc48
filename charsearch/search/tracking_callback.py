"""Tune's view of every trial, mirrored into MLflow (through charsearch.tracking's Tracker).

A trial's run is opened at its first report: a trial that never trained leaves no run behind. Its
outcome comes from the sweep's Ledger.

A trial's run is marked ended only once Tune's saved experiment state says so too: Tune calls
get_state() as it writes a snapshot, and on_step_end() comes after that write. Were the driver killed
in between, the resumed sweep would otherwise restart a trial that MLflow shows as ended. Trials still
running when the sweep ends (its budget, Ctrl-C) never reach on_trial_complete: they are logged in
on_experiment_end with their best model so far.

The writes themselves are made in the background (tracking.Writer), so a driver killed with writes
still waiting may leave a trial that Tune saved as ended without its end in MLflow: a resumed sweep
logs such trials from Tune's saved state (their last result and latest checkpoint) at its first step,
or at its end where Tune has no step to take (every trial had ended).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs
from ray import tune

from charsearch.core.config import PLUMBING
from charsearch.search import ray_compat
from charsearch.search.ledger import SweepState
from charsearch.search.sweepfile import SweepConfig
from charsearch.tracking.layout import OUTCOME_TAG, TRIAL_TAG
from charsearch.tracking.tracker import Tracker


def trial_params(sweep: SweepConfig, config: dict) -> dict:
    """A trial run's params: every training option, and the searched values as drawn (e.g. shape)."""
    params = {k: v for k, v in sweep.trial_config(config).to_dict().items() if k not in PLUMBING}
    return {**params, **{k: v for k, v in config.items() if k not in params}}


SUMMARY_KEYS = ("best_val_loss", "chars_trained", "epoch", "iteration", "elapsed_s")


class MLflowCallback(tune.Callback):
    def __init__(self, sweep: SweepConfig, tracker: Tracker, state: SweepState, ended_before: list = ()):
        self.sweep, self.tracker, self.state = sweep, tracker, state
        self.ended_before = list(ended_before)  # a resumed sweep's trial runs (Tracker.ended_before)
        self.ended: dict[str, str] = {}  # trial id -> outcome, not yet in a saved snapshot
        self.saved: dict[str, str] = {}  # ... in the snapshot being written
        self.replay = True

    def __getstate__(self):  # pickled with Tune's experiment state: the live parts stay behind
        return {"sweep": self.sweep, "tracker": None, "state": None, "ended_before": [], "ended": {}, "saved": {},
                "replay": True}

    @property
    def ledger(self):
        return self.state.ledger

    def setup(self, **info):
        for run in self.ended_before:
            self.ledger.recorded(run.data.tags[TRIAL_TAG], run.data.tags.get(OUTCOME_TAG) if
                                 run.info.status != "RUNNING" else None, "best_val_loss" in run.data.metrics)

    def on_step_begin(self, iteration, trials, **info):
        if self.replay:
            self.replay = False
            self._replay(trials)

    def _replay(self, trials) -> None:
        for trial in trials:
            if (trial.status != "TERMINATED" or trial.trial_id in self.ledger.outcomes
                    or trial.last_result.get("val_loss") is None):
                continue
            self._open(trial)
            self.ledger.result(trial, trial.last_result)
            self.tracker.trial_result(trial.trial_id, trial.last_result)
            self._log_end(trial)
            self.saved[trial.trial_id] = self.ledger.completed(trial)  # Tune saved its end

    def _open(self, trial) -> None:
        self.tracker.trial_started(trial.trial_id, str(trial), trial_params(self.sweep, trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.ledger.reported or self.ledger.outcomes.get(trial.trial_id) == "interrupted":
            self._open(trial)
        self.ledger.result(trial, result)
        if result.get("iteration") is not None and "node_id" in result:
            self.tracker.trial_tags(trial.trial_id, {"node_id": result["node_id"], "hostname": result["hostname"],
                                                     "node_ip": result.get("node_ip", ""),
                                                     "device": result.get("device", ""),
                                                     "gpu_ids": result.get("gpu_ids", ""),
                                                     "gpu_share": result.get("gpu_share", 0)})
        self.tracker.trial_result(trial.trial_id, result)

    def _log_end(self, trial, error: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            model = None
            checkpoint = reported_checkpoint(trial.last_result, *ray_compat.trial_storage(trial), trial.checkpoint)
            if checkpoint is not None and error is None:
                with checkpoint.as_directory() as d:
                    model = Path(tmp) / "model.pt"
                    shutil.copy(Path(d) / "model.pt", model)
            self.tracker.trial_ended(trial.trial_id, summary_of(trial.last_result), model, error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.ledger.reported:
            return
        self._log_end(trial)
        self.ended[trial.trial_id] = self.ledger.completed(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_text(trial)
        if trial.trial_id not in self.ledger.reported:
            self._open(trial)
        self._log_end(trial, error or "error")
        self.ended[trial.trial_id] = self.ledger.failed(trial.trial_id, error)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # ray.max_failures: Tune reruns the trial from its last checkpoint (on any node) in the same run
        self.tracker.trial_tags(trial.trial_id, {"charsearch.retries": trial.num_failures,
                                                 "charsearch.retry_error": error_text(trial)[-4000:] or "error"})

    def get_state(self):
        self.saved.update(self.ended)  # these ends are in the snapshot Tune is writing now
        self.ended.clear()
        return None

    def on_step_end(self, iteration, trials, **info):
        self._close(self.saved)

    def on_experiment_end(self, trials, **info):
        if self.replay:  # a resumed sweep whose trials had all ended: Tune ends it without a step
            self.replay = False
            self._replay(trials)
        self.ledger.trials = list(trials)
        budget_over = self.state.budget_over(time.time())
        for trial in trials:
            if trial.trial_id in self.ledger.reported and trial.trial_id not in self.ledger.outcomes:
                self._log_end(trial)
                self.ended[trial.trial_id] = self.ledger.cut(trial.trial_id, budget_over)
        self._close({**self.saved, **self.ended})  # Tune saved its final state before ending

    def _close(self, ends: dict) -> None:
        for trial_id, outcome in list(ends.items()):
            self.tracker.close_trial(trial_id, outcome)
            self.saved.pop(trial_id, None)
            self.ended.pop(trial_id, None)


def error_text(trial) -> str:
    if trial.error_file and Path(trial.error_file).is_file():
        return Path(trial.error_file).read_text(errors="replace")
    return ""


def reported_checkpoint(result: dict, fs, trial_path: str, registered):
    """The checkpoint reported with `result`. Tune registers a reported checkpoint in a step after the
    result itself, so a sweep ended between the two (its budget, Ctrl-C) holds the result and, as the
    trial's checkpoint, the one before; the folder the result names is in storage already."""
    name = result.get("checkpoint_dir_name")
    if name:
        path = f"{trial_path}/{name}"
        if fs.get_file_info(f"{path}/model.pt").type == pyarrow.fs.FileType.File:
            return tune.Checkpoint(path=path, filesystem=fs)
    return registered


def summary_of(result: dict) -> dict:
    return {k: result[k] for k in SUMMARY_KEYS if k in result}
