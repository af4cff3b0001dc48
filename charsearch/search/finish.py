"""After the search: the best trial trains on for the rest of the budget (the first trial from its start,
when none reported in the search).

It continues from its last checkpoint on the whole machine (all CPU threads, or one GPU), its learning
rate decaying linearly to 0 by the end of the budget, then logs into its own MLflow run: metrics go on
along the same characters-trained axis, its model is replaced only by a better one, and its run's end
time is the end of the finish.

One finisher on all threads rather than one per trial slot: in a single hand-run pilot (2 cores,
tiny-shakespeare, 10 minutes, the same search) the best two side by side on one thread each did worse
than the best one on both.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.util.queue

from charsearch.core import artifact
from charsearch.core.data import Corpus
from charsearch.search.ledger import METRIC, SweepState
from charsearch.search.status import clock_text, write_line
from charsearch.search.sweepfile import SweepConfig
from charsearch.search.tracking_callback import reported_checkpoint, summary_of, trial_params
from charsearch.search.trial import END_MARGIN_S, set_report_interval, trial_dir, worker_device
from charsearch.tracking.tracker import Tracker

FINISHERS = 1
EVALUATIONS = 12  # enough to keep the best, few enough to leave the time to training
NEVER = 1 << 40  # an evaluation interval in iterations that no finisher reaches: it evaluates by the clock


@dataclass
class Finish:
    trials: list  # trial ids that trained on
    best: tuple  # (val loss, trial id)
    seconds: float
    config: dict  # the best finisher's searched values
    from_start: bool = False  # no trial had reported in the search: the first one trained from the start


@dataclass
class Start:
    """What a finisher starts from: a trial's last checkpoint, or nothing (its first step)."""
    trial_id: str
    config: dict
    checkpoint: bytes | None = None
    model: bytes | None = None


def finish_best(sweep: SweepConfig, grid, tracker: Tracker, corpus: Corpus, state: SweepState, out) -> Finish | None:
    """Train the best trial(s) on to the end of the budget; None when there is no time or no trial.

    When no trial reported in the search (a loaded machine can take longer to start one than the
    search had), the sweep's first trial (its prior, or its warm start's best) trains from the start:
    a sweep gives a model whenever the budget lets one train at all."""
    ranked = sorted((r for r in grid if r.checkpoint is not None and isinstance(r.metrics.get(METRIC), float)
                     and math.isfinite(r.metrics[METRIC])), key=lambda r: r.metrics[METRIC])
    left = sweep.sweep_time - (time.time() - state.started) - END_MARGIN_S
    first = next((t for t in state.ledger.trials if t.trial_id not in state.ledger.errors), None)
    if left < 5 or not (ranked or first):
        return None
    tracker.reopen_trials()
    chosen = [from_checkpoint(r) for r in ranked[:FINISHERS]] if ranked else [from_start(sweep, first, tracker)]
    gpu = sweep.gpu not in (0, 0.0) and ray.cluster_resources().get("GPU", 0) > 0
    threads = 1 if gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // len(chosen))
    # the queue's actor must start while the finishers hold every CPU: it asks for none
    evaluations = ray.util.queue.Queue(actor_options={"num_cpus": 0})
    tasks = {s.trial_id: start(sweep, s, corpus, gpu, threads, time.time() + left, evaluations) for s in chosen}
    where = "a GPU" if gpu else f"{threads} CPU thread{'s' * (threads != 1)}"
    follow(tasks, evaluations, tracker, state, where + (" each" if len(tasks) > 1 else ""), out)
    ray.kill(evaluations.actor)
    return collect(tasks, {s.trial_id: s.config for s in chosen}, tracker, state, left, not ranked, out)


def from_checkpoint(result) -> Start:
    checkpoint = reported_checkpoint(result.metrics, result.filesystem, result.path, result.checkpoint)
    with checkpoint.as_directory() as d:
        payload, model = (Path(d) / "checkpoint.pt").read_bytes(), (Path(d) / "model.pt").read_bytes()
    return Start(result.metrics["trial_id"], result.config, payload, model)


def from_start(sweep: SweepConfig, trial, tracker: Tracker) -> Start:
    """A trial that never reported: its run opens now, as a trial's does at its first report."""
    tracker.trial_started(trial.trial_id, str(trial), trial_params(sweep, trial.config))
    return Start(trial.trial_id, trial.config)


