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

import pyarrow  # noqa: E402
import pyarrow.fs  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from . import artifact  # noqa: E402
from .config import SweepConfig  # noqa: E402
from .data import Corpus, check_fits, check_val, load_corpus  # noqa: E402
from .errors import UsageError  # noqa: E402
from .tracking import Tracker, resolve_uri  # noqa: E402

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

    work = Path(tempfile.mkdtemp(prefix="charsearch-trial-"))
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


# ---------------------------------------------------------------------------------------------
# the driver's callbacks


class MLflowCallback(tune.Callback):
    """Mirror Tune's view of every trial into MLflow (through charsearch.tracking).

    Tune pickles its callbacks with the experiment state and brings them back on restore, so this
    holds only plain settings and opens its MLflow client in setup().

    A trial's run is marked ended only once Tune's saved experiment state says so too: Tune calls
    get_state() as it writes a snapshot, and on_step_end() comes after that write. Were the driver
    killed in between, the resumed sweep would otherwise restart a trial that MLflow shows as ended.
    """

    def __init__(self, uri: str, sweep: SweepConfig, parent_run_id: str):
        self.uri, self.sweep, self.parent_run_id = uri, sweep, parent_run_id
        self.tracker: Tracker | None = None
        self.ended: dict[str, str] = {}  # trial id -> outcome, not yet in a saved snapshot
        self.saved: dict[str, str] = {}  # ... in the snapshot being written

    def __getstate__(self):
        return {**self.__dict__, "tracker": None, "ended": {}, "saved": {}}

    def setup(self, **info):
        self.tracker = Tracker(self.uri, self.sweep.name)
        self.tracker.reopen_sweep(self.parent_run_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        params = self.sweep.trial_config(trial.config).to_dict()
        params = {k: v for k, v in params.items() if k not in ("init_from", "checkpoint_dir", "device")}
        self.tracker.trial_started(trial.trial_id, str(trial), params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("iteration") is not None and "node_id" in result:
            self.tracker.trial_tags(trial.trial_id, {"node_id": result["node_id"], "hostname": result["hostname"],
                                                     "node_ip": result.get("node_ip", ""),
                                                     "device": result.get("device", "")})
        self.tracker.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with tempfile.TemporaryDirectory() as tmp:
            model = None
            if trial.checkpoint is not None:
                with trial.checkpoint.as_directory() as d:
                    model = Path(tmp) / "model.pt"
                    shutil.copy(Path(d) / "model.pt", model)
            self.tracker.trial_ended(trial.trial_id, _summary(trial.last_result), model)
        self.ended[trial.trial_id] = "finished" if trial.last_result.get("final") else "stopped_early"

    def on_trial_error(self, iteration, trials, trial, **info):
        error = ""
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text(errors="replace")
        self.tracker.trial_ended(trial.trial_id, _summary(trial.last_result), None, error or "error")
        self.ended[trial.trial_id] = "failed"

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
        self._close({**self.saved, **self.ended})  # Tune saved its final state before ending

    def _close(self, ends: dict) -> None:
        for trial_id, outcome in list(ends.items()):
            self.tracker.close_trial(trial_id, outcome)
            self.saved.pop(trial_id, None)
            self.ended.pop(trial_id, None)


def _summary(result: dict) -> dict:
    keys = ("best_val_loss", "chars_trained", "epoch", "iteration", "elapsed_s")
    return {k: result[k] for k in keys if k in result}


class StatusLine(tune.Callback):
    """One live line: trials running / done / stopped early / failed, the best so far, the budget."""

    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep
        self.stream = None
        self.stopped_early: set[str] = set()
        self.best: tuple[float, dict] | None = None

    def __getstate__(self):  # pickled with the experiment state (see MLflowCallback)
        return {**self.__dict__, "stream": None}

    def setup(self, **info):
        self.stream = sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_print = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(METRIC)
        if isinstance(v, float) and math.isfinite(v) and (self.best is None or v < self.best[0]):
            self.best = (v, trial.config)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not trial.last_result.get("final"):
            self.stopped_early.add(trial.trial_id)
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
        status = [t.status for t in trials]
        ended = [t for t in trials if t.status == "TERMINATED"]
        early = sum(t.trial_id in self.stopped_early for t in ended)
        elapsed = time.monotonic() - self.start
        parts = [f"trials: {status.count('RUNNING')} running, {len(ended) - early} done, {early} stopped early, "
                 f"{status.count('ERROR')} failed, {self.sweep.num_samples - len(ended) - status.count('ERROR') - status.count('RUNNING')} to go"]
        if self.best:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best[1].items())
            parts.append(f"best {self.best[0]:.4f} ({params})")
        clock = f"{_clock(elapsed)} elapsed"
        if self.sweep.sweep_time:
            clock += f", {_clock(max(0.0, self.sweep.sweep_time - elapsed))} left"
        parts.append(clock)
        return " | ".join(parts)

    def print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (1.0 if self.tty else 30.0):
            return
        self.last_print = now
        text = self.line(trials)
        if self.tty:
            width = shutil.get_terminal_size((160, 20)).columns - 1
            self.stream.write("\r" + text[:width].ljust(width))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


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
    finished: int
    stopped_early: int
    failed: int
    interrupted: bool
    best_val_loss: float | None
    best_config: dict | None
    wall_s: float


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
        dashboard: bool = False, out=sys.stderr) -> SweepOutcome:
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
            raise UsageError(f"{sweep.path}: nothing to resume under {storage.show(storage.root)}/{sweep.name} "
                             f"(run the sweep without --resume first)")
        previous = dirs[-1]

    init_ray(address or sweep.address, dashboard)
    resources, note = trial_resources(sweep, ray.cluster_resources().get("GPU", 0), len(corpus.vocab))
    if note:
        print(f"note: {note}", file=out)

    tracker = Tracker(uri, sweep.name)
    if previous is not None:
        state = storage.read_json(f"{previous}/{STATE_FILE}")
        tracker.reopen_sweep(state["parent_run_id"])
        exp_dir = previous
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        exp_dir = f"{storage.root}/{sweep.name}/{stamp}"
        tracker.start_sweep(
            run_name=f"{sweep.name}-{stamp}",
            params={"num_samples": sweep.num_samples, "algorithm": sweep.algorithm, "seed": sweep.seed,
                    "scheduler": sweep.scheduler, "time_attr": sweep.time_attr, "sweep_time": sweep.sweep_time,
                    "trial_max_epochs": sweep.trial_max_epochs, "trial_max_time": sweep.trial_max_time,
                    "corpus": str(corpus.path), "corpus_sha256": corpus.sha256,
                    "resources": json.dumps(resources) if isinstance(resources, dict) else "gpu: auto (by model size)"},
            files={"sweep.yaml": Path(sweep.path).read_text(encoding="utf-8"),
                   "resolved.yaml": yaml.safe_dump(sweep.to_dict(), sort_keys=False)},
            tags={"charsearch.sweep_file": sweep.path, "charsearch.ray_experiment": storage.show(exp_dir),
                  "charsearch.ray_address": ray.get_runtime_context().gcs_address})
        tracker.client.update_run(tracker.parent_id, status="RUNNING")
        storage.write_json(f"{exp_dir}/{STATE_FILE}", {"parent_run_id": tracker.parent_id, "tracking_uri": uri,
                                                       "sweep_file": str(Path(sweep.path).absolute())})

    chars_per_epoch = len(train_ids)
    scale = chars_per_epoch if sweep.time_attr == "chars_trained" else 1
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=sweep.time_attr, max_t=sweep.trial_max_epochs * scale,
                                  grace_period=min(sweep.grace_epochs, sweep.trial_max_epochs) * scale,
                                  reduction_factor=sweep.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    import optuna
    sampler = (optuna.samplers.TPESampler(seed=sweep.seed) if sweep.algorithm == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(sampler=sampler, metric=METRIC, mode="min")

    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep, corpus=corpus), resources)
    run_config = tune.RunConfig(
        name=exp_dir.rsplit("/", 1)[1], storage_path=exp_dir.rsplit("/", 1)[0], storage_filesystem=storage.ray_fs,
        verbose=0,
        callbacks=[MLflowCallback(uri, sweep, tracker.parent_id), StatusLine(sweep)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
    )
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="min", search_alg=searcher, scheduler=scheduler, num_samples=sweep.num_samples,
        max_concurrent_trials=sweep.max_concurrent or None, time_budget_s=sweep.sweep_time or None,
        reuse_actors=True, trial_dirname_creator=trial_dirname)
    started = time.monotonic()
    if previous is not None:
        # the callbacks, searcher and scheduler come back from the saved experiment state
        tuner = tune.Tuner.restore(previous, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=storage.ray_fs)
    else:
        tuner = tune.Tuner(trainable, param_space=search_space(sweep), tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    wall = time.monotonic() - started

    finished = stopped = failed = 0
    best: tuple[float, dict] | None = None
    for result in grid:
        m = result.metrics or {}
        if result.error is not None:
            failed += 1
        elif m.get("final"):
            finished += 1
        elif m:
            stopped += 1
        v = m.get(METRIC)
        if isinstance(v, float) and math.isfinite(v) and (best is None or v < best[0]):
            best = (v, result.config)
    ended = finished + stopped + failed
    out_of_time = bool(sweep.sweep_time) and wall >= sweep.sweep_time * 0.98
    interrupted = ended < sweep.num_samples and not out_of_time
    tracker.finish_sweep("KILLED" if interrupted else "FINISHED",
                         metrics={"best_val_loss": best[0] if best else math.nan, "trials_finished": finished,
                                  "trials_stopped_early": stopped, "trials_failed": failed, "wall_s": wall},
                         tags={"best_config": json.dumps(best[1]) if best else "", "interrupted": interrupted})
    return SweepOutcome(storage.show(exp_dir), tracker.parent_id, finished, stopped, failed, interrupted,
                        best[0] if best else None, best[1] if best else None, wall)


def _largest(sweep: SweepConfig, key: str) -> int:
    p = sweep.space.get(key)
    return max(p.values) if p is not None else getattr(sweep.trial_config({}), key)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
