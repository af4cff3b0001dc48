"""The sweep's live line on stderr: the clock first (elapsed and left), the trial counts, the best val loss
so far, and last the best trial's parameters, so a line cut at the terminal's width never hides the
clock. On a terminal it is rewritten in place every second; in a log, one line every 30 s."""

from __future__ import annotations

import shutil
import sys
import time

from ray import tune

from charsearch.core.config import label_of
from charsearch.core.units import fmt
from charsearch.search.ledger import SweepState
from charsearch.tracking.layout import OUTCOMES
from charsearch.tracking.writer import backlog


class StatusLine(tune.Callback):
    def __init__(self, state: SweepState, sweep=None):
        self.state, self.sweep = state, sweep
        self.stream, self.last_print = sys.stderr, 0.0

    def __getstate__(self):  # pickled with Tune's experiment state: the live parts stay behind
        return {"state": None, "sweep": None, "stream": None, "last_print": 0.0}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """A trial much slower than calibration measured is said once, and a trial's own note (its threads)
        each time, on a line of its own."""
        notes = [f"note: trial {trial.trial_id}: {result['note']}"] if isinstance(result.get("note"), str) else []
        if self.state.expected_rates and self.sweep is not None:
            notes.append(self.state.slow_note(label_of(self.sweep.trial_config(trial.config)),
                                              result.get("chars_per_sec")))
        for note in filter(None, notes):
            write_line(self.stream, note)
            if self.stream.isatty():
                self.stream.write("\n")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.print(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        self.print(trials)

    def on_experiment_end(self, trials, **info):
        self.print(trials, force=True)
        if self.stream.isatty():
            self.stream.write("\n")

    def line(self, trials) -> str:
        ledger = self.state.ledger
        c = ledger.counts(trials)
        parts = [clock_text(time.time() - self.state.started, self.state.budget_s),
                 f"trials: {c['running']} running, " + (f"{c['starting']} starting, " if c["starting"] else "")
                 + ", ".join(f"{c[o.name]} {o.words}" for o in OUTCOMES.values() if c[o.name] or o.always_shown)]
        if held := backlog():  # the tracking store is away: trials go on, their writes wait
            parts.append(held)
        if ledger.best:
            v, trial_id, config = ledger.best
            parts.append(f"best {v:.4f} (trial {trial_id}: {', '.join(f'{k}={fmt(x)}' for k, x in config.items())})")
        return " | ".join(parts)

    def print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (1.0 if self.stream.isatty() else 30.0):
            return
        self.last_print = now
        write_line(self.stream, self.line(trials))


def clock_text(elapsed: float, budget_s: float) -> str:
    text = f"{clock(elapsed)} elapsed"
    if budget_s:
        text += f", {clock(max(0.0, budget_s - elapsed))} left"
    return text


def write_line(stream, text: str) -> None:
    """A live line: rewritten in place on a terminal, one line each time in a log."""
    if stream.isatty():
        width = shutil.get_terminal_size((160, 20)).columns - 1
        stream.write("\r" + text[:width].ljust(width))
    else:
        stream.write(text + "\n")
    stream.flush()


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
