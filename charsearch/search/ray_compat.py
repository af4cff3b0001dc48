"""Every use of Ray's private API, in one place (tested in tests/test_ray_compat.py, so a Ray upgrade that
breaks one fails there, loudly, rather than in the middle of a sweep).

Ray 2.60 gives no public way to (1) forget a trial's kept checkpoints that are gone from storage (or left
partial) and point it at another (or at none), (2) hand a restored Tuner callbacks and a searcher that hold
this invocation's state (Tuner.restore brings back the pickled ones), (3) read where a trial's results are
stored, or (4) make a restored search algorithm forget trials that Tune's restored experiment state lacks.
"""

from __future__ import annotations

import os

import pyarrow.fs
from ray.tune.search import ConcurrencyLimiter

RAY_VERSIONS = ("2.60.",)  # the releases this module was written and tested against

# quiet, local-friendly Ray defaults (a user's own environment wins); Ray reads each when it is used
ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no tensorboard/csv/json files per trial
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # a failed trial's traceback goes to MLflow, not the terminal
}


def set_env_defaults() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def trial_storage(trial) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path) of the folder holding a trial's checkpoints."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


def forget_checkpoints(trial, gone) -> None:
    """Drop the kept checkpoints for which gone(checkpoint) is true (gone from storage, or left partial) from
    the trial's checkpoint manager: registering a new checkpoint deletes the oldest kept one, which must not be
    one already gone."""
    manager = trial.run_metadata.checkpoint_manager
    manager._checkpoint_results = [r for r in manager._checkpoint_results if not gone(r.checkpoint)]


def forget_every_checkpoint(trial) -> None:
    """Make the trial start from its beginning: none of its checkpoints is kept or restored."""
    manager = trial.run_metadata.checkpoint_manager
    assert hasattr(manager, "_latest_checkpoint_result") and hasattr(trial, "_restore_checkpoint_result")
    manager._checkpoint_results, manager._latest_checkpoint_result = [], None
    trial._restore_checkpoint_result = None
    _invalidate(trial)


def _invalidate(trial) -> None:
    """Tune caches a trial's saved form; a change inside its checkpoint manager does not clear the cache."""
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()


def point_at_checkpoint(trial, checkpoint, name: str) -> None:
    """Make `checkpoint` (the folder `name` under the trial's storage) the one the trial resumes from, with
    new checkpoints numbered after it."""
    from ray.train._internal.session import _TrainingResult
    manager = trial.run_metadata.checkpoint_manager
    # kept once only: Tune deletes a kept checkpoint's folder when it drops it, and a second copy's delete fails
    manager._checkpoint_results = [r for r in manager._checkpoint_results if r.checkpoint.path != checkpoint.path]
    manager.register_checkpoint(_TrainingResult(
        checkpoint=checkpoint, metrics={**trial.last_result, "checkpoint_dir_name": name}))
    trial.storage.current_checkpoint_index = int(name.split("_")[-1]) + 1
    _invalidate(trial)


def replace_callbacks_and_searcher(tuner, callbacks: list, searcher, time_budget_s: float | None) -> None:
    """A restored Tuner with this invocation's callbacks, search algorithm and search time instead of the
    pickled ones (which lost their live state when pickled, and hold the first invocation's time); the
    search algorithm's saved state (the Optuna study) is still restored into `searcher` by Tune."""
    internal = tuner._local_tuner
    internal.get_run_config().callbacks = callbacks
    internal._tune_config.search_alg = searcher
    internal._tune_config.time_budget_s = time_budget_s


def searcher_knows(searcher, trial_id: str) -> bool:
    """Whether OptunaSearch holds a trial of this id (its results may be told to it): Tune checkpoints the
    searcher and the trials on separate cadences, so a restored Tune can hold trials a restored searcher
    never suggested, and OptunaSearch.on_trial_* index them unguarded."""
    return trial_id in searcher._ot_trials


def forget_unsaved_trials(search_alg, saved: set[str]) -> None:
    """Make a SearchGenerator count as created the `saved` trials only (its counter ends the search at
    num_samples), and its concurrency limit hold slots for those of them still live only."""
    search_alg.set_state({**search_alg.get_state(), "counter": len(saved)})
    limiter = search_alg.searcher
    if isinstance(limiter, ConcurrencyLimiter):
        limiter.live_trials &= saved
        limiter.num_unfinished_live_trials = len(limiter.live_trials)
