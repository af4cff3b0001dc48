"""What `charsearch best` ships: the ranking of a sweep's trials with their held-out scores, the model (or
ensemble) chosen under the user's constraints, and the file written for it. The command line prints what
these return; the Python API calls the same functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charsearch.core import artifact
from charsearch.core.errors import UsageError
from charsearch.ship import selection
from charsearch.ship.candidates import (
    TEST_TOP,
    bias_line,
    candidates,
    choose,
    ensemble_of,
    held_out,
    sampling_rate,
    scores,
    splits_of,
)


@dataclass
class HeldOut:
    table: object  # the ranking, with test loss beside val loss where the sweep kept a test split
    splits: object  # candidates.Splits, or None
    pool: list  # the top trials' candidates (downloaded models), when a test split was scored
    bias: str  # the selection-bias line, or ''
    why: str = ""  # why there are no splits


def held_out_view(uri: str, name: str, df, folder: Path, top: int, need_val: bool) -> HeldOut:
    """The ranking, with the test loss of the top trials where the sweep kept a test split; the corpus is
    read only for that, or for the val split an ensemble is weighed on (`need_val`)."""
    try:
        sweep = selection.load_sweep_runs(uri, name)
    except UsageError as e:
        return HeldOut(selection.table(df, top), None, [], "", str(e))
    view = selection.table(df, top, searched=set(sweep.space))
    if not need_val and not float(sweep.resolved.get("test_frac") or 0):
        return HeldOut(view, None, [], "", "the sweep kept no test split")
    splits, why = splits_of(sweep)
    if splits is None or len(splits.test) < 2:
        return HeldOut(view, splits, [], "", why)
    pool = list(candidates(uri, df, min(top, TEST_TOP), folder))
    held_out(pool, splits)
    tests = {c.trial_id: round(c.test, 4) for c in pool if c.test is not None}
    view.insert(2, "test_loss", view["trial"].map(tests))
    return HeldOut(view, splits, pool, bias_line(pool))


def pick(uri: str, df, name: str, constraints, held: HeldOut, folder: Path, ensemble: int | None = None):
    """(model or ensemble file, what it is): the lowest-val model meeting the constraints, or the ensemble
    of the top `ensemble` trials; its test loss where the sweep kept a test split."""
    pool = candidates(uri, df, len(df), folder)
    if ensemble is None:
        chosen = choose(pool, constraints)
        if held.splits is not None:
            held_out([chosen], held.splits)
        chosen.mf.summary.update({"mlflow_run_id": chosen.run_id,
                                  **({"test_loss": chosen.test} if chosen.test is not None else {})})
        return chosen.mf, f"trial {chosen.trial_id} ({chosen.mf.label}; val {chosen.val:.4f} nats/char, MLflow run " \
                          f"{chosen.run_id})"
    top = list(pool)[: ensemble]
    if len(top) < ensemble:
        raise UsageError(f"--ensemble {ensemble}: experiment {name!r} has {len(top)} trial(s) with a model")
    if held.splits is None:
        raise UsageError(f"--ensemble needs the sweep's val split to weigh its members: {held.why}")
    mf, val = ensemble_of(top, held.splits, constraints, rounds=max(20, 4 * ensemble))
    if len(held.splits.test) >= 2:
        mf.summary["test_loss"] = scores(mf, held.splits.test)
    return mf, f"{mf.label}; val {val:.4f}"


def export(uri: str, experiment: str, mf, out: str | Path, measure_speed: bool = False) -> float | None:
    """Write the chosen model (or ensemble) file with where it was chosen; its sampling speed when asked."""
    mf.summary.update({"experiment": experiment, "tracking_uri": uri})
    artifact.save(out, mf.to_dict())
    return sampling_rate(mf) if measure_speed else None
