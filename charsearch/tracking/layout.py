"""How charsearch lays its records out in MLflow: the names the sweep writes and its readers look for,
and the one table of trial outcomes that the live line, the sweep's summary, `best`, `report` and the
MLflow runs all read.

    experiment   one per sweep (its name)
    parent run   one per invocation of the sweep: KIND_TAG "sweep", its params, COUNTS_TAG at the end,
                 RAY_EXPERIMENT_TAG naming the Ray experiment folder it records
    trial run    one per trial, nested under the parent: KIND_TAG "trial", TRIAL_TAG, the trial's params,
                 STEP_METRICS at every evaluation (step = characters trained), best_val_loss, OUTCOME_TAG,
                 SHOWN_LOSS_TAG, and its best model file at MODEL_ARTIFACT
"""

from __future__ import annotations

from dataclasses import dataclass

KIND_TAG = "charsearch.kind"  # "sweep" (parent) or "trial" (child)
TRIAL_TAG = "ray.trial_id"
SWEEP_TAG = "charsearch.sweep"
RAY_EXPERIMENT_TAG = "charsearch.ray_experiment"  # on the parent run: the Ray experiment folder it records
OUTCOME_TAG = "charsearch.outcome"  # on a trial run: the name of its Outcome
# on a trial run: its best_val_loss rounded to 4 decimals, for the runs table (MLflow prints metrics unrounded)
SHOWN_LOSS_TAG = "charsearch.best_val_loss"
COUNTS_TAG = "charsearch.counts"  # on the parent run: the sweep's trial counts as JSON
SHARED_VIEW = "charsearch-latest-sweep"  # the key of the runs-table view each sweep shares
STEP_METRICS = ("train_loss", "val_loss", "val_bpc", "chars_per_sec", "epoch", "learning_rate", "ss_prob",
                "threads")  # threads: the torch threads a CPU trial trained on last (core/threads.py)
METRIC = "best_val_loss"  # what selection ranks by, and Optuna and ASHA minimise: the best fair val loss so far
MODEL_ARTIFACT = "model/model.pt"


@dataclass(frozen=True)
class Outcome:
    name: str  # the value of OUTCOME_TAG
    words: str  # as counts are written
    optuna_state: str  # the optuna.trial.TrialState a rebuilt study gives the trial
    run_status: str  # the MLflow status its run ends with
    always_shown: bool  # counted in every summary line, even at 0


OUTCOMES = {o.name: o for o in (
    Outcome("finished", "finished", "COMPLETE", "FINISHED", True),
    Outcome("stopped_early", "stopped early by ASHA", "PRUNED", "FINISHED", False),
    # ended with a value before its own end, as a pruned trial does
    Outcome("cut_by_budget", "cut by the budget", "PRUNED", "FINISHED", False),
    # a trial whose sweep died: Optuna itself marks such trials FAIL (heartbeat), never COMPLETE
    Outcome("interrupted", "interrupted", "FAIL", "KILLED", False),
    Outcome("failed", "failed", "FAIL", "FAILED", True),
)}


def tally(outcomes) -> dict:
    """Counts of trials by outcome name (an unknown or missing outcome counts as running)."""
    c = {name: 0 for name in OUTCOMES} | {"running": 0}
    for name in outcomes:
        c[name if name in OUTCOMES else "running"] += 1
    c["started"] = sum(c.values())
    return c


def describe_counts(c: dict) -> str:
    """'5 trials (2 finished, 3 stopped early by ASHA, 0 failed); 1 never started'"""
    started = c.get("started", 0)
    ended = ", ".join(f"{c.get(o.name, 0)} {o.words}" for o in OUTCOMES.values() if c.get(o.name) or o.always_shown)
    running = f", {c['running']} running" if c.get("running") else ""
    never = f"; {c['never_started']} never started" if c.get("never_started") else ""
    return f"{started} trial{'s' * (started != 1)} ({ended}{running}){never}"
