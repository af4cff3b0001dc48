"""The sweep a command asks for, ready to run: a sweep file, or an automatically sized sweep of a corpus and
a time budget (as its latest run recorded it, when resumed), with the overrides applied. The command line
(`charsearch sweep`) and the Python API (`charsearch.sweep`) both start here."""

from __future__ import annotations

from dataclasses import replace

from charsearch.core.errors import UsageError
from charsearch.search.autosize import Plan, auto_sweep, default_sweep, parse_duration, search_mode
from charsearch.search.sweepfile import SweepConfig, load_sweep, set_splits


def prepare_sweep(file: str | None = None, data: str | None = None, time: str | float | None = None,
                  resume: bool = False, no_warm_start: bool = False, num_samples: int | None = None,
                  sweep_time: float | None = None, test_frac: float | None = None, calibration: str | None = None,
                  address: str | None = None, search: str = "auto") -> tuple[SweepConfig, Plan | None]:
    """(sweep, plan of an auto sweep or None). `time` is the whole sweep's budget (seconds, or '10m');
    `search` as autosize.plan's."""
    budget = parse_duration(str(time)) if time is not None else None
    search = search_mode(search)
    if file:
        if data:
            raise UsageError("--data goes with no sweep file (the file names its corpus in data.corpus)")
        sweep = load_sweep(file)
    elif not data or budget is None:
        raise UsageError("give a sweep file (e.g. sweeps/smoke.yaml), or --data CORPUS --time DURATION for an "
                         "automatically sized sweep (e.g. --data tinyshakespeare --time 10m)")
    else:
        sweep = default_sweep(data, budget)
        sweep.auto = True
    if resume and sweep.auto:
        from charsearch.search.resume import recorded_sweep
        sweep = recorded_sweep(sweep) or sweep
    sweep.sweep_time = budget or sweep.sweep_time
    if no_warm_start and not resume:  # a resumed sweep continues its own study
        sweep.warm_start = False
    if num_samples is not None:
        if num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1; got {num_samples}")
        sweep.num_samples = num_samples
    if sweep_time is not None:
        if sweep_time < 0:
            raise UsageError(f"--sweep-time must be >= 0 seconds; got {sweep_time}")
        sweep.sweep_time = sweep_time
    if test_frac is not None:
        if not 0 <= test_frac < 1 - sweep.val_frac:
            raise UsageError(f"--test-frac must be in [0, {1 - sweep.val_frac:g}) (val_frac is {sweep.val_frac:g}); "
                             f"got {test_frac}")
        sweep.test_frac = test_frac
        set_splits(sweep, train_given=False, test_given=True, where="--test-frac: ")
    if calibration and not sweep.auto:
        raise UsageError("--calibration sizes an automatically sized sweep (--data CORPUS --time DURATION); a sweep "
                         "file's search space is its own")
    if search != "auto" and not sweep.auto:
        raise UsageError(f"--search {search} decides whether an automatically sized sweep searches; a sweep "
                         f"file's search is its own (search.num_samples)")
    if not sweep.auto:
        return sweep, None
    if not sweep.sweep_time:
        raise UsageError("an automatically sized sweep needs a budget: --time DURATION (e.g. 10m)")
    return auto_sweep(sweep, sweep.sweep_time, **calibration_source(calibration, address), search=search)


def calibration_source(calibration: str | None, address: str | None) -> dict:
    """auto_sweep's GPUs and calibration: a given one (its GPU count made the cluster's), else measured on a
    GPU where Ray (or this machine) has one, else on the CPUs here."""
    from charsearch.search.calibrate import Calibration
    from charsearch.search.resources import cluster_gpus
    gpus, measure = cluster_gpus(address)
    if not calibration:
        return {"gpus": gpus, "measure_gpu": measure}
    cal = Calibration.from_file(calibration)
    if cal.gpus and gpus:
        cal = replace(cal, gpus=gpus, parallel=cal.per_gpu * gpus)
    return {"gpus": gpus, "calibration": cal}
