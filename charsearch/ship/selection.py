"""Model selection from MLflow alone: rank a sweep's trials by their best fair val loss, and export the
best one's model file. Works against any tracking store, also after Ray's result folder is gone."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from charsearch.core import artifact
from charsearch.core.config import NOT_HYPERPARAMETERS
from charsearch.core.errors import UsageError
from charsearch.core.units import bits
from charsearch.tracking.layout import (
    COUNTS_TAG,
    KIND_TAG,
    MODEL_ARTIFACT,
    OUTCOME_TAG,
    TRIAL_TAG,
    describe_counts,
    tally,
)
from charsearch.tracking.store import client_for


def latest_sweep_run(uri: str, experiment_id: str | None = None):
    """The most recently started sweep (parent) run, of one experiment or of the whole store; None if none."""
    client = client_for(uri)
    ids = [experiment_id] if experiment_id else [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`{KIND_TAG}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    return runs[0] if runs else None


def latest_sweep_experiment(uri: str) -> str:
    run = latest_sweep_run(uri)
    if run is None:
        raise UsageError(f"no sweeps recorded in {uri}: run `charsearch sweep FILE` first, or pass --tracking-uri")
    return client_for(uri).get_experiment(run.info.experiment_id).name


def trials(uri: str, experiment: str | None = None) -> tuple[str, pd.DataFrame]:
    """All trial runs of an experiment, best first: one row per trial (duplicates by trial id dropped)."""
    client_for(uri)
    name = experiment or latest_sweep_experiment(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        known = [e.name for e in mlflow.search_experiments()]
        raise UsageError(f"no experiment {name!r} in {uri}; known: {', '.join(known) or 'none'}")
    df = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'trial'", max_results=50000)
    if df.empty:
        raise UsageError(f"experiment {name!r} has no trials yet")
    if "metrics.best_val_loss" not in df:
        df["metrics.best_val_loss"] = math.nan
    df = df.sort_values(["metrics.best_val_loss", "start_time"], na_position="last")
    df = df.drop_duplicates(f"tags.{TRIAL_TAG}", keep="first").reset_index(drop=True)
    return name, df


def sweep_counts(uri: str, experiment: str) -> str:
    """The latest sweep's trial counts as its parent run recorded them (the live line's and the summary's)."""
    run = latest_sweep_run(uri, client_for(uri).get_experiment_by_name(experiment).experiment_id)
    counts = recorded_counts(run) if run else None
    return describe_counts(counts) if counts else ""


def recorded_counts(parent: Run, trials: pd.DataFrame | None = None) -> dict | None:
    """A sweep's trial counts as its ledger wrote them when it ended (COUNTS_TAG); for a sweep without them
    (still running, or stopped before its end), tallied from its trial runs' outcomes, if given."""
    try:
        counts = json.loads(parent.data.tags.get(COUNTS_TAG, "null"))
    except ValueError:
        counts = None
    if isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values()):
        return counts
    if trials is None:
        return None
    return tally(trials.get(f"tags.{OUTCOME_TAG}", pd.Series(index=trials.index, dtype=object)).fillna("running"))


def table(df: pd.DataFrame, top: int, searched=()) -> pd.DataFrame:
    """The readable view: val loss, outcome, the parameters that vary between trials (where none do, as with
    one trial, those the sweep searched), speed."""
    params = [c for c in df.columns if c.startswith("params.") and c[7:] not in NOT_HYPERPARAMETERS]
    varying = [c for c in params if df[c].astype(str).nunique() > 1] or [c for c in params if c[7:] in searched]
    out = pd.DataFrame({
        "trial": df[f"tags.{TRIAL_TAG}"],
        "best_val_loss": df["metrics.best_val_loss"].round(4),
        "bits/char": bits(df["metrics.best_val_loss"]).round(4),
        "outcome": df.get(f"tags.{OUTCOME_TAG}", df["status"]).fillna(df["status"].str.lower()),
    })
    for c in varying:
        out[c[7:]] = pd.to_numeric(df[c], errors="coerce").where(lambda s: s.notna(), df[c])
    if "metrics.chars_per_sec" in df:
        out["chars/s"] = df["metrics.chars_per_sec"].round(0).astype("Int64")
    if "metrics.epoch" in df:
        out["epochs"] = df["metrics.epoch"].round(2)
    out.index = range(1, len(out) + 1)
    return out.head(top)


def export_best(uri: str, df: pd.DataFrame, experiment: str, out: str | Path) -> tuple[pd.Series, artifact.ModelFile]:
    """Download the model file of the best trial that has one, check it, and write it to `out`."""
    client = client_for(uri)
    for _, row in df[df["metrics.best_val_loss"].notna()].iterrows():
        names = {a.path for a in client.list_artifacts(row["run_id"], str(Path(MODEL_ARTIFACT).parent))}
        if MODEL_ARTIFACT not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path=MODEL_ARTIFACT,
                                                        dst_path=tmp, tracking_uri=uri)
            mf = artifact.load(local)
        mf.summary.update({"mlflow_run_id": row["run_id"], "experiment": experiment, "tracking_uri": uri})
        artifact.save(out, mf.to_dict())
        return row, mf
    raise UsageError(f"no trial of experiment {experiment!r} has a model yet (none reached its first evaluation)")


@dataclass
class SweepRuns:
    experiment: str
    parent: Run  # the sweep invocation's parent run
    space: dict  # name -> {kind: values}, as resolved.yaml holds it
    resolved: dict  # the whole resolved sweep (corpus, split, ...)
    trials: pd.DataFrame  # its trial runs, best first (trials' order)


def load_sweep_runs(uri: str, experiment: str | None = None, run_id: str | None = None) -> SweepRuns:
    """The latest sweep invocation of the experiment (or the parent run `run_id`) and its trials."""
    client = client_for(uri)
    name, df = trials(uri, experiment)
    exp = client.get_experiment_by_name(name)
    if run_id:
        try:
            parent = client.get_run(run_id)
        except MlflowException:  # no such run, or not a run id at all
            raise UsageError(f"no MLflow run {run_id!r} in {uri}") from None
        if parent.info.experiment_id != exp.experiment_id or parent.data.tags.get(KIND_TAG) != "sweep":
            raise UsageError(f"run {run_id} is not a sweep run of experiment {name!r}")
    else:
        parent = latest_sweep_run(uri, exp.experiment_id)
        if parent is None:
            raise UsageError(f"experiment {name!r} has no sweep run (it was not made by `charsearch sweep`)")
    df = df[df["tags.mlflow.parentRunId"] == parent.info.run_id].reset_index(drop=True)
    if df.empty:
        raise UsageError(f"sweep run {parent.info.run_name} ({parent.info.run_id}) of experiment {name!r} "
                         f"has no trials yet")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, "resolved.yaml", tmp)
        except (MlflowException, OSError):
            raise UsageError(f"sweep run {parent.info.run_id} has no resolved.yaml artifact: the search space "
                             f"is unknown") from None
        resolved = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    return SweepRuns(name, parent, resolved["space"], resolved, df)
