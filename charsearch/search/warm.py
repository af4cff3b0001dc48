"""A warm start: a new sweep of a corpus begins from what the last finished sweep of the same experiment
(same name, same corpus by content, the same budget) found in the same tracking store, and from the
sweeps that one started from in turn.

Their best configuration is the first trial (the sweep's own first points follow, less those they ran
already), and each of their trials with a value, the same fixed options and parameters inside this
sweep's space goes into the Optuna study as a finished trial (Optuna's `add_trial`, through
OptunaSearch's `add_evaluated_point`): TPE models them and counts them toward its startup trials. A
trial's value is what its sweep ranked it by, its best fair val loss at its last rung (the finished
trial's after the finish): a number of the kind the new sweep's trials report where the budget and
the fixed options are the same and the rungs close. An auto sweep derives its rungs, its trials' epoch
cap and its val sample from the rates it measures, which move a little from run to run, so those may
differ by PLANNED_TOLERANCE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from charsearch.core.config import NOT_HYPERPARAMETERS
from charsearch.core.errors import excerpt
from charsearch.search.sweepfile import SearchParam, SweepConfig, parse_shape
from charsearch.tracking.layout import KIND_TAG, TRIAL_TAG
from charsearch.tracking.store import client_for

WARM_TAG = "charsearch.warm_start"  # on a sweep's parent run: the run id of the sweep it started from
BUDGET_TOLERANCE = 0.05  # relative difference of two sweeps' sweep_time that still counts as the same budget
PLANNED = ("max_epochs", "eval_chars")  # fixed trial options an auto sweep plans from measured rates
PLANNED_TOLERANCE = 0.25
MAX_CHAIN = 10  # earlier sweeps followed back through their warm starts
MAX_PARENTS = 50  # finished sweeps looked at
MAX_RUNS = 2000  # trial runs read in all: a warm start needs tens
WARM_LOOKUP_S = 30.0  # the lookup's time, whatever the store holds
VALUE_RANGE = (0.0, 50.0)  # a fair val loss in nats/char: the log of any vocabulary is far below 50


@dataclass
class WarmStart:
    source_run_id: str  # the sweep this one starts from
    source_name: str
    sweeps: int  # that one and those it started from in turn
    evaluated: list  # (parameters, value), best first
    best: dict  # their best parameters: this sweep's first trial

    def describe(self) -> str:
        more = f" and {self.sweeps - 1} sweep(s) it started from" if self.sweeps > 1 else ""
        return (f"warm start: {len(self.evaluated)} trial(s) of {self.source_name}{more} (same corpus, budget and "
                f"fixed options) inform the search; their best configuration runs first")


def earlier_sweep(uri: str, sweep: SweepConfig, corpus_sha256: str,
                  notes: list | None = None) -> WarmStart | None:
    """The warm start from the most recent finished sweep of `sweep.name` on this corpus at this budget
    with comparable trials inside this sweep's space (and the sweeps it started from), or None. What it reads
    is bounded (MAX_PARENTS sweeps, MAX_RUNS trial runs, WARM_LOOKUP_S seconds) and checked: a chain of warm
    starts that loops is cut, a value that no fair val loss can be is left out, and each is said in `notes`."""
    notes = notes if notes is not None else []
    client = client_for(uri)
    deadline = time.monotonic() + WARM_LOOKUP_S
    try:
        exp = client.get_experiment_by_name(sweep.name)
        if exp is None:
            return None
        parents = client.search_runs([exp.experiment_id], max_results=MAX_PARENTS,
                                     order_by=["attributes.start_time DESC"],
                                     filter_string=f"tags.`{KIND_TAG}` = 'sweep' and attributes.status = 'FINISHED' "
                                                   f"and params.corpus_sha256 = '{corpus_sha256}'")
        budget = MAX_RUNS
        for parent in (p for p in parents if same_budget(p.data.params.get("sweep_time"), sweep.sweep_time)):
            chain = warm_chain(client, parent, notes)
            runs = []
            for p in chain:
                if budget <= 0 or time.monotonic() > deadline:
                    notes.append(f"warm start: read {MAX_RUNS - budget:,} trial runs in {WARM_LOOKUP_S:.0f} s at most; "
                                 f"the rest of the earlier sweeps left out")
                    break
                got = client.search_runs([exp.experiment_id], max_results=budget,
                                         filter_string=f"tags.mlflow.parentRunId = '{p.info.run_id}' and "
                                                       f"tags.`{KIND_TAG}` = 'trial'")
                budget -= len(got)
                runs += got
            ranked = comparable_trials(runs, sweep, notes)
            if ranked:
                return WarmStart(parent.info.run_id, parent.info.run_name, len(chain), ranked, ranked[0][0])
            if budget <= 0 or time.monotonic() > deadline:
                return None
    except MlflowException:  # an unreadable store (or a source run deleted): the sweep starts cold
        return None
    return None


def warm_chain(client, parent, notes: list) -> list:
    """The sweep and those it started from in turn, at most MAX_CHAIN, each once: a chain that loops back,
    or names a run that is not there, is cut where it does."""
    chain, seen = [parent], {parent.info.run_id}
    while len(chain) < MAX_CHAIN and (source := chain[-1].data.tags.get(WARM_TAG)):
        if source in seen:
            notes.append(f"warm start: run {chain[-1].info.run_id}'s {WARM_TAG} tag leads back to run {source}; "
                         f"the chain is cut there")
            break
        try:
            run = client.get_run(source)
        except MlflowException:
            notes.append(f"warm start: run {chain[-1].info.run_id}'s {WARM_TAG} tag names run {excerpt(source)}, "
                         f"which the store does not hold; the chain is cut there")
            break
        chain.append(run)
        seen.add(source)
    return chain


def comparable_trials(runs: list, sweep: SweepConfig, notes: list | None = None) -> list:
    """(parameters, value) of the trial runs with a value, this sweep's fixed options and parameters inside
    its space, best first (a trial recorded twice, by a resumed sweep, once at its best). A value that no
    fair val loss can be (outside VALUE_RANGE) is left out, and said in `notes`."""
    searched = set(sweep.space) | (set(parse_shape("gru 1x1")) if "shape" in sweep.space else set())
    fixed = {k: str(v) for k, v in sweep.trial_config({}).to_dict().items() if k not in searched | NOT_HYPERPARAMETERS}
    values: dict[tuple, tuple[float, dict]] = {}
    for run in runs:
        value, params = run.data.metrics.get("best_val_loss"), run.data.params
        if value is not None and not VALUE_RANGE[0] <= value <= VALUE_RANGE[1]:
            if notes is not None:
                notes.append(f"warm start: trial run {run.info.run_id} left out: its best_val_loss {value:g} is no "
                             f"fair val loss (expected {VALUE_RANGE[0]:g} to {VALUE_RANGE[1]:g} nats/char)")
            continue
        if value is None or not all(same_option(k, params.get(k), v) for k, v in fixed.items()):
            continue
        point = point_in_space(params, sweep.space)
        trial = (run.data.tags.get("mlflow.parentRunId"), run.data.tags.get(TRIAL_TAG, run.info.run_id))
        if point is not None and (trial not in values or value < values[trial][0]):
            values[trial] = (value, point)
    return [(p, v) for v, p in sorted(values.values(), key=lambda vp: vp[0])]


def same_option(key: str, recorded: str | None, now: str) -> bool:
    if recorded == now or key not in PLANNED or recorded is None:
        return recorded == now
    try:
        a, b = float(recorded), float(now)
    except ValueError:
        return False
    return a > 0 and b > 0 and abs(a - b) <= PLANNED_TOLERANCE * max(a, b)


def same_budget(recorded: str | None, budget: float) -> bool:
    try:
        earlier = float(recorded)
    except (TypeError, ValueError):
        return False
    if not budget or not earlier:
        return budget == earlier
    return abs(earlier - budget) <= BUDGET_TOLERANCE * budget


def point_in_space(params: dict, space: dict[str, SearchParam]) -> dict | None:
    """A trial's searched values, as recorded (strings), read back as the space's types; None where one is
    missing or outside the space (the space changed since)."""
    point = {}
    for name, p in space.items():
        text = params.get(name)
        if text is None:
            return None
        if p.kind == "choice":
            match = [v for v in p.values if str(v) == text]
            if not match:
                return None
            point[name] = match[0]
            continue
        try:
            value = int(float(text)) if p.integer else float(text)
        except ValueError:
            return None
        if not p.allows(value):
            return None
        point[name] = value
    return point
