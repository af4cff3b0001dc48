"""The sweep's driver: `run` reads top to bottom as its steps.

    check the corpus and where the sweep will be kept (or what --resume continues)
    start Ray; meanwhile open the tracking store and find what the last finished sweep like it found (a warm
    start), unless resuming; decide each trial's resources
    open (or reopen) the sweep's MLflow parent run and its record beside Tune's experiment
    search: Tune runs the trials until the search's deadline, its sample count, or Ctrl-C
    finish: the best trial trains on to the end of the budget (the first from its start if none reported)
    close the record: the parent run's metrics, counts and status
From the parent run's start on, any failure ends that run as FAILED (Ctrl-C: KILLED) before it is raised.
"""

from __future__ import annotations

import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import ray
import yaml
from ray import tune

from charsearch.core.data import Corpus
from charsearch.search import ray_compat
from charsearch.search.finish import Finish, finish_best
from charsearch.search.ledger import METRIC, SweepState
from charsearch.search.resources import check_reachable, init_ray, trial_resources
from charsearch.search.resume import ResumeFromExisting, ResumePoint, resume_point
from charsearch.search.space import make_scheduler, make_searcher, search_algorithm, search_space
from charsearch.search.status import StatusLine
from charsearch.search.storage import Storage
from charsearch.search.sweepfile import SweepConfig, checked_corpus
from charsearch.search.tracking_callback import MLflowCallback
from charsearch.search.trial import remove_stale_trial_dirs, run_trial
from charsearch.search.warm import WARM_TAG, WarmStart, earlier_sweep
from charsearch.tracking.layout import COUNTS_TAG, RAY_EXPERIMENT_TAG
from charsearch.tracking.store import client_for, resolve_uri
from charsearch.tracking.tracker import Tracker


@dataclass
class SweepOutcome:
    experiment_dir: str  # a local path or a storage URI
    parent_run_id: str
    counts: dict  # Ledger.counts(): started, finished, stopped_early, cut_by_budget, interrupted, failed, never_started
    interrupted: bool
    best_val_loss: float | None
    best_trial: str | None
    best_config: dict | None
    wall_s: float
    finish: Finish | None = None  # the best trial's training after the search, when the sweep has one
    errors: dict | None = None  # failed trial id -> the last line of its error


def run(sweep: SweepConfig, resume: bool = False, address: str | None = None, tracking_uri: str | None = None,
        dashboard: bool = False, out=sys.stderr, started: float | None = None, plan_text: str = "",
        files: dict | None = None, expected_rates: dict | None = None, whole_rates: dict | None = None) -> SweepOutcome:
    """Run (or resume) a sweep. `started` (time.time()) is when the user's command began: the budget
    counts from there, calibration included. `files` (name -> text) go to the parent run as artifacts;
    `expected_rates` (shape -> chars/s, an auto sweep's calibration) let the sweep say when the machine
    gives its trials far less; `whole_rates` (shape -> chars/s of one trial alone on every thread, where the
    calibration measured it) spare a trial of such a shape its own timing of its threads."""
    state = SweepState(started or time.time(), sweep.sweep_time, expected_rates=dict(expected_rates or {}),
                       whole_rates=dict(whole_rates or {}))
    corpus = checked_corpus(sweep)
    if not ray.is_initialized():  # before anything is written
        check_reachable(address or sweep.address)
    storage = Storage(sweep)
    previous = resume_point(sweep, storage, tracking_uri, corpus.sha256) if resume else None
    for note in previous.notes if previous else []:
        print(note, file=out)
    uri = previous.tracking_uri if previous else resolve_uri(tracking_uri, sweep.tracking_uri)
    storage.check_writable()

    owns_ray = not ray.is_initialized()  # else a cluster joined while planning, or a Python caller's own Ray
    with ThreadPoolExecutor(1) as pool:  # the tracking store opens (a new SQLite store: ~2 s) while Ray starts
        opened = pool.submit(open_store, sweep, uri, corpus, previous, out)
        init_ray(address or sweep.address, dashboard)
        warm = opened.result()
    resources, note = trial_resources(sweep, ray.cluster_resources().get("GPU", 0), len(corpus.vocab))
    if note:
        print(f"note: {note}", file=out)

    tracker = Tracker(uri, sweep.name, background=True)  # trials never wait for MLflow
    exp_dir = None
    try:
        exp_dir = reopen_record(tracker, previous) if previous else start_record(
            sweep, storage, tracker, corpus, resources, plan_text, uri, files or {}, warm)
        # what ended before a resume, read before Tune starts: a store away meanwhile is waited for, and
        # Ctrl-C (or SIGTERM) stops the wait as it stops the sweep
        earlier = tracker.ended_before(lambda line: print(line, file=out))
        state.ends_at = search_deadline(sweep, state.started)
        grid = make_tuner(sweep, corpus, storage, exp_dir, tracker, state, resources, previous, warm,
                          earlier).fit()
        remove_stale_trial_dirs()
        interrupted = ended_early(sweep, state)
        finish = finish_search(sweep, grid, tracker, corpus, state, interrupted, out)
    except BaseException as e:
        end_failed(tracker, storage, exp_dir, e)
        raise
    outcome = close_record(tracker, storage, exp_dir, state, interrupted, finish, out)
    if owns_ray:  # its worker processes end with it: the folders of trials stopped mid-run can go now
        ray.shutdown()
    remove_stale_trial_dirs()
    return outcome


