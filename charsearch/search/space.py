"""The search: the space as Tune distributions, Optuna's sampler inside OptunaSearch, ASHA on the fair
time axis (characters trained, or epochs: never iterations, whose size differs between trials), and a
deadline that starts no trial too late to report once."""

from __future__ import annotations

import time

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from charsearch.search import ray_compat
from charsearch.search.ledger import METRIC, SweepState
from charsearch.search.sweepfile import SearchParam, SweepConfig
from charsearch.search.warm import WarmStart


def search_space(sweep: SweepConfig) -> dict:
    return {name: distribution(p) for name, p in sweep.space.items()}


def distribution(p: SearchParam):
    """A search parameter as Tune's: its integer ranges exclude the upper end, ours include it."""
    if p.kind == "choice":
        return tune.choice(p.values)
    low, high = p.values
    if p.integer:
        return (tune.lograndint if p.log else tune.randint)(low, high + 1)
    return (tune.loguniform if p.log else tune.uniform)(low, high)


def make_scheduler(sweep: SweepConfig, train_chars: int):
    if sweep.scheduler != "asha":
        return FIFOScheduler()
    scale = train_chars if sweep.time_attr == "chars_trained" else 1
    return ASHAScheduler(time_attr=sweep.time_attr, max_t=sweep.trial_max_epochs * scale,
                         grace_period=min(sweep.grace_epochs, sweep.trial_max_epochs) * scale,
                         reduction_factor=sweep.reduction_factor)


def make_searcher(sweep: SweepConfig, state: SweepState, warm: WarmStart | None = None) -> "Deadline":
    """Optuna's sampler in OptunaSearch. The sweep's first points run first; with a warm start, its best
    configuration runs before them and those it evaluated already do not run again (the members of a sweep
    without a search each train it, with their own seed and dropout), and its trials are in the study before
    the first draw."""
    import optuna
    startup = {} if sweep.startup_trials is None else {"n_startup_trials": sweep.startup_trials}
    sampler = (optuna.samplers.TPESampler(seed=sweep.seed, **startup) if sweep.algorithm == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [dict(p) for p in sweep.points_to_evaluate]
    if warm is not None and sweep.scheduler == "none" and len(points) > 1:
        # members of a prior without a search: each the earlier best, with its own seed and dropout
        best = {k: v for k, v in warm.best.items() if k not in ("seed", "dropout")}
        points = [{**p, **best} for p in points]
    elif warm is not None:
        done = [params for params, _ in warm.evaluated]
        points = [warm.best] + [p for p in points if p not in done]
    return Deadline(OptunaSearch(sampler=sampler, metric=METRIC, mode="min", points_to_evaluate=points or None),
                    sweep.first_report_s, state, warm.evaluated if warm else [])


def search_algorithm(searcher: Searcher, max_concurrent: int) -> SearchGenerator:
    """The searcher wrapped as Tune would wrap it (a concurrency limit, then a SearchGenerator), built here
    so that the sweep holds it: a resumed sweep makes it agree with the trials Tune saved
    (resume.ResumeFromExisting)."""
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher)


class Deadline(Searcher):
    """Wraps the search algorithm: no new trial once too little search time is left for it to report
    once. The time a trial needs to report is `first_report_s` (from the calibration of an auto sweep),
    raised to the longest seen so far in this sweep (suggestion to first result). `evaluated` (parameters,
    value) go into the study as finished trials once it exists."""

    def __init__(self, searcher: Searcher, first_report_s: float, state: SweepState, evaluated: list = ()):
        self.searcher, self.first_report_s, self.state = searcher, first_report_s, state
        self.evaluated = list(evaluated)
        self.suggested: dict[str, float] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def __getstate__(self):  # pickled with the Tuner: the live state stays behind
        return {**self.__dict__, "state": None}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if not self.searcher.set_search_properties(metric, mode, config, **spec):
            return False
        for params, value in self.evaluated:  # once: a restored study holds them already
            self.searcher.add_evaluated_point(params, value)
        self.evaluated = []
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        if time.time() + self.first_report_s > self.state.ends_at:
            self.state.closed = True
            return Searcher.FINISHED
        self.suggested[trial_id] = time.time()
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        started = self.suggested.pop(trial_id, None)
        if started is not None:
            self.first_report_s = max(self.first_report_s, time.time() - started)
        if ray_compat.searcher_knows(self.searcher, trial_id):
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        """Tune's saved trials win over the searcher's saved state (see resume.py): a trial Tune holds and the
        restored study lacks is told to the study as a finished point, never looked up."""
        self.suggested.pop(trial_id, None)
        if ray_compat.searcher_knows(self.searcher, trial_id):
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
        elif result and not error and isinstance(result.get(METRIC), float) and isinstance(result.get("config"), dict):
            self.searcher.add_evaluated_point(result["config"], result[METRIC])

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def get_state(self) -> dict:
        return {"first_report_s": self.first_report_s}

    def set_state(self, state: dict) -> None:
        self.first_report_s = state["first_report_s"]
