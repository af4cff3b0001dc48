"""The sweep report: a sweep's MLflow runs rebuilt as an Optuna study (study), drawn with Optuna's own
plots (plots), stored for optuna-dashboard, summarised, and the best model checked for memorised text
(memorisation)."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from mlflow.entities import Metric

from charsearch.core.errors import UsageError
from charsearch.core.units import fmt, loss_text
from charsearch.ship.candidates import bias_line
from charsearch.ship.report.memorisation import Memorisation, memorisation_for
from charsearch.ship.report.plots import TOP_CURVES, figures, save_figures, shippable, tradeoff
from charsearch.ship.report.study import (
    TARGET,
    importance_caveat,
    importances,
    make_study,
    rebuild_trials,
    storage_beside,
)
from charsearch.ship.selection import SweepRuns, load_sweep_runs, recorded_counts
from charsearch.tracking.layout import OUTCOME_TAG, TRIAL_TAG, describe_counts
from charsearch.tracking.store import client_for, sqlite_path

ARTIFACT_DIR = "report"  # under the sweep's parent run


# ---------------------------------------------------------------------------------------------
# summary and the whole report


def summary(sweep: SweepRuns, study: optuna.Study, imp: dict[str, float], notes: list[str],
            memo: Memorisation | None) -> str:
    df = sweep.trials
    outcomes = df.get(f"tags.{OUTCOME_TAG}", pd.Series(index=df.index, dtype=object)).fillna("running")
    lines = [f"sweep {sweep.experiment!r}, run {sweep.parent.info.run_name} ({sweep.parent.info.run_id}): "
             f"{describe_counts(recorded_counts(sweep.parent, df))}"]
    best = df.iloc[0]  # ranked as `charsearch best` ranks them (a report needs a trial with a model)
    number = {t.user_attrs["mlflow_run_id"]: t.number for t in study.trials}[best["run_id"]]
    v = best["metrics.best_val_loss"]
    lines.append(f"best trial {best[f'tags.{TRIAL_TAG}']} (Optuna trial {number}, {outcomes.iloc[0]}): "
                 f"val loss {loss_text(v)}")
    params = study.trials[number].params
    lines.append("  " + "  ".join(f"{k}={fmt(params[k])}" for k in sweep.space if k in params))
    if imp:
        lines.append("most important params: " + ", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:3]))
        caveat = importance_caveat(study)
        lines += [f"  ({caveat})"] if caveat else []
    if memo is not None:
        lines.append(f"memorisation: n-grams found verbatim in the train text, of {memo.chars:,} characters "
                     f"sampled from trial {memo.trial}'s model, and of the val text")
        for label, shares in (("sampled", memo.shares), ("val text", memo.reference)):
            lines.append(f"  {label:<9} " + "  ".join(f"{n}-grams {100 * s:5.1f}%" for n, s in shares.items()))
    lines += notes
    return "\n".join(lines)


@dataclass
class Report:
    experiment: str
    parent_run_id: str
    study_name: str
    storage: str
    out: Path
    files: list[str]
    summary: str
    memorisation: Memorisation | None = None
    importances: dict = field(default_factory=dict)


def run(uri: str, experiment: str | None = None, run_id: str | None = None, out: str | Path | None = None,
        storage: str | None = None, top: int = TOP_CURVES) -> Report:
    """Build the whole report first, then write it: the Optuna study, the parent run's artifacts and
    metrics, and the --out folder."""
    sweep = load_sweep_runs(uri, experiment, run_id)
    out = Path(out) if out else Path("report") / sweep.experiment
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    storage = storage or storage_beside(uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    trials = rebuild_trials(uri, sweep)
    study = make_study(trials)  # in memory: drawn from, and stored only once everything worked
    imp, note = importances(study)
    notes = [note] if note else []
    with tempfile.TemporaryDirectory() as tmp:
        pool = shippable(uri, sweep, Path(tmp))
    if not pool:
        raise UsageError(f"no trial of experiment {sweep.experiment!r} has a model yet (none reached its first "
                         f"evaluation)")
    memo, note = memorisation_for(sweep, pool[0].mf, pool[0].trial_id)
    notes += [note] if note else []
    notes += [bias_line(pool)] if bias_line(pool) else []
    text = summary(sweep, study, imp, notes, memo)

    client = client_for(uri)
    parent_id = sweep.parent.info.run_id
    study_name = sweep.parent.info.run_name or parent_id
    with tempfile.TemporaryDirectory() as tmp:
        files = save_figures(figures(study, top, with_importances=bool(imp)) + [tradeoff(pool)], Path(tmp))
        (Path(tmp) / "summary.txt").write_text(text + "\n", encoding="utf-8")
        files.append(Path(tmp) / "summary.txt")

        if (path := sqlite_path(storage)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        stored = make_study(trials, storage, study_name)
        stored.set_user_attr("mlflow_experiment", sweep.experiment)
        stored.set_user_attr("mlflow_parent_run_id", parent_id)
        stored.set_user_attr("objective", TARGET)
        client.log_artifacts(parent_id, tmp, ARTIFACT_DIR)
        if memo is not None:
            ts = int(time.time() * 1000)
            client.log_batch(parent_id, metrics=[Metric(f"{kind}_{n}gram_share", share, ts, 0)
                                                 for kind, shares in (("memorised", memo.shares),
                                                                      ("val_text", memo.reference))
                                                 for n, share in shares.items() if math.isfinite(share)])
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, out / f.name)
    return Report(sweep.experiment, parent_id, study_name, storage, out, [f.name for f in files], text, memo, imp)