def open_store(sweep: SweepConfig, uri: str, corpus: Corpus, previous: ResumePoint | None, out) -> WarmStart | None:
    """The tracking store opened, its tables made where it is new, and what a new sweep starts from: reads only,
    so that a sweep whose Ray does not start leaves no experiment behind."""
    client_for(uri)
    return None if previous else warm_start(sweep, uri, corpus, out)


def warm_start(sweep: SweepConfig, uri: str, corpus: Corpus, out) -> WarmStart | None:
    """Auto sweeps start from the last finished one like them unless told not to; sweep files when they
    say `search.warm_start: true`."""
    if not (sweep.auto if sweep.warm_start is None else sweep.warm_start):
        return None
    notes: list[str] = []
    warm = earlier_sweep(uri, sweep, corpus.sha256, notes)
    for note in dict.fromkeys(notes[:5]):  # a store full of bad records is said in a few lines, not thousands
        print(note, file=out)
    if len(notes) > 5:
        print(f"warm start: {len(notes) - 5} more records left out", file=out)
    if warm is not None:
        print(warm.describe(), file=out)
    return warm


def start_record(sweep: SweepConfig, storage: Storage, tracker: Tracker, corpus: Corpus, resources, plan_text: str,
                 uri: str, files: dict, warm: WarmStart | None) -> str:
    """A new parent run (params, the sweep file as given and as resolved, the plan of an auto sweep) and
    the record that links the Ray experiment folder to it. Returns the experiment folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    exp_dir = f"{storage.root}/{sweep.name}/{stamp}"
    as_file = yaml.safe_dump(sweep.to_file(), sort_keys=False)
    tracker.start_sweep(
        run_name=f"{sweep.name}-{stamp}",
        params={"num_samples": sweep.num_samples, "algorithm": sweep.algorithm, "seed": sweep.seed,
                "scheduler": sweep.scheduler, "time_attr": sweep.time_attr, "sweep_time": sweep.sweep_time,
                "trial_max_epochs": sweep.trial_max_epochs, "trial_max_time": sweep.trial_max_time,
                "finish_time": sweep.finish_time, "corpus": str(corpus.path), "corpus_sha256": corpus.sha256,
                "resources": json.dumps(resources) if isinstance(resources, dict) else "gpu: auto (by model size)"},
        files={"sweep.yaml": Path(sweep.path).read_text(encoding="utf-8") if sweep.path else as_file,
               "resolved.yaml": yaml.safe_dump(sweep.to_dict(), sort_keys=False),
               **({"auto-sized.yaml": f"{as_file}\n{plan_text}\n"} if plan_text else {}), **files},
        tags={"charsearch.sweep_file": sweep.path or "(auto)", RAY_EXPERIMENT_TAG: storage.show(exp_dir),
              "charsearch.ray_address": ray.get_runtime_context().gcs_address,
              **({WARM_TAG: warm.source_run_id} if warm else {})})
    tracker.share_view(list(sweep.space))
    storage.write_record(exp_dir, {"parent_run_id": tracker.parent_id, "tracking_uri": uri,
                                   "sweep_file": str(Path(sweep.path).absolute()) if sweep.path else "",
                                   "sweep": sweep.to_file(), "status": "RUNNING"})
    return exp_dir


def reopen_record(tracker: Tracker, previous: ResumePoint) -> str:
    tracker.reopen_sweep(previous.record["parent_run_id"])
    return previous.exp_dir


def search_deadline(sweep: SweepConfig, started: float) -> float:
    """time.time() at which the search ends: early enough for the best trial to train on for
    finish_time, within sweep_time (no limit without a sweep_time)."""
    if not sweep.sweep_time:
        return math.inf
    return time.time() + max(1.0, sweep.sweep_time - sweep.finish_time - (time.time() - started))


def make_tuner(sweep: SweepConfig, corpus: Corpus, storage: Storage, exp_dir: str, tracker: Tracker,
               state: SweepState, resources, previous: ResumePoint | None, warm: WarmStart | None,
               earlier: list) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep, corpus=corpus, ends_at=state.ends_at,
                                                         one_thread_rates=state.expected_rates,
                                                         whole_rates=state.whole_rates), resources)
    searcher = search_algorithm(make_searcher(sweep, state, warm), sweep.max_concurrent)
    callbacks = [ResumeFromExisting(searcher), MLflowCallback(sweep, tracker, state, earlier), StatusLine(state, sweep)]
    search_s = state.ends_at - time.time() if math.isfinite(state.ends_at) else None
    if previous is not None and previous.restorable:
        # Tune brings back the search space, the scheduler and the searcher's study from the saved experiment
        tuner = tune.Tuner.restore(previous.exp_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, storage_filesystem=storage.ray_fs)
        ray_compat.replace_callbacks_and_searcher(tuner, callbacks, searcher, search_s)
        return tuner
    run_config = tune.RunConfig(
        name=exp_dir.rsplit("/", 1)[1], storage_path=exp_dir.rsplit("/", 1)[0], storage_filesystem=storage.ray_fs,
        verbose=0, callbacks=callbacks,
        # two: the experiment state saved last may still name the checkpoint before the latest
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures or 0))
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="min", search_alg=searcher,
        scheduler=make_scheduler(sweep, len(corpus.split(sweep.train_frac, sweep.val_frac)[0])),
        num_samples=sweep.num_samples, time_budget_s=search_s,
        reuse_actors=True, trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}")
    return tune.Tuner(trainable, param_space=search_space(sweep), tune_config=tune_config, run_config=run_config)


def ended_early(sweep: SweepConfig, state: SweepState) -> bool:
    """Ended by Ctrl-C (or SIGTERM) rather than by its budget, its deadline or its sample count: --resume
    continues it."""
    ledger = state.ledger
    early = (not state.budget_over(time.time()) and not state.closed and len(ledger.trials) < sweep.num_samples)
    return ledger.counts(ledger.trials)["interrupted"] > 0 or early


def finish_search(sweep: SweepConfig, grid, tracker: Tracker, corpus: Corpus, state: SweepState, interrupted: bool,
                  out) -> Finish | None:
    if not sweep.finish_time or interrupted:
        return None
    try:
        finish = finish_best(sweep, grid, tracker, corpus, state, out)
    except KeyboardInterrupt:  # the search's models are all logged already
        print("\nfinishing interrupted: the models of the search stand", file=out)
        return None
    if finish:
        value, trial_id = finish.best
        state.ledger.improve(value, trial_id, finish.config)
    return finish


def close_record(tracker: Tracker, storage: Storage, exp_dir: str, state: SweepState, interrupted: bool,
                 finish: Finish | None, out) -> SweepOutcome:
    ledger = state.ledger
    counts, best = ledger.counts(ledger.trials), ledger.best
    wall = time.time() - state.started
    status = "KILLED" if interrupted else "FINISHED"
    unwritten = tracker.finish_sweep(
        status, metrics={"best_val_loss": best[0] if best else math.nan, "wall_s": wall,
                         **{f"trials_{k}": v for k, v in counts.items()}},
        tags={"best_config": json.dumps(best[2]) if best else "", "best_trial": best[1] if best else "",
              "interrupted": interrupted, COUNTS_TAG: json.dumps(counts)})
    if unwritten:  # the tracking store stayed away past the sweep's end
        print(f"note: {unwritten}", file=out)
    mark_record(storage, exp_dir, status)
    return SweepOutcome(storage.show(exp_dir), tracker.parent_id, counts, interrupted, best[0] if best else None,
                        best[1] if best else None, best[2] if best else None, wall, finish, dict(ledger.errors))


def end_failed(tracker: Tracker, storage: Storage, exp_dir: str | None, error: BaseException) -> None:
    """The parent run of a sweep that failed (or was stopped) outside Tune's own handling is never left
    RUNNING: FAILED, or KILLED for Ctrl-C."""
    if tracker.parent_id is None:
        return
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    tracker.finish_sweep(status, metrics={}, tags={"error": f"{type(error).__name__}: {error}"[:4000]})
    if exp_dir:
        mark_record(storage, exp_dir, status)


def mark_record(storage: Storage, exp_dir: str, status: str) -> None:
    try:
        storage.write_record(exp_dir, {**storage.read_record(exp_dir), "status": status})
    except OSError:  # the record's storage went away: MLflow holds the status all the same
        pass
