"""A CPU trial's threads on a machine that other work shares.

A trial given several CPUs trains with as many torch threads. On a quiet machine they pay (two threads of
an LSTM 2x96 on 2 cores: about 1.5x one); with other work on the machine they wait on each other at every
operation, and the trial can fall far below one thread: beside another training job on one of 2 cores,
an LSTM 2x128 made 429 chars/s on two threads and 55,065 on one, and a two-thread trial did not reach its
first report in three minutes (bench_busy.py, BENCHMARKS.md). So a trial with several threads first times a few
steps of its shape with all of them and with one (about PROBE_S each) and starts with the faster; then it
watches each window between its reports: one slower than a single thread (what it made on one, else what
calibration measured for its shape on one) drops it to one thread, and it tries all of them again after
2, then 4, 8, ... windows, so that a machine that quietens is used again.
"""

from __future__ import annotations

import torch

PROBE_S = 1.0


class Threads:
    def __init__(self, threads: int, one_thread_rate: float | None):
        self.threads, self.one_rate = threads, one_thread_rate
        self.current, self.wait, self.backoff = threads, 0, 2
        self.last: tuple[float, float] | None = None  # (chars trained, seconds trained) at the last report

    def probe(self, step_rate) -> str:
        """Start with the faster of all threads and one, timed by `step_rate(seconds)` (chars/s of a few
        training steps of the trial's shape). Returns a line when that is one thread, else ''."""
        if self.threads <= 1:
            return ""
        many = step_rate(PROBE_S)
        self.set(1)
        self.one_rate = step_rate(PROBE_S)
        if self.one_rate <= many:
            self.set(self.threads)
            return ""
        self.wait, self.backoff = self.backoff, self.backoff * 2
        return (f"{self.threads} threads made {many:,.0f} chars/s, one thread {self.one_rate:,.0f}: other work "
                f"shares the machine; training with one thread")

    def after_window(self, chars: float, train_s: float) -> str:
        """Call at each report with the run's characters and training seconds so far; sets the threads for the
        next window. Returns a line when it drops to one thread, else ''."""
        since = self.last or (0.0, 0.0)
        self.last = (chars, train_s)
        if self.threads <= 1 or train_s <= since[1]:
            return ""
        rate = (chars - since[0]) / (train_s - since[1])
        if self.current == 1:
            self.one_rate = rate
            self.wait -= 1
            if self.wait <= 0:  # try all threads again: the other work may be gone
                self.set(self.threads)
            return ""
        if self.one_rate is None or rate >= self.one_rate:
            self.backoff = 2
            return ""
        self.set(1)
        self.wait, self.backoff = self.backoff, self.backoff * 2
        return (f"{self.threads} threads made {rate:,.0f} chars/s, less than one thread ({self.one_rate:,.0f}): "
                f"other work shares the machine; training on with one thread")

    def set(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)
