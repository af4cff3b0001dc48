"""A CPU training run's threads on a machine that other work shares.

A run on several CPU threads (torch's default: every core) trains with all of them where they pay (two
threads of an LSTM 2x96 on 2 quiet cores: about 1.5x one); with other work on the machine they wait on each
other at every operation and the run can fall far below one thread: beside another training job on one of 2
cores, a GRU 2x128 made 439 chars/s on two threads and 47,104 on one (bench_busy.py, BENCHMARKS.md), and
some shapes gain nothing from a second thread even on a quiet machine. So a run with several threads first
times its own next training steps with all of them and with one (PROBE_S each, after an untimed step: they
train as any others) and goes on with the faster. Then it watches each window (from MIN_WINDOW_S to WINDOW_S
of training): one slower than a single thread (what it made on one, else what calibration measured for its
shape on one) drops it to one thread. On one thread it times both again after 2, then 4, 8, ... windows, so
that a machine that quietens is used again; a whole window on all threads would cost a hundredfold
slowdown's worth of time where the other work is still there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PROBE_S = 0.5
# a window of training ends at an evaluation at least MIN_WINDOW_S after the last, or after WINDOW_S: its
# timings (PROBE_S on each, every 2, 4, 8, ... windows on one thread) then run a tenth of it at most on the
# slower setting
MIN_WINDOW_S, WINDOW_S = 10.0, 30.0


class Threads:
    def __init__(self, threads: int, one_thread_rate: float | None, step_rate: Callable[[float], float],
                 all_threads_rate: float | None = None):
        """`step_rate(seconds)`: chars/s of a few training steps of the run on the current threads (not a
        positive number where none can be timed now); `all_threads_rate`: what the shape made alone on all of
        them when the sweep measured it (calibration)."""
        self.threads, self.one_rate, self.step_rate = threads, one_thread_rate, step_rate
        self.many_rate = all_threads_rate
        self.current, self.wait, self.backoff = threads, 0, 2
        self.last: tuple[float, float] | None = None  # (chars trained, seconds trained) at the window's start
        self.said = False

    def probe(self) -> str:
        """Take the faster of all threads and one, each timed for a few steps. Returns a line the first time
        one thread is the faster, else ''. The first time, where the sweep measured both rates and all
        threads were the faster, it takes all without timing them again: the windows watch them from there."""
        if self.threads <= 1:
            return ""
        known, self.many_rate = self.many_rate, None
        if known and self.one_rate and known > self.one_rate:
            self.set(self.threads)
            return ""
        before = self.current
        self.set(self.threads)
        many = self.step_rate(PROBE_S)
        self.set(1)
        one = self.step_rate(PROBE_S)
        if not (many > 0 and one > 0):  # nothing could be timed now: as before, timed at the next window
            self.set(before)
            self.wait = 1
            return ""
        self.one_rate = one
        if self.one_rate <= many:
            self.set(self.threads)
            self.backoff = 2
            return ""
        self.wait, self.backoff = self.backoff, self.backoff * 2
        return self.say(f"{self.threads} threads made {many:,.0f} chars/s, one thread {self.one_rate:,.0f}")

    def after_window(self, chars: float, train_s: float) -> str:
        """Call at each report with the run's characters and training seconds so far; sets the threads for the
        next window. Returns a line the first time it drops to one thread, else ''."""
        since = self.last or (0.0, 0.0)
        self.last = (chars, train_s)
        if self.threads <= 1 or train_s <= since[1]:
            return ""
        rate = (chars - since[0]) / (train_s - since[1])
        if self.current == 1:
            self.one_rate = rate
            self.wait -= 1
            return self.probe() if self.wait <= 0 else ""  # the other work may be gone
        if self.one_rate is None or rate >= self.one_rate:
            self.backoff = 2
            return ""
        self.set(1)
        self.wait, self.backoff = self.backoff, self.backoff * 2
        return self.say(f"{self.threads} threads made {rate:,.0f} chars/s, less than one thread ({self.one_rate:,.0f})")

    def start_window(self, chars: float, train_s: float) -> None:
        """The next window starts here: steps a timing trained belong to no window."""
        self.last = (chars, train_s)

    def say(self, measured: str) -> str:
        if self.said:
            return ""
        self.said = True
        return (f"{measured}: training with one thread (other work on the machine, or a shape that gains "
                f"nothing from more); both are timed again now and then")

    def set(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)