def start(sweep: SweepConfig, begin: Start, corpus: Corpus, gpu: bool, threads: int, ends_at: float, evaluations):
    """One finisher as a Ray task: the trial's config, a `wsd` schedule decaying over the whole finish."""
    left = ends_at - time.time()
    cfg = sweep.trial_config(begin.config)
    cfg.lr_schedule, cfg.decay_frac, cfg.max_time, cfg.patience = "wsd", 1.0, left, 0
    cfg.max_epochs = max(cfg.max_epochs, 1e4)  # the clock ends it
    # evaluations by the clock, not every so many characters at its trial's rate: on the whole machine a
    # finisher often trains several times faster than its trial did beside others, and would evaluate as many
    # times more often, at its training's cost; the deadline's own evaluation comes last
    set_report_interval(cfg, NEVER)
    options = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": threads}
    summary = {"trial_id": begin.trial_id, "trial_name": f"trial_{begin.trial_id}", "sweep": sweep.name}
    return ray.remote(train_on).options(**options).remote(begin.checkpoint, begin.model, cfg.to_dict(), corpus,
                                                         summary, threads, ends_at, evaluations, left / EVALUATIONS)


def train_on(checkpoint: bytes | None, model: bytes | None, cfg_dict: dict, corpus: Corpus, summary: dict, threads: int,
             ends_at: float, evaluations, eval_every_s: float):
    """Runs in a Ray task: a trial's run resumed from its last checkpoint (or from its start), its learning
    rate decaying linearly to 0 over the time left until `ends_at` (time.time()), however long the task
    waited to start, evaluated every `eval_every_s` seconds of training.
    Each evaluation goes to the driver as it is made (`evaluations`, a ray.util.queue.Queue)."""
    from charsearch.core.config import TrainConfig
    from charsearch.core.train import train
    cfg_dict = {**cfg_dict, "device": worker_device(bool(ray.get_gpu_ids()), threads)}
    work = trial_dir()
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        cfg.checkpoint_dir = str(work / "cv")
        if checkpoint is not None:
            (work / "resume.pt").write_bytes(checkpoint)
            (work / "model.pt").write_bytes(model)
            cfg.init_from = str(work / "resume.pt")
        improved = []

        def on_eval(metrics, path, is_best):
            if is_best:
                artifact.export(path, work / "model.pt", summary)
                improved.append(metrics["val_loss"])
            evaluations.put((summary["trial_id"], metrics))
        result = train(cfg, corpus, on_eval=on_eval, progress=False, summary_extra=summary, deadline=ends_at,
                       eval_every_s=eval_every_s)
        return {"last": result.history[-1] if result.history else {}, "best_val_loss": result.best_val_loss,
                "model": (work / "model.pt").read_bytes() if improved else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def follow(tasks: dict, evaluations, tracker: Tracker, state: SweepState, where: str, out) -> None:
    """Wait for the finishers, logging each evaluation to MLflow as it comes and keeping the live line (on
    the sweep's one clock: elapsed and left of the whole budget)."""
    last_print, latest = 0.0, ""
    pending = list(tasks.values())
    names = f"trial{'s' * (len(tasks) != 1)} {', '.join(tasks)}"
    while True:
        if pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        for trial_id, m in evaluations.get_nowait_batch(evaluations.qsize()):
            tracker.trial_result(trial_id, m)  # MLflow shows the finish as it goes
            latest = f", val {m['val_loss']:.4f}"
        if not pending:
            break
        if time.time() - last_print >= (1.0 if out.isatty() else 30.0):
            last_print = time.time()
            write_line(out, f"{clock_text(time.time() - state.started, state.budget_s)} | finishing: {names} "
                            f"{'trains' if len(tasks) == 1 else 'train'} on {where}, learning rate to 0 by the end of the budget{latest}")
    if out.isatty():
        out.write("\n")


def collect(tasks: dict, configs: dict, tracker: Tracker, state: SweepState, left: float, from_start: bool,
            out) -> Finish | None:
    """Each finisher's result into its MLflow run (a better model replaces the search's); its run's end
    is now."""
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
            tracker.trial_ended(trial_id, {**summary_of(res["last"]), "best_val_loss": res["best_val_loss"]},
                                model_file)
        tracker.trial_tags(trial_id, {"charsearch.finish_s": round(left)})
        tracker.close_trial(trial_id, state.ledger.trained_on(trial_id))
        finished.append(trial_id)
        if math.isfinite(res["best_val_loss"]) and (best is None or res["best_val_loss"] < best[0]):
            best = (res["best_val_loss"], trial_id)
    return Finish(finished, best, left, configs[best[1]], from_start) if best is not None else None

