"""One trial, as it runs in a Ray worker: the trainer with a reporting callback.

The trainer reports after each evaluation; each reported checkpoint folder holds the latest training
state (checkpoint.pt, for resuming the trial) and the best model so far as a portable model file
(model.pt, logged to MLflow when the trial ends). Tune copies the folder into the experiment's storage
before tune.report() returns.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from charsearch.core import artifact
from charsearch.core.config import TrainConfig, label_of
from charsearch.core.data import Corpus
from charsearch.search.sweepfile import SweepConfig

TRIAL_DIR_PREFIX = "charsearch-trial-"
END_MARGIN_S = 6.0  # after a run that ends with the budget: its last report, its model logged, Ray ended, the summary (~3 s on 2 cores)
LATE = 2.0  # a trial reports at the latest after this many times the seconds its report interval takes at calibration's rate


def worker_device(gpu: bool, threads: int) -> str:
    """Set up a trial's process (a search trial's or a finisher's): its torch threads, and the device it trains
    on, the GPU Ray gave it where torch sees one, else the CPU."""
    import torch
    torch.set_num_threads(max(1, threads))
    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def run_trial(config: dict, sweep: SweepConfig, corpus: Corpus, ends_at: float = math.inf,
              one_thread_rates: dict | None = None, whole_rates: dict | None = None) -> None:
    """A trial of `sweep`. One with a time limit (trial_max_time) ends its run, its last evaluation included,
    by the search's end (`ends_at`, time.time()) as well: a schedule decays by then instead of being cut.
    `one_thread_rates` (shape -> chars/s on one thread, an auto sweep's calibration) let a CPU trial with
    several threads drop to one where other work makes them slower (core/threads.py), and keep its reports
    on the plan's clock where the machine gives it far less (late_report_s); `whole_rates` (shape -> chars/s
    alone on every thread, measured moments before by an auto sweep without a search) answer its first question
    of threads without timing them again."""
    from charsearch.core.train import train
    ctx = tune.get_context()
    resources = ctx.get_trial_resources().required_resources
    cfg = sweep.trial_config(config)
    cfg.device = worker_device(resources.get("GPU", 0) > 0, int(resources.get("CPU", 1)))
    train_ids, _, _ = corpus.split(cfg.train_frac, cfg.val_frac)
    set_report_interval(cfg, report_iterations(sweep.report_every_epochs * len(train_ids), cfg))
    eval_every_s = late_report_s(cfg, (one_thread_rates or {}).get(label_of(cfg)))

    work = trial_dir()
    cfg.checkpoint_dir = str(work / "cv")
    best_model = work / "model.pt"
    summary = {"trial_id": ctx.get_trial_id(), "trial_name": ctx.get_trial_name(), "sweep": sweep.name}
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": os.uname().nodename,
            "device": device_name(cfg.device),
            "gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "gpu_share": float(resources.get("GPU", 0))}
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
            # when the scheduler stops this trial, report() ends the thread (SystemExit): cleanup runs below
            try:
                tune.report({**metrics, "is_best": is_best, **node}, checkpoint=tune.Checkpoint.from_directory(report))
            finally:
                shutil.rmtree(report, ignore_errors=True)

        deadline = None
        if cfg.max_time > 0 and math.isfinite(ends_at):
            deadline = min(ends_at - END_MARGIN_S, time.time() + cfg.max_time)
        train(cfg, corpus, on_eval=on_eval, progress=False, summary_extra=summary, deadline=deadline,
              eval_every_s=eval_every_s, thread_rates=((one_thread_rates or {}).get(label_of(cfg)),
                                                       (whole_rates or {}).get(label_of(cfg))))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def late_report_s(cfg: TrainConfig, calibrated_rate: float | None) -> float | None:
    """Seconds after which a trial reports even before its report interval's characters are trained: LATE
    times what the interval takes at the rate calibration measured for its shape (None without one). On a
    machine that other work shares, a trial at a tenth of that rate would otherwise report ten times later
    than planned: past rungs the plan timed, past the search's end (the finish then trains it from its start),
    with the live line silent meanwhile. Extra reports between rungs change nothing in ASHA's decisions,
    which are taken in characters."""
    if not calibrated_rate or calibrated_rate <= 0:
        return None
    return LATE * cfg.eval_every * cfg.batch_size * cfg.seq_length / calibrated_rate


def report_iterations(chars: float, cfg: TrainConfig) -> int:
    """The iterations between reports that train more than `chars` each: ASHA's rungs are whole numbers of
    reports (autosize.plan) and it reads a rung at the first report at or past it, so a report that fell a
    hair short of `chars` would have each rung read a report late."""
    return int(chars // (cfg.batch_size * cfg.seq_length)) + 1


def set_report_interval(cfg: TrainConfig, iterations: float) -> None:
    """Evaluate (and report) every `iterations` iterations, at least every one: how a sweep's trials and
    its finish set their evaluations."""
    cfg.eval_every = max(1, round(iterations))
    cfg.print_every = min(cfg.print_every, cfg.eval_every)


def trial_dir() -> Path:
    """A private folder for one trial's files, named after the process that owns it."""
    remove_stale_trial_dirs()
    return Path(tempfile.mkdtemp(prefix=f"{TRIAL_DIR_PREFIX}{os.getpid()}-"))


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

