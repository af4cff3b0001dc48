"""The state of one sweep invocation in the driver, and the ledger of its trials' outcomes.

`SweepState` is made by the driver and handed to whoever needs it (the MLflow callback, the live line,
the search deadline, the finish); it is never pickled with Tune's experiment state.

The `Ledger` decides every trial's outcome, in one place: the live line, the final summary, the parent
run's tags and (through those tags) `charsearch best` and `charsearch report` all read its counts, so
they cannot disagree; the outcomes themselves, and their words, are tracking.layout's one table. A trial
counts as started once it has reported (evaluated) at least once, or failed; a trial Tune created that
never reported is "never started", whatever Tune's status says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from charsearch.tracking.layout import METRIC, OUTCOMES


class Ledger:
    def __init__(self):
        self.trials: list = []  # Tune's trials, as of the experiment's end
        self.outcomes: dict[str, str] = {}  # trial id -> one of OUTCOMES, once ended
        self.errors: dict[str, str] = {}  # trial id -> the last line of its error
        self.reported: set[str] = set()
        self.best: tuple[float, str, dict] | None = None  # val loss, trial id, config

    # --- what happened to a trial ------------------------------------------------------------

    def result(self, trial, result: dict) -> None:
        self.reported.add(trial.trial_id)
        if self.outcomes.get(trial.trial_id) == "interrupted":  # resumed
            del self.outcomes[trial.trial_id]
        self.improve(result.get(METRIC), trial.trial_id, trial.config)

    def improve(self, value, trial_id: str, config: dict) -> None:
        if isinstance(value, float) and math.isfinite(value) and (self.best is None or value < self.best[0]):
            self.best = (value, trial_id, config)

    def completed(self, trial) -> str:
        """Tune ended the trial: it reached its own end (epochs, time, patience), or ASHA stopped it."""
        return self._end(trial.trial_id, "finished" if trial.last_result.get("final") else "stopped_early")

    def failed(self, trial_id: str, error: str) -> str:
        lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
        self.errors[trial_id] = lines[-1][:300] if lines else "error"
        return self._end(trial_id, "failed")

    def cut(self, trial_id: str, budget_over: bool) -> str:
        """Still running when the experiment ended: by the sweep's budget, or by Ctrl-C."""
        return self._end(trial_id, "cut_by_budget" if budget_over else "interrupted")

    def trained_on(self, trial_id: str) -> str:
        """Trained to the end of the budget after the search: finished, whatever stopped it in the search."""
        return self._end(trial_id, "finished")

    def recorded(self, trial_id: str, outcome: str, reported: bool) -> None:
        """What MLflow holds of a trial of the sweep being resumed."""
        if reported:
            self.reported.add(trial_id)
        if outcome in OUTCOMES:
            self.outcomes[trial_id] = outcome

    def _end(self, trial_id: str, outcome: str) -> str:
        self.outcomes[trial_id] = outcome
        return outcome

    # --- counts ------------------------------------------------------------------------------

    def counts(self, trials=()) -> dict:
        c = {o: 0 for o in OUTCOMES}
        for o in self.outcomes.values():
            c[o] += 1
        live = [t for t in trials if t.trial_id not in self.outcomes]
        c["running"] = sum(t.status == "RUNNING" and t.trial_id in self.reported for t in live)
        c["starting"] = sum(t.status == "RUNNING" and t.trial_id not in self.reported for t in live)
        c["never_started"] = sum(t.status in ("TERMINATED", "PENDING") and t.trial_id not in self.reported for t in live)
        c["started"] = sum(c[o] for o in OUTCOMES) + c["running"]
        return c


SLOW = 0.5  # a trial training at less than this share of the rate calibration measured: the machine is busy


@dataclass
class SweepState:
    started: float  # time.time() at which the user's command started: the budget counts from there
    budget_s: float = 0.0  # the whole sweep's wall time (0: none)
    ends_at: float = math.inf  # time.time() at which the search ends: no new trial after it
    closed: bool = False  # the deadline has refused a trial for lack of time
    ledger: Ledger = field(default_factory=Ledger)
    expected_rates: dict = field(default_factory=dict)  # shape -> chars/s an auto sweep's calibration measured
    whole_rates: dict = field(default_factory=dict)  # shape -> chars/s of one trial alone on every thread, where measured
    slow_said: bool = False

    def budget_over(self, now: float, slack_s: float = 2.0) -> bool:
        return now >= self.ends_at - slack_s

    def slow_note(self, shape: str, chars_per_sec) -> str:
        """Once per sweep, a line when a trial trains at under SLOW of what calibration measured for its shape:
        the machine gives the sweep less than it did then (other work on it), so trials report later and
        reach less than the plan assumed; '' otherwise."""
        expected = self.expected_rates.get(shape)
        if self.slow_said or not expected or not isinstance(chars_per_sec, (int, float)) \
                or chars_per_sec >= SLOW * expected:
            return ""
        self.slow_said = True
        return (f"note: a {shape} trial trains at {chars_per_sec:,.0f} chars/s, {chars_per_sec / expected:.0%} of the "
                f"{expected:,.0f} calibration measured on one thread: the machine is busy with other work, so the "
                f"plan's trials reach less than it assumed; no trial starts that cannot report before the search "
                f"ends, and a model near the unigram baseline is said at the end")
