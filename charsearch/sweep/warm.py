"""A warm start: a new sweep of a corpus begins from what the last finished sweep of the same experiment
(same name, same corpus by content, same split and vocabulary, the same budget) found in the same
tracking store.

Its best configuration is the first trial (before the sweep's own first points), and every trial of it
with a value and parameters inside this sweep's space goes into the Optuna study as a finished trial,
so TPE models them from its first draw (Optuna's `add_trial`, through OptunaSearch's
`add_evaluated_point`). A trial's value is what that sweep ranked it by (its best fair val loss; the
finished trial's after the finish): a number of the same kind the new sweep's trials report only when
the budget, and so the rungs and the finish, are the same, hence the same budget is required.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from ..sweepfile import SearchParam, SweepConfig
from ..tracking import KIND_TAG, TRIAL_TAG, client_for

WARM_TAG = "charsearch.warm_start"  # on a sweep's parent run: the run id of the sweep it started from
SAME_SPLIT = ("min_freq", "train_frac", "val_frac")  # trial params that fix the vocabulary and the val split
BUDGET_TOLERANCE = 0.05  # relative difference of two sweeps' sweep_time that still counts as the same budget


@dataclass
class WarmStart:
    source_run_id: str
    source_name: str
    evaluated: list  # (parameters, value), best first
    best: dict  # the earlier sweep's best parameters: this sweep's first trial

    def describe(self) -> str:
        return (f"warm start: {len(self.evaluated)} trial(s) of {self.source_name} (same corpus, split and budget) "
                f"inform the search; its best configuration runs first")


def earlier_sweep(uri: str, sweep: SweepConfig, corpus_sha256: str) -> WarmStart | None:
    """The warm start from the most recent finished sweep of `sweep.name` on this corpus at this budget
    with trials on the same split inside this sweep's space, or None."""
    client = client_for(uri)
    try:
        exp = client.get_experiment_by_name(sweep.name)
        if exp is None:
            return None
        parents = client.search_runs([exp.experiment_id], max_results=50, order_by=["attributes.start_time DESC"],
                                     filter_string=f"tags.`{KIND_TAG}` = 'sweep' and attributes.status = 'FINISHED' "
                                                   f"and params.corpus_sha256 = '{corpus_sha256}'")
        for parent in (p for p in parents if same_budget(p.data.params.get("sweep_time"), sweep.sweep_time)):
            runs = client.search_runs([exp.experiment_id], max_results=10000,
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                    f"and tags.`{KIND_TAG}` = 'trial'")
            ranked = trials_in_space(runs, sweep)
            if ranked:
                return WarmStart(parent.info.run_id, parent.info.run_name, ranked, ranked[0][0])
    except MlflowException:  # an unreadable store: the sweep starts cold, and its own writes report the store
        return None
    return None


def trials_in_space(runs: list, sweep: SweepConfig) -> list:
    """(parameters, value) of the trial runs on this sweep's split with a value and parameters inside its
    space, best first (a trial recorded twice, by a resumed sweep, once at its best)."""
    fixed = {k: str(v) for k, v in sweep.trial_config({}).to_dict().items() if k in SAME_SPLIT}
    values: dict[str, tuple[float, dict]] = {}
    for run in runs:
        value, params = run.data.metrics.get("best_val_loss"), run.data.params
        if value is None or not math.isfinite(value) or any(params.get(k) != v for k, v in fixed.items()):
            continue
        point = point_in_space(params, sweep.space)
        trial = run.data.tags.get(TRIAL_TAG, run.info.run_id)
        if point is not None and (trial not in values or value < values[trial][0]):
            values[trial] = (value, point)
    return [(p, v) for v, p in sorted(values.values(), key=lambda vp: vp[0])]


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
            value = int(float(text)) if p.kind in ("int", "log_int") else float(text)
        except ValueError:
            return None
        if not p.allows(value):
            return None
        point[name] = value
    return point
