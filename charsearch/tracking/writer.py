"""One background thread per store making a process's MLflow writes in order: a tracking server or
database that is away holds up neither Ray Tune's loop nor the trials, and the writes wait, in memory,
until it is back. What is still unwritten when the sweep ends is waited for while it progresses, then
named in one line."""

from __future__ import annotations

import collections
import logging
import threading
import time

from mlflow.exceptions import MlflowException


class Writer:
    """One background thread making a process's MLflow writes to one store, in the order they were
    submitted. A write that fails for a passing reason (the server refuses connections, answers 5xx, its
    database is down) stays first in line and is tried again after 1, 2, 4 ... at most 10 s, until it
    goes through; one the store refuses (4xx: it can never succeed) is dropped and named at the end.
    Tracker methods make their writes safe to repeat: metrics keep the timestamp they were made with,
    a trial's run is looked for before one is created."""

    RETRY_MAX_S = 10.0
    THREAD_NAME = "charsearch-mlflow-writer"

    def __init__(self, uri: str):
        self.uri = uri
        self.ops: collections.deque = collections.deque()  # (what, fn)
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.failing_since: float | None = None  # time.monotonic() of the first failure of the write in hand
        self.reason = ""  # that failure, one line
        self.dropped: list[str] = []  # writes the store refused: "what (why)"
        self.progress_at = time.monotonic()  # the last write made

    def submit(self, what: str, fn) -> None:
        with self.cond:
            self.ops.append((what, fn))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def _run(self) -> None:
        delay = 1.0
        while True:
            with self.cond:
                while not self.ops:
                    self.cond.wait()
                what, fn = self.ops[0]
            try:
                fn()
            except Exception as e:  # noqa: BLE001 -- every failure is either retried or reported
                if passing(e):
                    with self.cond:
                        if self.failing_since is None:
                            self.failing_since = time.monotonic()
                        self.reason = first_line(e)
                    time.sleep(delay)
                    delay = min(2 * delay, self.RETRY_MAX_S)
                    continue
                with self.cond:
                    self.dropped.append(f"{what} ({first_line(e)})")
            delay = 1.0
            with self.cond:
                self.ops.popleft()
                self.failing_since, self.progress_at = None, time.monotonic()
                self.cond.notify_all()

    def call(self, what: str, fn, waiting=None):
        """`fn()`'s result (a read), made in line with the writes submitted before it. A store that is away
        is waited for as for a write, and `waiting(line)` is told once when that takes more than
        WAIT_NOTE_S; a failure that is not passing (a 4xx) is raised here."""
        if threading.current_thread() is self.thread:  # an op of this writer's own: already in line
            return fn()
        done, box = threading.Event(), {}

        def op():
            try:
                box["value"] = fn()
            except Exception as e:
                if passing(e):
                    raise  # held, and tried again
                box["error"] = e
            except BaseException as e:
                box["error"] = e
            done.set()
        self.submit(what, op)
        if not done.wait(WAIT_NOTE_S) and waiting is not None:
            waiting(f"MLflow at {self.uri} does not answer: the sweep waits for it to read {what} "
                    f"(Ctrl-C stops; --resume goes on from there)")
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def flush(self, stall_s: float) -> bool:
        """Wait until every write submitted is made or dropped, or until none has been made for `stall_s`
        seconds. True when nothing is left waiting."""
        began = time.monotonic()
        with self.cond:
            while self.ops:
                if time.monotonic() - max(began, self.progress_at) > stall_s:
                    return False
                self.cond.wait(timeout=0.5)
        return True

    def status(self) -> str:
        """For the live line: '' while writes go through."""
        with self.cond:
            if self.failing_since is None or time.monotonic() - self.failing_since < 3.0:
                return ""
            away = int(time.monotonic() - self.failing_since)
            return f"MLflow away for {away // 60}:{away % 60:02d}, {len(self.ops)} writes held"

    def unwritten(self) -> str:
        """One line naming the writes still waiting or dropped ('' when there are none)."""
        with self.cond:
            waiting = list(dict.fromkeys(what for what, _ in self.ops))
            dropped, reason = self.dropped, self.reason
            self.dropped = []  # named once
        parts = []
        if waiting:
            parts.append(f"{len(self.ops)} writes not made ({reason or 'no answer'}): {', '.join(waiting)}")
        if dropped:
            parts.append(f"{len(dropped)} refused: {', '.join(dropped)}")
        line = "; ".join(parts)
        return f"MLflow at {self.uri}: {line[:600]}{' ...' if len(line) > 600 else ''}" if line else ""


def passing(e: Exception) -> bool:
    """A failure that may go away by itself: no connection, a server or database error (5xx)."""
    if isinstance(e, MlflowException):
        return e.get_http_status_code() >= 500
    return isinstance(e, OSError)  # requests' connection errors and timeouts among them


def first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


_writers: dict[str, Writer] = {}
_writers_lock = threading.Lock()
FLUSH_STALL_S = 120.0  # a sweep's end waits this long for a store that makes no progress
WAIT_NOTE_S = 3.0  # a read held longer than this is said


def writer_for(uri: str) -> Writer:
    """The process's writer for a store: the sweep's callback and its driver share it, so their writes
    keep one order (a trial's run is created before the sweep's end looks for runs left open)."""
    with _writers_lock:
        if uri not in _writers:
            _writers[uri] = Writer(uri)
        return _writers[uri]


def backlog() -> str:
    """What the live line says about MLflow: '' while its writes go through."""
    return "; ".join(s for w in list(_writers.values()) if (s := w.status()))


def flush_at_exit() -> None:  # e.g. a command that used a Tracker without finishing a sweep
    for w in list(_writers.values()):
        w.flush(stall_s=10.0)


class QuietWriterRetries(logging.Filter):
    """urllib3 warns on every retry; the writer's retries show on the live line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != Writer.THREAD_NAME
