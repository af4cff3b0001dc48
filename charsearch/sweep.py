"""The sweep: Ray Tune runs trials of the trainer, Optuna (OptunaSearch) proposes them, ASHA stops bad
ones early on the fair time axis (characters trained), MLflow records everything.

charsearch is the glue here: Tuner, OptunaSearch, ASHAScheduler, Checkpoint, Tuner.restore and the
Callback API do the work. The trainer reports after each evaluation; each reported checkpoint folder
holds the latest training state (checkpoint.pt, for resuming the trial) and the best model so far as
a portable model file (model.pt, logged to MLflow when the trial ends).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# quiet, local-friendly Ray defaults (a user's own environment wins)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no tensorboard/csv/json files per trial
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a failed trial's traceback goes to MLflow, not the terminal

import pyarrow  # noqa: E402
import pyarrow.fs  # noqa: E402
import ray  # noqa: E402
import ray.util.queue  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from . import artifact  # noqa: E402
from .sweepfile import SweepConfig  # noqa: E402
from .data import Corpus, check_fits, check_val, load_corpus  # noqa: E402
from .errors import UsageError  # noqa: E402
from .tracking import (COUNTS_TAG, OUTCOME_TAG, OUTCOMES, TRIAL_TAG, Tracker, backlog,  # noqa: E402,F401
                       describe_counts, resolve_uri)

STATE_FILE = "charsearch.json"  # in the Ray experiment folder: links it to the sweep's MLflow parent run
METRIC = "best_val_loss"  # what Optuna and ASHA minimise: the best fair val loss so far


# ---------------------------------------------------------------------------------------------
# the trial (runs in a Ray worker)


def run_trial(config: dict, sweep: SweepConfig, corpus: Corpus) -> None:
    import torch

    from .train import train

    ctx = tune.get_context()
    cfg = sweep.trial_config(config)
    gpus = ctx.get_trial_resources().required_resources.get("GPU", 0)
    cfg.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    train_ids, _, _ = corpus.split(cfg.train_frac, cfg.val_frac)
    iters_per_epoch = max(1, (len(train_ids) - 1) // (cfg.batch_size * cfg.seq_length))
    cfg.eval_every = max(1, round(sweep.report_every_epochs * iters_per_epoch))
    cfg.print_every = min(cfg.print_every, cfg.eval_every)

    remove_stale_trial_dirs()
    work = Path(tempfile.mkdtemp(prefix=f"{TRIAL_DIR_PREFIX}{os.getpid()}-"))
    cfg.checkpoint_dir = str(work / "cv")
    best_model = work / "model.pt"
    summary = {"trial_id": ctx.get_trial_id(), "trial_name": ctx.get_trial_name(), "sweep": sweep.name}
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": os.uname().nodename,
            "device": torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"}
    try:
        restored = tune.get_checkpoint()
        if restored is not None:  # a resumed sweep, or a retried trial: continue from the last report
            with restored.as_directory() as d:
                shutil.copy(Path(d) / "checkpoint.pt", work / "resume.pt")
                shutil.copy(Path(d) / "model.pt", best_model)
            cfg.init_from = str(work / "resume.pt")

        def on_eval(metrics: dict, path: Path, is_best: bool) -> None:
            if is_best:
                artifact.export(path, best_model, summary)
            report = work / f"report-{metrics['iteration']}"
            report.mkdir()
            os.link(path, report / "checkpoint.pt")
            os.link(best_model, report / "model.pt")
            # Tune copies the folder into the experiment's storage before report() returns; when the
            # scheduler stops this trial, report() ends the thread (SystemExit) and cleanup runs below
            try:
                tune.report({**metrics, "is_best": is_best, **node}, checkpoint=tune.Checkpoint.from_directory(report))
            finally:
                shutil.rmtree(report, ignore_errors=True)

        train(cfg, corpus, on_eval=on_eval, progress=False, summary_extra=summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


TRIAL_DIR_PREFIX = "charsearch-trial-"


def remove_stale_trial_dirs() -> None:
    """A trial stopped by the sweep's end (or a killed driver) has its worker process killed before its
    own cleanup runs: its folder (checkpoints) is removed by the next trial on that node, or by the
    driver at the end. The folder's name carries the pid of the process that owns it."""
    for d in Path(tempfile.gettempdir()).glob(f"{TRIAL_DIR_PREFIX}*"):
        try:
            pid = int(d.name[len(TRIAL_DIR_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # another user's process: alive
            pass


# ---------------------------------------------------------------------------------------------
# the driver's callbacks


class Book:
    """Every trial's outcome in one place: the live line, the final summary, the parent run's tags and
    (through those tags) `charsearch best` all read these counts, so they cannot disagree.

    A trial counts as started once it has reported (evaluated) at least once, or failed; a trial Tune
    created that never reported is "never started", whatever Tune's status says."""

    current: "Book | None" = None  # this invocation's book (driver only; callbacks find it in setup())
    started = 0.0  # time.time() at which this invocation's command started: the budget counts from there

    def __init__(self):
        self.trials: list = []  # Tune's trials, as of the experiment's end
        self.outcomes: dict[str, str] = {}  # trial id -> one of OUTCOMES, once ended
        self.errors: dict[str, str] = {}  # trial id -> the last line of its error
        self.reported: set[str] = set()
        self.best: tuple[float, str, dict] | None = None  # val loss, trial id, config

    def result(self, trial, result: dict) -> None:
        self.reported.add(trial.trial_id)
        if self.outcomes.get(trial.trial_id) == "interrupted":  # resumed
            del self.outcomes[trial.trial_id]
        v = result.get(METRIC)
        if isinstance(v, float) and math.isfinite(v) and (self.best is None or v < self.best[0]):
            self.best = (v, trial.trial_id, trial.config)

    def counts(self, trials=()) -> dict:
        c = {o: 0 for o in OUTCOMES}
        for o in self.outcomes.values():
            c[o] += 1
        live = [t for t in trials if t.trial_id not in self.outcomes]
        c["running"] = sum(t.status == "RUNNING" and t.trial_id in self.reported for t in live)
        c["starting"] = sum(t.status == "RUNNING" and t.trial_id not in self.reported for t in live)
        c["never_started"] = sum(t.status in ("TERMINATED", "PENDING") and t.trial_id not in self.reported for t in live)
        c["started"] = sum(c[o] for o in OUTCOMES) + c["running"]
        return c


class MLflowCallback(tune.Callback):
    """Mirror Tune's view of every trial into MLflow (through charsearch.tracking).

    Tune pickles its callbacks with the experiment state and brings them back on restore, so this
    holds only plain settings and opens its MLflow client in setup(). A trial's run is opened at its
    first report: a trial that never trained leaves no run behind.

    A trial's run is marked ended only once Tune's saved experiment state says so too: Tune calls
    get_state() as it writes a snapshot, and on_step_end() comes after that write. Were the driver
    killed in between, the resumed sweep would otherwise restart a trial that MLflow shows as ended.
    Trials still running when the sweep ends (its budget, Ctrl-C) never reach on_trial_complete: they
    are logged in on_experiment_end with their best model so far.

    The writes themselves are made in the background (tracking.Writer), so a driver killed with writes
    still waiting may leave a trial that Tune saved as ended without its end in MLflow: a resumed sweep
    logs such trials from Tune's saved state (their last result and latest checkpoint) at its first step.
    """

    def __init__(self, uri: str, sweep: SweepConfig, parent_run_id: str):
        self.uri, self.sweep, self.parent_run_id = uri, sweep, parent_run_id
        self.tracker: Tracker | None = None
        self.book: Book | None = None
        self.ended: dict[str, str] = {}  # trial id -> outcome, not yet in a saved snapshot
        self.saved: dict[str, str] = {}  # ... in the snapshot being written

    def __getstate__(self):
        return {**self.__dict__, "tracker": None, "book": None, "ended": {}, "saved": {}}

    def setup(self, **info):
        self.started = time.monotonic()
        self.replay = True
        self.book = Book.current
        self.tracker = Tracker(self.uri, self.sweep.name, background=True)
        self.tracker.reopen_sweep(self.parent_run_id)
        for run in self.tracker.child_runs():  # a resumed sweep: what ended before
            trial_id, outcome = run.data.tags[TRIAL_TAG], run.data.tags.get(OUTCOME_TAG)
            if "best_val_loss" in run.data.metrics:
                self.book.reported.add(trial_id)
            if outcome in OUTCOMES and run.info.status != "RUNNING":
                self.book.outcomes[trial_id] = outcome

    def _open(self, trial) -> None:
        params = self.sweep.trial_config(trial.config).to_dict()
        params = {k: v for k, v in params.items() if k not in ("init_from", "checkpoint_dir", "device")}
        params.update({k: v for k, v in trial.config.items() if k not in params})  # e.g. shape, as searched
        self.tracker.trial_started(trial.trial_id, str(trial), params)

    def on_step_begin(self, iteration, trials, **info):
        if self.replay:
            self.replay = False
            self._replay(trials)

    def _replay(self, trials) -> None:
        for trial in trials:
            if (trial.status != "TERMINATED" or trial.trial_id in self.book.outcomes
                    or trial.last_result.get("val_loss") is None):
                continue
            self._open(trial)
            self.book.result(trial, trial.last_result)
            self.tracker.trial_result(trial.trial_id, trial.last_result)
            self._log_end(trial)
            outcome = "finished" if trial.last_result.get("final") else "stopped_early"
            self.book.outcomes[trial.trial_id] = self.saved[trial.trial_id] = outcome  # Tune saved its end

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.book.reported or self.book.outcomes.get(trial.trial_id) == "interrupted":
            self._open(trial)
        self.book.result(trial, result)
        if result.get("iteration") is not None and "node_id" in result:
            self.tracker.trial_tags(trial.trial_id, {"node_id": result["node_id"], "hostname": result["hostname"],
                                                     "node_ip": result.get("node_ip", ""),
                                                     "device": result.get("device", "")})
        self.tracker.trial_result(trial.trial_id, result)

    def _log_end(self, trial, error: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            model = None
            checkpoint = reported_checkpoint(trial.last_result, trial.storage.trial_fs_path,
                                             trial.storage.storage_filesystem, trial.checkpoint)
            if checkpoint is not None and error is None:
                with checkpoint.as_directory() as d:
                    model = Path(tmp) / "model.pt"
                    shutil.copy(Path(d) / "model.pt", model)
            self.tracker.trial_ended(trial.trial_id, _summary(trial.last_result), model, error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.book.reported:
            return
        self._log_end(trial)
        outcome = "finished" if trial.last_result.get("final") else "stopped_early"
        self.book.outcomes[trial.trial_id] = self.ended[trial.trial_id] = outcome

    def on_trial_error(self, iteration, trials, trial, **info):
        error = ""
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text(errors="replace")
        if trial.trial_id not in self.book.reported:
            self._open(trial)
        self._log_end(trial, error or "error")
        self.book.outcomes[trial.trial_id] = self.ended[trial.trial_id] = "failed"
        lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
        self.book.errors[trial.trial_id] = lines[-1][:300] if lines else "error"

    def on_trial_recover(self, iteration, trials, trial, **info):
        # ray.max_failures: Tune reruns the trial from its last checkpoint (on any node) in the same run
        error = ""
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text(errors="replace")
        self.tracker.trial_tags(trial.trial_id, {"charsearch.retries": trial.num_failures,
                                                 "charsearch.retry_error": error[-4000:] or "error"})

    def get_state(self):
        self.saved.update(self.ended)  # these ends are in the snapshot Tune is writing now
        self.ended.clear()
        return None

    def on_step_end(self, iteration, trials, **info):
        self._close(self.saved)

    def on_experiment_end(self, trials, **info):
        self.book.trials = list(trials)
        budget_over = time.time() >= Deadline.ends_at - 2.0
        for trial in trials:
            if trial.trial_id in self.book.reported and trial.trial_id not in self.book.outcomes:
                self._log_end(trial)
                outcome = "cut_by_budget" if budget_over else "interrupted"
                self.book.outcomes[trial.trial_id] = self.ended[trial.trial_id] = outcome
        self._close({**self.saved, **self.ended})  # Tune saved its final state before ending

    def _close(self, ends: dict) -> None:
        for trial_id, outcome in list(ends.items()):
            self.tracker.close_trial(trial_id, outcome)
            self.saved.pop(trial_id, None)
            self.ended.pop(trial_id, None)


def reported_checkpoint(result: dict, trial_path: str, fs, registered):
    """The checkpoint reported with `result`. Tune registers a reported checkpoint in a step after the
    result itself, so a sweep ended between the two (its budget, Ctrl-C) holds the result and, as the
    trial's checkpoint, the one before; the folder the result names is in storage already."""
    name = result.get("checkpoint_dir_name")
    if name:
        path = f"{trial_path}/{name}"
        if fs.get_file_info(f"{path}/model.pt").type == pyarrow.fs.FileType.File:
            return tune.Checkpoint(path=path, filesystem=fs)
    return registered


def _summary(result: dict) -> dict:
    keys = ("best_val_loss", "chars_trained", "epoch", "iteration", "elapsed_s")
    return {k: result[k] for k in keys if k in result}


class ResumeFromExisting(tune.Callback):
    """A resumed trial continues from the newest checkpoint it has in storage. Tune deletes a trial's
    older checkpoints as it registers new ones (num_to_keep) and saves its experiment state only now and
    then, so a driver killed in between leaves a state naming a checkpoint already deleted, and Tune
    would fail that trial ("Could not recover from checkpoint"). Before the first trial starts, each
    such trial is pointed at its newest complete checkpoint folder."""

    def __init__(self):
        self.done = False

    def on_step_begin(self, iteration, trials, **info):
        if self.done:
            return
        self.done = True
        from ray.train._internal.session import _TrainingResult
        gone = lambda c: c.filesystem.get_file_info(c.path).type == pyarrow.fs.FileType.NotFound  # noqa: E731
        for trial in trials:
            cp = trial.checkpoint
            if trial.status == "TERMINATED" or cp is None:
                continue
            # forget the kept folders that are gone: registering a new checkpoint deletes the oldest kept one
            manager = trial.run_metadata.checkpoint_manager
            manager._checkpoint_results = [r for r in manager._checkpoint_results if not gone(r.checkpoint)]
            if not gone(cp):
                continue
            fs, root = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            names = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(root))
                           if i.base_name.startswith("checkpoint_") and all(
                               fs.get_file_info(f"{i.path}/{f}").type == pyarrow.fs.FileType.File
                               for f in ("checkpoint.pt", "model.pt")))
            if not names:
                continue
            path = f"{root}/{names[-1]}"
            manager.register_checkpoint(_TrainingResult(
                checkpoint=tune.Checkpoint(path=path, filesystem=fs),
                metrics={**trial.last_result, "checkpoint_dir_name": names[-1]}))
            trial.storage.current_checkpoint_index = int(names[-1].split("_")[-1]) + 1
            trial.invalidate_json_state()


class StatusLine(tune.Callback):
    """One live line, the clock first: elapsed and left, the trial counts, the best val loss so far, and
    last the best trial's parameters (a line cut at the terminal's width never hides the clock)."""

    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep
        self.stream = self.book = None

    def __getstate__(self):  # pickled with the experiment state (see MLflowCallback)
        return {**self.__dict__, "stream": None, "book": None}

    def setup(self, **info):
        self.book = Book.current
        self.started_wall, self.budget_s = Book.started, self.sweep.sweep_time
        self.stream = sys.stderr
        self.tty = self.stream.isatty()
        self.last_print = 0.0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.print(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        self.print(trials)

    def on_experiment_end(self, trials, **info):
        self.print(trials, force=True)
        if self.tty:
            self.stream.write("\n")

    def line(self, trials) -> str:
        c = self.book.counts(trials)
        parts = [clock_text(time.time() - self.started_wall, self.budget_s),
                 f"trials: {c['running'] + c['starting']} running, {c['finished']} finished, {c['stopped_early']} "
                 f"stopped early, " + (f"{c['cut_by_budget']} cut by the budget, " if c["cut_by_budget"] else "")
                 + f"{c['failed']} failed"]
        if held := backlog():  # the tracking store is away: trials go on, their writes wait
            parts.append(held)
        if self.book.best:
            v, trial_id, config = self.book.best
            parts.append(f"best {v:.4f} (trial {trial_id}: {', '.join(f'{k}={_fmt(x)}' for k, x in config.items())})")
        return " | ".join(parts)

    def print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (1.0 if self.tty else 30.0):
            return
        self.last_print = now
        write_line(self.stream, self.line(trials), self.tty)


def clock_text(elapsed: float, budget_s: float) -> str:
    text = f"{_clock(elapsed)} elapsed"
    if budget_s:
        text += f", {_clock(max(0.0, budget_s - elapsed))} left"
    return text


def write_line(stream, text: str, tty: bool) -> None:
    if tty:
        width = shutil.get_terminal_size((160, 20)).columns - 1
        stream.write("\r" + text[:width].ljust(width))
    else:
        stream.write(text + "\n")
    stream.flush()


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Deadline(Searcher):
    """Wraps the search algorithm: no new trial once too little search time is left for it to report
    once. The time a trial needs to report is `first_report_s` (from the calibration of an auto sweep),
    raised to the longest seen so far in this sweep (suggestion to first result)."""

    ends_at = math.inf  # time.time() at which this invocation's search ends; set by run(), never pickled
    closed = False  # whether it has refused a trial for lack of time

    def __init__(self, searcher: Searcher, first_report_s: float):
        self.searcher, self.first_report_s = searcher, first_report_s
        self.suggested: dict[str, float] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        if time.time() + self.first_report_s > Deadline.ends_at:
            Deadline.closed = True
            return Searcher.FINISHED
        self.suggested[trial_id] = time.time()
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        started = self.suggested.pop(trial_id, None)
        if started is not None:
            self.first_report_s = max(self.first_report_s, time.time() - started)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.suggested.pop(trial_id, None)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def get_state(self) -> dict:
        return {"first_report_s": self.first_report_s}

    def set_state(self, state: dict) -> None:
        self.first_report_s = state["first_report_s"]


# ---------------------------------------------------------------------------------------------
# the sweep


def search_space(sweep: SweepConfig) -> dict:
    make = {"choice": lambda v: tune.choice(v), "int": lambda v: tune.randint(v[0], v[1] + 1),
            "log_int": lambda v: tune.lograndint(v[0], v[1] + 1), "float": lambda v: tune.uniform(v[0], v[1]),
            "log_float": lambda v: tune.loguniform(v[0], v[1])}
    return {name: make[p.kind](p.values) for name, p in sweep.space.items()}


# GPU share per trial for `resources.gpu: auto`, by the work of one training step (characters per
# step x parameters, about the multiply-adds per step). From the packing measured on one H100
# (shared/notes/anchors.md): a 2x128 LSTM at B50 S50 (0.7e9) still gained at 8 per GPU (x6.8), a
# 2x512 LSTM at B64 S100 (27e9) stopped gaining beyond 4 per GPU.
GPU_SHARES = ((8e9, 0.125), (3e10, 0.25), (1.2e11, 0.5))


def step_work(sweep: SweepConfig, params: dict, vocab_size: int) -> float:
    import torch

    from .model import CharRNN
    cfg = sweep.trial_config(params)
    with torch.device("meta"):  # counts parameters without allocating them
        n = CharRNN(vocab_size, cfg.model, cfg.rnn_size, cfg.num_layers, cfg.embed_size, cfg.dropout).num_params()
    return float(cfg.batch_size * cfg.seq_length * n)


def gpu_share(work: float) -> float:
    return next((share for limit, share in GPU_SHARES if work <= limit), 1.0)


def trial_resources(sweep: SweepConfig, cluster_gpus: float, vocab_size: int):
    """CPU/GPU per trial: a dict, or for `gpu: auto` on a cluster with GPUs a function of the trial's
    config (Tune asks it per trial). A sweep that asks for GPUs on a cluster without any runs on CPU
    (and says so) instead of leaving its trials pending for ever."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    if sweep.gpu == "auto":
        if cluster_gpus == 0:
            return {"cpu": sweep.cpu, "gpu": 0.0}, ""
        return (lambda config: PlacementGroupFactory(
            [{"CPU": sweep.cpu, "GPU": gpu_share(step_work(sweep, config, vocab_size))}])), ""
    note = ""
    gpu = float(sweep.gpu)
    if gpu > 0 and cluster_gpus == 0:
        note = (f"resources.gpu is {gpu} but the Ray cluster has no GPU: trials run on CPU "
                f"({sweep.cpu:g} CPU each) within the same budget")
        gpu = 0.0
    return {"cpu": sweep.cpu, "gpu": gpu}, note


@dataclass
class SweepOutcome:
    experiment_dir: str  # a local path or a storage URI
    parent_run_id: str
    counts: dict  # Book.counts(): started, finished, stopped_early, cut_by_budget, interrupted, failed, never_started
    interrupted: bool
    best_val_loss: float | None
    best_trial: str | None
    best_config: dict | None
    wall_s: float
    finish: dict | None = None  # the best trial's training after the search, when the sweep has one
    errors: dict | None = None  # failed trial id -> the last line of its error


class Storage:
    """Where Tune keeps a sweep's experiment state and checkpoints (`ray.storage`), through pyarrow's
    filesystems as Tune itself does. A local folder is made absolute (on a cluster it must be shared
    storage mounted at the same path on every node and the driver); a URI (s3://bucket/prefix, gs://...,
    with pyarrow's query options such as endpoint_override) is resolved once and its filesystem handed
    to Tune, so every node writes to the same object store."""

    def __init__(self, sweep: SweepConfig):
        self.uri = "://" in sweep.storage
        if self.uri:
            try:
                self.fs, self.root = pyarrow.fs.FileSystem.from_uri(sweep.storage)
            except (pyarrow.ArrowException, ValueError) as e:
                raise UsageError(f"{sweep.path}: ray.storage {sweep.storage!r}: {e}") from None
            self.scheme = sweep.storage.split("://", 1)[0]
        else:
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), str(Path(sweep.storage).absolute())
        self.root = self.root.rstrip("/")
        self.ray_fs = self.fs if self.uri else None  # Tune resolves local paths itself

    def experiment_dirs(self, name: str) -> list[str]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.root}/{name}", allow_not_found=True))
        dirs = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory)
        return [d for d in dirs if self.fs.get_file_info(f"{d}/{STATE_FILE}").type == pyarrow.fs.FileType.File]

    def read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def write_json(self, path: str, obj: dict) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0])
        with self.fs.open_output_stream(path) as f:
            f.write(json.dumps(obj).encode())

    def show(self, path: str) -> str:
        return f"{self.scheme}://{path}" if self.uri else path


def init_ray(address: str | None, dashboard: bool, num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=dashboard, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)
    if address:  # an existing cluster: it has its own resources (num_cpus must not be passed)
        ray.init(address=address, **kwargs)
    else:  # "local": a new Ray, even where `ray start` left a cluster running (ray.init() would join it)
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def run(sweep: SweepConfig, resume: bool = False, address: str | None = None, tracking_uri: str | None = None,
        dashboard: bool = False, out=sys.stderr, started: float | None = None, plan_text: str = "") -> SweepOutcome:
    """Run (or resume) a sweep. `started` (time.time()) is when the user's command began: the budget
    counts from there, calibration included."""
    started = started or time.time()
    uri = resolve_uri(tracking_uri, sweep.tracking_uri)
    corpus = load_corpus(sweep.corpus, sweep.min_freq)
    train_ids, val_ids, _ = corpus.split(sweep.train_frac, sweep.val_frac)
    # the largest batch the search may pick must fit the train split
    check_fits(len(train_ids), _largest(sweep, "batch_size"), _largest(sweep, "seq_length"), corpus.path)
    check_val(len(val_ids), sweep.val_frac, corpus.path)

    storage = Storage(sweep)
    previous = None
    if resume:
        dirs = storage.experiment_dirs(sweep.name)
        if not dirs or not tune.Tuner.can_restore(dirs[-1], storage_filesystem=storage.ray_fs):
            raise UsageError(f"{sweep.path or sweep.name}: nothing to resume under {storage.show(storage.root)}/"
                             f"{sweep.name} (run the sweep without --resume first)")
        previous = dirs[-1]

    init_ray(address or sweep.address, dashboard)
    resources, note = trial_resources(sweep, ray.cluster_resources().get("GPU", 0), len(corpus.vocab))
    if note:
        print(f"note: {note}", file=out)

    tracker = Tracker(uri, sweep.name, background=True)  # trials never wait for MLflow
    if previous is not None:
        state = storage.read_json(f"{previous}/{STATE_FILE}")
        tracker.reopen_sweep(state["parent_run_id"])
        exp_dir = previous
    else:
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
                   **({"auto-sized.yaml": f"{as_file}\n{plan_text}\n"} if plan_text else {})},
            tags={"charsearch.sweep_file": sweep.path or "(auto)", "charsearch.ray_experiment": storage.show(exp_dir),
                  "charsearch.ray_address": ray.get_runtime_context().gcs_address})
        tracker.client.update_run(tracker.parent_id, status="RUNNING")
        tracker.share_view(list(sweep.space))
        storage.write_json(f"{exp_dir}/{STATE_FILE}", {"parent_run_id": tracker.parent_id, "tracking_uri": uri,
                                                       "sweep_file": str(Path(sweep.path).absolute()) if sweep.path else ""})

    # the search ends early enough for the best trial to train on for finish_time, within sweep_time
    search_s = 0.0
    if sweep.sweep_time:
        search_s = max(1.0, sweep.sweep_time - sweep.finish_time - (time.time() - started))
    Deadline.ends_at, Deadline.closed = (time.time() + search_s if search_s else math.inf), False

    chars_per_epoch = len(train_ids)
    scale = chars_per_epoch if sweep.time_attr == "chars_trained" else 1
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=sweep.time_attr, max_t=sweep.trial_max_epochs * scale,
                                  grace_period=min(sweep.grace_epochs, sweep.trial_max_epochs) * scale,
                                  reduction_factor=sweep.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    import optuna
    startup = {} if sweep.startup_trials is None else {"n_startup_trials": sweep.startup_trials}
    sampler = (optuna.samplers.TPESampler(seed=sweep.seed, **startup) if sweep.algorithm == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = Deadline(OptunaSearch(sampler=sampler, metric=METRIC, mode="min",
                                     points_to_evaluate=[dict(p) for p in sweep.points_to_evaluate] or None),
                        sweep.first_report_s)

    book = Book.current = Book()
    Book.started = started
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep, corpus=corpus), resources)
    run_config = tune.RunConfig(
        name=exp_dir.rsplit("/", 1)[1], storage_path=exp_dir.rsplit("/", 1)[0], storage_filesystem=storage.ray_fs,
        verbose=0,
        callbacks=[ResumeFromExisting(), MLflowCallback(uri, sweep, tracker.parent_id), StatusLine(sweep)],
        # two: the experiment state saved last may still name the checkpoint before the latest
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
    )
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="min", search_alg=searcher, scheduler=scheduler, num_samples=sweep.num_samples,
        max_concurrent_trials=sweep.max_concurrent or None, time_budget_s=search_s or None,
        reuse_actors=True, trial_dirname_creator=trial_dirname)
    if previous is not None:
        # the callbacks, searcher and scheduler come back from the saved experiment state
        tuner = tune.Tuner.restore(previous, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=storage.ray_fs)
    else:
        tuner = tune.Tuner(trainable, param_space=search_space(sweep), tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    remove_stale_trial_dirs()

    counts = book.counts(book.trials)
    best = book.best
    # ended by Ctrl-C rather than by its budget, its deadline or its sample count: --resume continues it
    ended_early = time.time() < Deadline.ends_at - 2.0 and not Deadline.closed and len(book.trials) < sweep.num_samples
    interrupted = counts["interrupted"] > 0 or ended_early
    finish = None
    if best is not None and sweep.finish_time and not interrupted:
        try:
            finish = finish_best(sweep, grid, tracker, corpus, started, out)
        except KeyboardInterrupt:  # the search's models are all logged already
            print("\nfinishing interrupted: the models of the search stand", file=out)
        if finish:  # trained to the end of the budget: finished, whatever stopped them in the search
            for trial_id in finish["trials"]:
                book.outcomes[trial_id] = "finished"
            counts = book.counts(book.trials)
            winner = finish["best"]
            if winner[0] < best[0]:
                best = (winner[0], winner[1], next(r.config for r in grid if r.metrics.get("trial_id") == winner[1]))
    wall = time.time() - started
    unwritten = tracker.finish_sweep(
        "KILLED" if interrupted else "FINISHED",
        metrics={"best_val_loss": best[0] if best else math.nan, "wall_s": wall,
                 **{f"trials_{k}": v for k, v in counts.items()}},
        tags={"best_config": json.dumps(best[2]) if best else "", "best_trial": best[1] if best else "",
              "interrupted": interrupted, COUNTS_TAG: json.dumps(counts)})
    if unwritten:  # the tracking store stayed away past the sweep's end
        print(f"note: {unwritten}", file=out)
    remove_stale_trial_dirs()  # again: trial processes ended with the search may have exited only now
    return SweepOutcome(storage.show(exp_dir), tracker.parent_id, counts, interrupted,
                        best[0] if best else None, best[1] if best else None, best[2] if best else None, wall, finish,
                        dict(book.errors))


# ---------------------------------------------------------------------------------------------
# after the search: the best trial trains on


def _finish_task(checkpoint: bytes, model: bytes, cfg_dict: dict, corpus: Corpus, summary: dict, threads: int,
                 ends_at: float, evaluations):
    """Runs in a Ray task: a trial's run resumed from its last checkpoint, its learning rate decaying
    linearly to 0 over the time left until `ends_at` (time.time()), however long the task waited to start.
    Each evaluation goes to the driver as it is made (`evaluations`, a ray.util.queue.Queue)."""
    import torch

    from .config import TrainConfig
    from .train import train
    torch.set_num_threads(threads)
    cfg_dict = {**cfg_dict, "max_time": max(1.0, ends_at - time.time())}
    work = Path(tempfile.mkdtemp(prefix=f"{TRIAL_DIR_PREFIX}{os.getpid()}-"))
    try:
        (work / "resume.pt").write_bytes(checkpoint)
        (work / "model.pt").write_bytes(model)
        cfg = TrainConfig.from_dict(cfg_dict)
        cfg.init_from, cfg.checkpoint_dir = str(work / "resume.pt"), str(work / "cv")
        improved = []

        def on_eval(metrics, path, is_best):
            if is_best:
                artifact.export(path, work / "model.pt", summary)
                improved.append(metrics["val_loss"])
            evaluations.put((summary["trial_id"], metrics))
        result = train(cfg, corpus, on_eval=on_eval, progress=False, summary_extra=summary)
        return {"last": result.history[-1] if result.history else {}, "best_val_loss": result.best_val_loss,
                "model": (work / "model.pt").read_bytes() if improved else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finish_best(sweep: SweepConfig, grid, tracker: Tracker, corpus: Corpus, started: float, out) -> dict | None:
    """The best trial continues from its last checkpoint for the budget's remaining time on the whole
    machine (all CPU threads, or one GPU), then logs into its own MLflow run: metrics go on along the
    same characters-trained axis, and its model is replaced only by a better one.

    One finisher on all threads rather than one per trial slot: in a single hand-run pilot (2 cores,
    tiny-shakespeare, 10 minutes, the same search) the best two side by side on one thread each did
    worse than the best one on both."""
    ranked = sorted((r for r in grid if r.checkpoint is not None and r.metrics.get(METRIC) is not None
                     and math.isfinite(r.metrics[METRIC])), key=lambda r: r.metrics[METRIC])
    left = sweep.sweep_time - (time.time() - started) - FINISH_MARGIN_S
    if not ranked or left < 5:
        return None
    gpu = sweep.gpu not in (0, 0.0) and ray.cluster_resources().get("GPU", 0) > 0
    chosen = ranked[:FINISHERS]
    threads = 1 if gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // len(chosen))
    tasks = {}
    # the queue's actor must start while the finishers hold every CPU: it asks for none
    evaluations = ray.util.queue.Queue(actor_options={"num_cpus": 0})
    tracker.reopen_trials()
    for r in chosen:
        trial_id = r.metrics["trial_id"]
        with reported_checkpoint(r.metrics, r.path, r.filesystem, r.checkpoint).as_directory() as d:
            checkpoint, model = (Path(d) / "checkpoint.pt").read_bytes(), (Path(d) / "model.pt").read_bytes()
        cfg = sweep.trial_config(r.config)
        cfg.lr_schedule, cfg.decay_frac, cfg.max_time, cfg.patience = "wsd", 1.0, left, 0
        cfg.max_epochs = max(cfg.max_epochs, 1e4)  # the clock ends it
        # about a dozen evaluations: enough to keep the best, few enough to leave the time to training
        chars_per_iter = cfg.batch_size * cfg.seq_length
        rate = r.metrics.get("chars_per_sec") or 1.0
        cfg.eval_every = max(1, round(rate * left / 12 / chars_per_iter))
        cfg.device = "cuda" if gpu else "cpu"
        options = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": threads}
        summary = {"trial_id": trial_id, "trial_name": f"trial_{trial_id}", "sweep": sweep.name}
        tasks[trial_id] = ray.remote(_finish_task).options(**options).remote(
            checkpoint, model, cfg.to_dict(), corpus, summary, threads, time.time() + left, evaluations)
    tty = out.isatty()
    t0 = time.time()
    names = ", ".join(tasks)
    pending, latest = list(tasks.values()), ""

    def log_evaluations():
        nonlocal latest
        for trial_id, m in evaluations.get_nowait_batch(evaluations.qsize()):
            tracker.trial_result(trial_id, m)  # logged as it comes: MLflow shows the finish as it goes
            latest = f", val {m['val_loss']:.4f}"
    last_print = 0.0
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        log_evaluations()
        if time.time() - last_print < (1.0 if tty else 30.0) and pending:
            continue
        last_print = time.time()
        write_line(out, f"{clock_text(time.time() - started, sweep.sweep_time)} | finishing: trial(s) {names} train on "
                        f"({threads} CPU thread(s) each), learning rate to 0 ({_clock(time.time() - t0)} of "
                        f"{_clock(left)}{latest})", tty)
    if tty:
        out.write("\n")
    log_evaluations()
    ray.kill(evaluations.actor)
    finished, best = [], None
    for trial_id, task in tasks.items():
        try:
            res = ray.get(task)
        except ray.exceptions.RayError as e:
            print(f"note: trial {trial_id} could not train on ({str(e).splitlines()[0][:200]}); its model from the "
                  f"search stands", file=out)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model_file = None
            if res["model"] is not None:
                model_file = Path(tmp) / "model.pt"
                model_file.write_bytes(res["model"])
            tracker.trial_ended(trial_id, {**_summary(res["last"]), "best_val_loss": res["best_val_loss"]}, model_file)
        tracker.trial_tags(trial_id, {"charsearch.finish_s": round(left), OUTCOME_TAG: "finished"})
        finished.append(trial_id)
        if best is None or res["best_val_loss"] < best[0]:
            best = (res["best_val_loss"], trial_id)
    if best is None:
        return None
    return {"trials": finished, "best": best, "seconds": left}


FINISHERS = 1
FINISH_MARGIN_S = 12.0  # logging the finished trial, ending Ray, writing the summary


def _largest(sweep: SweepConfig, key: str) -> int:
    p = sweep.space.get(key)
    return max(p.values) if p is not None else getattr(sweep.trial_config({}), key)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
