"""A sweep's MLflow runs rebuilt as an Optuna study, and its parameter importances.

Ray's OptunaSearch keeps its study in memory, so nothing of it survives the sweep. MLflow holds every
trial, though: the search space is the parent run's resolved.yaml, a trial's params are its child
run's params, its value is `best_val_loss`, its intermediate values are the `val_loss` history
(step = characters trained), its state follows the outcome tag (tracking.layout.OUTCOMES). From these
`optuna.trial.create_trial` makes the trials of a study that `optuna.visualization` draws and that an
Optuna RDB storage keeps.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from charsearch.core.config import SearchParam
from charsearch.core.errors import UsageError
from charsearch.ship.selection import SweepRuns
from charsearch.tracking.layout import OUTCOME_TAG, OUTCOMES, TRIAL_TAG
from charsearch.tracking.store import client_for, sqlite_path

TARGET = "best val loss (nats/char)"
# PED-ANOVA (Optuna's default evaluator) scores each parameter by how its values in the top 10% of finished
# trials differ from all of them: with 10 or fewer, that top is the best trial alone
FEW_FOR_IMPORTANCES = 10


# ---------------------------------------------------------------------------------------------
# the Optuna study


def distributions(space: dict) -> dict[str, BaseDistribution]:
    """The sweep file's search space as Optuna distributions (the ones OptunaSearch searched:
    Tune's randint(a, b + 1) is Optuna's IntDistribution(a, b))."""
    out = {}
    for name, spec in space.items():
        (kind, values), = spec.items()
        p = SearchParam(kind, values)
        if p.kind == "choice":
            out[name] = CategoricalDistribution(p.values)
        else:
            out[name] = (IntDistribution if p.integer else FloatDistribution)(*p.values, log=p.log)
    return out


def cast(dist: BaseDistribution, text: str):
    """An MLflow param (always a string) back to the distribution's value."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not one of {list(dist.choices)}")
    return int(text) if isinstance(dist, IntDistribution) else float(text)


def _local(ts) -> dt.datetime | None:
    """An MLflow run time (a UTC timestamp) as the naive local datetime Optuna uses."""
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).to_pydatetime().astimezone().replace(tzinfo=None)


def _finite(v) -> float | None:
    return float(v) if v is not None and not pd.isna(v) and math.isfinite(float(v)) else None


def rebuild_trials(uri: str, sweep: SweepRuns) -> list[FrozenTrial]:
    """One FrozenTrial per trial run, in the order the trials started (Optuna numbers them so)."""
    client = client_for(uri)
    dists = distributions(sweep.space)
    trials = []
    # Ray's trial ids (<experiment>_<index>) order trials that started in the same millisecond
    for _, row in sweep.trials.sort_values(["start_time", f"tags.{TRIAL_TAG}"], kind="stable").iterrows():
        trial_id = row[f"tags.{TRIAL_TAG}"]
        params = {}
        for name, dist in dists.items():
            text = row.get(f"params.{name}")
            if isinstance(text, str):
                try:
                    params[name] = cast(dist, text)
                except ValueError as e:
                    raise UsageError(f"trial {trial_id}: param {name}: {e} (outside the sweep's search space)") from None
        outcome = row.get(f"tags.{OUTCOME_TAG}")
        value = _finite(row.get("metrics.best_val_loss"))
        if isinstance(outcome, str) and outcome in OUTCOMES:
            state = TrialState[OUTCOMES[outcome].optuna_state]
        else:  # no outcome yet: the sweep is still running it
            state = TrialState.RUNNING
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        curve = {int(m.step): m.value for m in client.get_metric_history(row["run_id"], "val_loss")
                 if math.isfinite(m.value)}
        trial = optuna.trial.create_trial(
            state=state,
            # as Optuna's tell() does, a pruned trial keeps a value: here the best val loss it reached
            value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
            params=params, distributions={k: dists[k] for k in params}, intermediate_values=curve,
            user_attrs={"ray_trial_id": trial_id, "mlflow_run_id": row["run_id"],
                        "outcome": outcome if isinstance(outcome, str) else "running",
                        **({"best_val_loss": value} if value is not None else {})})
        # create_trial stamps "now"; the run's own times put the trials on the sweep's wall clock
        trial.datetime_start = _local(row["start_time"])
        if state.is_finished():
            trial.datetime_complete = _local(row["end_time"]) or trial.datetime_start
        trials.append(trial)
    return trials


def make_study(trials: list[FrozenTrial], storage=None, name: str | None = None) -> optuna.Study:
    """A minimising study holding `trials`. In an RDB storage, a study of the same name is replaced; a
    storage that is not an Optuna database (damaged, or another program's) is one line naming it."""
    try:
        if storage is not None:
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:
                pass
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
        study.add_trials(trials)
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0][:120]
        raise UsageError(f"Optuna storage {storage}: not a readable Optuna database ({reason}); delete it (the report "
                         f"writes it again) or name another with --storage") from None
    return study


def storage_beside(uri: str) -> str:
    """The Optuna storage next to an SQLite tracking store, else sqlite:///mlruns/optuna.db. A separate
    file: both Optuna and MLflow keep an alembic_version table, so they cannot share one database."""
    path = sqlite_path(uri)
    return f"sqlite:///{(path.parent if path else Path('mlruns')) / 'optuna.db'}"


# ---------------------------------------------------------------------------------------------
# importances


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's default importance evaluator, or ({}, why not) when the trials do not allow it."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            imp = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:  # e.g. no finished trial at all
            return {}, f"parameter importances skipped: {e}"
    # too few trials to tell parameters apart: the evaluator says so and gives every one the same share
    if len(set(imp.values())) <= 1:
        why = next((str(w.message) for w in caught), "every parameter scored the same")
        return {}, f"parameter importances skipped ({complete} finished trial{'s' * (complete != 1)}): {why}"
    return imp, ""


def importance_caveat(study: optuna.Study) -> str:
    """What importances from few finished trials are worth, said on their plot and in the summary."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete > FEW_FOR_IMPORTANCES:
        return ""
    return (f"only {complete} finished trials: PED-ANOVA's top 10% is the best trial alone, "
            f"so these importances are a hint, not a ranking")
