"""The sweep driver's MLflow writer: writes keep their order, wait while the store is away, and what
could not be written is named in one line (the real server's outage: tests/test_tracking_server.py)."""

import time

import pytest
from mlflow.exceptions import MlflowException

from charsearch.tracking.writer import Writer

from .conftest import store_uri


def test_writes_wait_in_order_while_the_store_is_away_and_a_refused_one_is_named_once():
    w = Writer("http://tracking:5000")
    failures_left, made = [2], []

    def write(n):
        def fn():
            if failures_left[0]:  # the store is away for the first two tries
                failures_left[0] -= 1
                raise ConnectionRefusedError("connection refused")
            made.append(n)
        return fn

    def refused():
        raise MlflowException.invalid_parameter_value("Changing param values is not allowed")

    for n in range(3):
        w.submit(f"write {n}", write(n))
    w.submit("trial t1's run", refused)
    w.submit("write 3", write(3))
    assert w.flush(stall_s=30)
    assert made == [0, 1, 2, 3]
    assert w.unwritten() == ("MLflow at http://tracking:5000: 1 refused: trial t1's run "
                             "(Changing param values is not allowed)")
    assert w.unwritten() == ""


def test_the_wait_at_the_end_gives_up_once_the_store_makes_no_progress():
    w = Writer("http://tracking:5000")

    def down():  # what MLflow's client raises once its own retries are spent
        raise MlflowException("API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch failed")

    w.submit("trial t1's model", down)
    w.submit("trial t1's outcome", down)
    t0 = time.monotonic()
    assert not w.flush(stall_s=1.5)
    assert 1.5 <= time.monotonic() - t0 < 4
    assert w.unwritten() == ("MLflow at http://tracking:5000: 2 writes not made (API request to "
                             "http://tracking:5000/api/2.0/mlflow/runs/log-batch failed): trial t1's model, "
                             "trial t1's outcome")


def test_a_read_waits_in_line_while_the_store_is_away_and_says_so_once():
    w = Writer("http://tracking:5000")
    made, lines, tries = [], [], [0]
    w.submit("write 0", lambda: made.append(0))

    def read():
        tries[0] += 1
        if tries[0] <= 3:  # away for 1 + 2 + 4 s of the writer's retries: longer than WAIT_NOTE_S
            raise ConnectionRefusedError("connection refused")
        return list(made)

    assert w.call("the trial runs", read, lines.append) == [0]  # after the write before it
    assert lines == ["MLflow at http://tracking:5000 does not answer: the sweep waits for it to read the trial "
                     "runs (Ctrl-C stops; --resume goes on from there)"]

    def refused():
        raise MlflowException.invalid_parameter_value("no such experiment")
    with pytest.raises(MlflowException, match="no such experiment"):
        w.call("the trial runs", refused, lines.append)
    assert len(lines) == 1 and w.unwritten() == ""  # a refused read is the caller's, not a dropped write


def test_two_commands_creating_one_new_store_at_once_both_succeed(tmp_path):
    """Two first sweeps into an empty folder create the same SQLite store together: its first opening in
    each process takes turns, so neither meets the other's half-made tables."""
    import subprocess
    import sys
    code = "import sys; from charsearch.tracking.tracker import Tracker; Tracker(sys.argv[1], 'smoke')"
    for i in range(2):
        (tmp_path / str(i) / "mlruns").mkdir(parents=True)
        uri = store_uri(tmp_path / str(i))
        both = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        errors = [p.communicate()[1] for p in both]
        assert [p.returncode for p in both] == [0, 0], errors


def test_a_restarted_trial_reporting_again_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    """Ray's saved state may name the checkpoint before a trial's latest: the resumed sweep restarts the trial
    from there, and it reports steps its run holds already (as a retry in the same sweep may). Those are not
    logged twice; later ones are."""
    import mlflow

    from charsearch.tracking.tracker import Tracker
    (tmp_path / "mlruns").mkdir()
    uri = store_uri(tmp_path)
    first = Tracker(uri, "again", background=True)
    parent = first.start_sweep("again-1", params={}, files={}, tags={})
    first.trial_started("t1", "trial_t1", {})
    for step, loss in ((100, 3.0), (200, 2.5), (300, 2.2)):
        first.trial_result("t1", {"val_loss": loss, "chars_trained": step})
    assert first.flush() == ""
    resumed = Tracker(uri, "again", background=True)
    resumed.reopen_sweep(parent)
    resumed.trial_started("t1", "trial_t1", {})  # restarted from the checkpoint at step 100
    for step, loss in ((200, 2.6), (300, 2.3), (400, 2.0)):
        resumed.trial_result("t1", {"val_loss": loss, "chars_trained": step})
    resumed.trial_result("t1", {"val_loss": 2.1, "chars_trained": 400})  # a retry (max_failures) reporting again
    assert resumed.flush() == ""
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(resumed.runs["t1"], "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(100, 3.0), (200, 2.5), (300, 2.2), (400, 2.0)]
