"""The MLflow Model Registry: the best trial's model as a `python_function` model, registered by name.

The logged model holds the portable model file (an artifact, read with `artifact.load`: plain data, no code
runs) and the charsearch package (`code_paths`), and is written as "models from code": MLflow builds it by
running `mlflow_model.py`, never by unpickling, so loading a registered version runs only the package's
own source. Its requirements are pinned explicitly (nothing is inferred by loading the model in a
subprocess), so `mlflow models serve -m models:/NAME/N --env-manager local` serves it from any
environment that has them, charsearch installed or not.

It is logged against the best trial's own run (LoggedModel source run) without reopening that run, so
the run keeps its status and end time, and the registered version links back to the trial's params and
metric history.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from charsearch.core.config import DEFAULT_SEED, REQUEST_FIELDS
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.sample import request_options
from charsearch.core.units import bits, loss_text

PACKAGE = Path(__file__).resolve().parents[1]  # the charsearch package, copied into the model
MAX_ROWS = 32  # samples per request; each is bounded by config.MAX_LENGTH characters
COLUMN_TYPES = {"str": "string", "float": "double", "int": "long"}  # a sampling option's type as MLflow's column's
SIGNATURE = ModelSignature(  # one optional column per request field of the sampling options
    inputs=Schema([ColSpec(COLUMN_TYPES[f.type], name, required=False) for name, f in REQUEST_FIELDS.items()]),
    outputs=Schema([ColSpec("string")]),
)


class CharRNNModel(mlflow.pyfunc.PythonModel):
    """One generated text per input row, each column a request field of the sampling options (optional)."""

    def load_context(self, context):
        from charsearch.core import artifact
        from charsearch.core.sample import Sampler
        self.sampler = Sampler(artifact.load(context.artifacts["model_file"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        rows = model_input.to_dict("records")
        if len(rows) > MAX_ROWS:
            raise MlflowException.invalid_parameter_value(f"at most {MAX_ROWS} rows per request; got {len(rows)}")
        try:
            opts = [request_options(row, self.sampler.vocab) for row in rows]
        except UsageError as e:  # MLflow's scoring server answers these with 400 and the message
            raise MlflowException.invalid_parameter_value(str(e)) from None
        return [self.sampler.generate(o)[0] for o in opts]


def requirements() -> list[str]:
    import numpy
    import torch
    # the local version label (+cpu, +cu128) names a build, not a release pip can resolve
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}"]


def check_name(name: str) -> str:
    """A registered model name is shown in URIs (models:/NAME/N) and command lines: one printable line."""
    if not name.strip() or len(name) > 256 or not name.isprintable():
        raise UsageError(f"--register {excerpt(name)}: a model name is 1 to 256 printable characters on one line "
                         f"(e.g. --register shakespeare-lstm)")
    return name


def register_best(uri: str, df: pd.DataFrame, experiment: str, name: str, exported: Path | None = None):
    """Log the best trial's model (or `exported`, the model or ensemble file `best --export` just wrote)
    as a pyfunc model under its trial's run (an ensemble's: its best member's) and register a new version
    of `name`, tagged with its val loss, sweep, trial(s) and run. Returns the ModelVersion."""
    from charsearch.ship import selection
    from charsearch.tracking.layout import TRIAL_TAG
    from charsearch.tracking.store import client_for
    check_name(name)
    client = client_for(uri)
    try:  # a name the registry would refuse is refused before anything is logged
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise UsageError(f"--register {name!r}: {e.message.splitlines()[0]} "
                             f"(e.g. --register shakespeare-lstm)") from None
    with tempfile.TemporaryDirectory() as tmp:
        if exported is None:
            row, mf = selection.export_best(uri, df, experiment, Path(tmp) / "model.pt")
            val = float(row["metrics.best_val_loss"])
        else:
            from charsearch.core import artifact
            mf, val = artifact.load(exported), None
            artifact.save(Path(tmp) / "model.pt", mf.to_dict())
            first = mf.summary.get("ensemble_trials", "").split(":")[0] or mf.summary.get("trial_id")
            row = df[df[f"tags.{TRIAL_TAG}"] == first].iloc[0]
            val = mf.summary.get("val_loss", float(row["metrics.best_val_loss"]))
        run_id = row["run_id"]
        trials = mf.summary.get("ensemble_trials") or row[f"tags.{TRIAL_TAG}"]
        prime = "The " if not mf.vocab.missing("The ") else ""
        mlflow.set_experiment(experiment)  # the logged model lives in the sweep's experiment, beside its trial
        info = Model.log(  # mlflow.pyfunc.log_model, but linked to the trial's run without reopening it
            artifact_path=None, name="charsearch", flavor=mlflow.pyfunc, run_id=run_id,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"model_file": str(Path(tmp) / "model.pt")},
            code_paths=[str(PACKAGE)], pip_requirements=requirements(), signature=SIGNATURE,
            input_example=pd.DataFrame([{"prime_text": prime, "temperature": 0.8, "length": 50, "seed": DEFAULT_SEED}]),
            tags={"charsearch.sweep": experiment, "charsearch.trial_id": trials},
        )
    parent = row.get("tags.mlflow.parentRunId")
    tags = {"val_loss": f"{val:.6f}", "val_bpc": f"{bits(val):.6f}", "sweep": experiment,
            "trial_id": trials, "source_run_id": run_id,
            "sweep_run_id": parent if isinstance(parent, str) else "",
            "architecture": mf.label}
    try:
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    except MlflowException as e:
        raise UsageError(f"cannot register {name!r} in {uri}: {e.message.splitlines()[0]}") from None
    client.update_model_version(name, version.version, description=(
        f"{tags['architecture']} from sweep {experiment!r}, trial {tags['trial_id']}: best fair val loss "
        f"{loss_text(val)}"))
    return client.get_model_version(name, version.version)
