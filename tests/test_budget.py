"""A sweep cut by its budget loses nothing and says what happened: every trial that reported keeps its
best model in MLflow, the counts agree everywhere, no trial starts that cannot report before the
deadline, and no trial folder is left behind."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from charsearch.search.autosize import MAX_SEARCH_PRESSURE, PAIR_SHARE
from charsearch.search.finish import EVALUATIONS

from .conftest import charsearch, counts_in, runs, store_uri, sweep_file

pytestmark = pytest.mark.slow




def startup_seconds() -> float:
    """How long `python -m charsearch` takes to import before its clock starts."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import charsearch.cli.sweep_commands, charsearch.search, charsearch.search.autosize"],
                   check=True)
    return time.monotonic() - t0


def test_a_sweep_cut_by_its_budget_keeps_every_trained_model(project, tmp_path_factory):
    # trials that could train for minutes, a budget of well under one: the budget cuts them mid-trial
    path = sweep_file(project, "cut", search={"num_samples": 3, "max_concurrent": 2}, scheduler={"type": "none",
                      "report_every_epochs": 0.02}, budget={"sweep_time": 30, "trial_max_epochs": 20,
                      "trial_max_time": 0})
    tmp = tmp_path_factory.mktemp("t", numbered=True)  # the sweep's temp folder, to see what it leaves there
    r = charsearch("sweep", path, cwd=project, TMPDIR=str(tmp), RAY_TMPDIR="/tmp/ray")
    assert r.returncode == 0, r.stderr
    uri = store_uri(project)
    parents, trials = runs(uri, "cut")
    trained = trials[trials["metrics.best_val_loss"].notna()]
    assert len(trained) == len(trials) >= 2  # a run only for a trial that reported
    assert (trials["tags.charsearch.outcome"] == "cut_by_budget").all() and (trials.status == "FINISHED").all()
    client = mlflow.MlflowClient(uri)
    for _, t in trials.iterrows():  # its best model and best val loss, equal to what it reported
        history = client.get_metric_history(t.run_id, "val_loss")
        assert t["metrics.best_val_loss"] == pytest.approx(min(m.value for m in history))
        assert [a.path for a in client.list_artifacts(t.run_id, "model")] == ["model/model.pt"]

    best = charsearch("best", "--export", "model.pt", cwd=project)
    assert best.returncode == 0, best.stderr
    winner = trials.loc[trials["metrics.best_val_loss"].idxmin()]
    exported = torch.load(project / "model.pt", weights_only=True)
    assert exported["summary"]["trial_id"] == winner["tags.ray.trial_id"]
    assert exported["summary"]["val_loss"] == pytest.approx(winner["metrics.best_val_loss"])
    report = charsearch("report", "--out", "rep", cwd=project)
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr and "Warning" not in report.stderr, report.stderr

    # one set of counts: the live line's last state, the summary, the parent run's tag, `best`
    summary = counts_in(r.stdout.splitlines()[0])
    tagged = json.loads(parents.iloc[0]["tags.charsearch.counts"])
    assert summary == {k: v for k, v in tagged.items() if k in summary}
    assert summary["started"] == len(trials) and summary["cut_by_budget"] == len(trials)
    assert counts_in(best.stdout.splitlines()[0]) == summary
    assert counts_in(report.stdout.splitlines()[0]) == summary  # trials cut by the budget counted, not running
    last_line = [ln for ln in r.stderr.splitlines() if "elapsed" in ln][-1]
    assert re.match(r"\d+:\d\d elapsed, \d+:\d\d left \| trials: 0 running, 0 finished", last_line)  # clock first
    assert "next: charsearch best --export model.pt" in r.stdout
    assert not list(tmp.glob("charsearch-trial-*"))  # trials ended by the budget cleaned up


def test_no_trial_starts_that_cannot_report_before_the_deadline(project):
    # a trial needs a few seconds to its first report (0.5 epoch of a 200k-char slice), more on a loaded
    # machine, where the sweep raises its estimate to the longest first report seen; 400 trials, 2 at a
    # time, 35 s (start-up included): the deadline ends the search (a fast machine runs 20 such trials in
    # under 35 s)
    text = (project / "data" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
    (project / "data" / "tinyshakespeare" / "input.txt").write_text(text)
    path = sweep_file(project, "deadline", search={"num_samples": 400, "max_concurrent": 2},
                      scheduler={"type": "none", "report_every_epochs": 0.5},
                      budget={"sweep_time": 35, "trial_max_epochs": 1, "trial_max_time": 0, "first_report_s": 10},
                      train={"model": "lstm", "optimizer": "adam", "lr_schedule": "constant"})
    r = charsearch("sweep", path, cwd=project)
    assert r.returncode == 0, r.stderr
    summary = counts_in(r.stdout.splitlines()[0])
    assert summary["never_started"] == 0, r.stdout  # every trial Tune started reported at least once
    assert summary["started"] < 400  # the deadline, not the sample count, ended the search
    _, trials = runs(store_uri(project), "deadline")
    assert len(trials) == summary["started"] and trials["metrics.best_val_loss"].notna().all()


def test_when_no_trial_reports_in_the_search_the_first_trains_from_the_start_for_the_rest(project):
    # trials whose first report would come after 50 epochs: none reports in a search of under 30 s (as on a machine
    # too loaded to start a trial in time); the finish trains the sweep's first point from its start
    first = {"rnn_size": 32, "num_layers": 1, "dropout": 0.0, "learning_rate": 0.004, "seq_length": 32,
             "batch_size": 16, "use_ss": False}
    path = sweep_file(project, "late", search={"num_samples": 4, "max_concurrent": 2, "points_to_evaluate": [first]},
                      scheduler={"type": "none", "report_every_epochs": 50},
                      budget={"sweep_time": 60, "finish_time": 30, "trial_max_epochs": 100, "trial_max_time": 0})
    r = charsearch("sweep", path, cwd=project)
    assert r.returncode == 0, r.stderr
    m = re.search(r"no trial reported in the search: its first trial (\w+) trained from the start for (\d+) s: "
                  r"val ([0-9.]+)", r.stdout)
    assert m, r.stdout
    summary = counts_in(r.stdout.splitlines()[0])
    assert summary["finished"] == 1 and summary["started"] == 1
    _, trials = runs(store_uri(project), "late")
    assert len(trials) == 1  # a run only for the trial that trained
    row = trials.iloc[0]
    assert row["tags.ray.trial_id"] == m[1] and row["tags.charsearch.outcome"] == "finished"
    assert {k: row[f"params.{k}"] for k in first} == {k: str(v) for k, v in first.items()}
    assert row["metrics.best_val_loss"] == pytest.approx(float(m[3]), abs=5e-5)
    best = charsearch("best", "--export", "model.pt", cwd=project)
    assert best.returncode == 0, best.stderr
    assert torch.load(project / "model.pt", weights_only=True)["summary"]["trial_id"] == m[1]


def test_an_auto_sized_sweep_searches_then_trains_the_best_trial_to_the_end(workdir, shakespeare_slice):
    """On a loaded machine (a busy process per core beside it) too: the budget is kept within 5%."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        t0 = time.monotonic()
        r = charsearch("sweep", "--data", shakespeare_slice, "--time", "85", "--search", "always", cwd=workdir)
        wall = time.monotonic() - t0
    finally:
        for h in hogs:
            h.kill()
    assert r.returncode == 0, r.stderr
    # the budget counts from the command's start, after Python has imported it (a few seconds here)
    assert wall <= 1.05 * 85 + startup_seconds(), (wall, r.stderr[-2000:])
    assert re.search(r"# calibration: \d+ shapes measured in \d+ s on cpu", r.stderr)
    # so loaded, a trial may take longer to start than the search has: the first then trains from its start
    late = re.search(r"no trial reported in the search: its first trial (\w+) trained from the start for (\d+) s: "
                     r"val ([0-9.]+)", r.stdout)
    m = late or re.search(r"the search's best trial (\w+) trained on for (\d+) s: val ([0-9.]+)", r.stdout)
    assert m, r.stdout
    winner, val = m[1], float(m[3])
    summary = counts_in(r.stdout.splitlines()[0])
    assert summary["finished"] >= 1 and (summary["never_started"] == 0 or late)
    _, trials = runs(store_uri(workdir), "auto-shakespeare200k")
    # every trial at the prior's learning rate (not searched); the search started from its prior (a drawn
    # dropout of exactly the prior's would be a coincidence), with the dropout its plan printed: some where the
    # budget reads the 200,000 characters often enough to memorise them (how often depends on the load the
    # calibration measured), none where it does not
    assert (trials["params.learning_rate"] == "0.003").all(), trials["params.learning_rate"].to_string()
    planned = re.search(r"per train character: ([0-9.e+]+) \(above ([0-9.]+) it memorises the split\): "
                        r"dropout ([0-9.]+)", r.stderr)
    assert planned, r.stderr
    pressure, free, dropout = (float(g) for g in planned.groups())
    prior = trials[(trials["params.dropout"].astype(float) == dropout) & (trials["params.batch_size"] == "32")
                   & (trials["params.seq_length"] == "64")]
    assert len(prior) == 1, trials.filter(like="params.").to_string()
    assert (0.1 <= dropout <= 0.2) if pressure > free else dropout == 0, planned[0]
    assert not late or prior["tags.ray.trial_id"].iloc[0] == winner
    row = trials[trials["tags.ray.trial_id"] == winner].iloc[0]
    assert row["tags.charsearch.outcome"] == "finished" and int(row["tags.charsearch.finish_s"]) > 0
    # its run lasts until the end of its finish (MLflow's Duration is the training it had; the tag is rounded to
    # a second, and the finisher's last evaluation may end a little before its deadline)
    assert (row.end_time - row.start_time).total_seconds() >= int(row["tags.charsearch.finish_s"]) - 1
    assert row["metrics.best_val_loss"] == pytest.approx(val, abs=5e-5)  # what the summary printed
    client = mlflow.MlflowClient(store_uri(workdir))
    history = client.get_metric_history(row.run_id, "val_loss")
    steps = [m.step for m in history]
    assert steps == sorted(steps)  # the finish goes on along the same characters-trained axis
    if not late:  # its evaluations reach MLflow as they are made (about a dozen over the finish), not all at its end
        stamps = sorted(m.timestamp / 1000 for m in history)
        assert stamps[-1] - stamps[-5] > 0.1 * int(row["tags.charsearch.finish_s"])
        # by the clock: a finisher on both cores, the busy processes beside it, trains faster than its trial did
        # beside another, and evaluating every so many characters at that trial's rate came several times as often
        in_finish = [t for t in stamps if t > row.end_time.timestamp() - int(row["tags.charsearch.finish_s"]) + 1]
        assert 4 <= len(in_finish) <= EVALUATIONS + 1, (len(in_finish), stamps)
        rates = [m.value for m in client.get_metric_history(row.run_id, "learning_rate")]
        assert rates[-1] < 0.2 * max(rates)  # it ended with its learning rate decayed
    best = charsearch("best", "--export", "model.pt", cwd=workdir)
    assert best.returncode == 0, best.stderr
    exported = torch.load(workdir / "model.pt", weights_only=True)
    assert exported["summary"]["trial_id"] == trials.loc[trials["metrics.best_val_loss"].idxmin(), "tags.ray.trial_id"]
    assert counts_in(best.stdout.splitlines()[0]) == summary


def test_an_auto_sweep_without_a_search_trains_its_prior_on_the_winners_schedule(workdir, shakespeare_slice):
    t0 = time.monotonic()
    r = charsearch("sweep", "--data", shakespeare_slice, "--time", "60", "--search", "never", cwd=workdir)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert wall <= 1.05 * 60 + startup_seconds(), (wall, r.stderr[-2000:])
    # with the share of the rate of one alone that each of two at once would train at, which decided it; or,
    # where the prior would memorise the slice (a slow machine's calibration picks a small shape), as two at
    # two dropouts, unmeasured
    planned = re.search(r"# no search: .*\(--search never\); the prior (trains alone on the whole machine|trains (\d) "
                        r"times at once, seeds apart(, at dropout ([0-9.]+) and ([0-9.]+) \(`best --export` takes "
                        r"the lower on val\))?, (\d+) slot\(s\) each)( \(each of 2 at once would train at (\d+)(% of| "
                        r"times) the rate of one alone\))? for ~(\d+) s", r.stderr)
    assert planned, r.stderr
    members, dropouts, slots = int(planned.group(2) or 1), planned.group(4, 5), planned.group(6)
    if planned.group(7):
        # in percent, rounded: the rule's own figure may go either way
        share, rule = int(planned.group(8)) * (1 if planned.group(9) == "% of" else 100), round(100 * PAIR_SHARE)
        assert share >= rule if members == 2 else share <= rule, planned.group(0)
    else:
        pressure = re.search(r"per train character: ([0-9.e+]+) \(above", r.stderr)
        assert float(pressure[1]) >= MAX_SEARCH_PRESSURE and members == 2 and dropouts[0], planned.group(0)
    summary = counts_in(r.stdout.splitlines()[0])
    assert summary["started"] == summary["finished"] == members, r.stdout
    client = mlflow.MlflowClient(store_uri(workdir))
    parent, trials = runs(store_uri(workdir), "auto-shakespeare200k")
    assert len(trials) == members
    # the prior, seeds apart, on the slots the plan gave each, until its last evaluation just before the
    # budget's end, its rate decayed to 0
    assert sorted(trials["params.seed"].astype(int)) == [123 + i for i in range(members)]
    if dropouts[0]:
        assert sorted(trials["params.dropout"].astype(float)) == [float(d) for d in dropouts], trials["params.dropout"]
    cpu = json.loads(parent.iloc[0]["params.resources"])["cpu"]
    assert cpu == (os.cpu_count() if members == 1 else int(slots)), cpu
    for _, row in trials.iterrows():
        assert row["params.learning_rate"] == "0.003" and row["tags.charsearch.outcome"] == "finished"
        assert row["params.lr_schedule"] == "wsd" and float(row["params.decay_frac"]) == pytest.approx(0.7)
        rates = client.get_metric_history(row.run_id, "learning_rate")
        assert rates[-1].value < 0.1 * 0.003, rates
        # its threads were watched at every report (core/threads.py): all it has, or one if more were slower
        threads = client.get_metric_history(row.run_id, "threads")
        assert len(threads) == len(rates) and {m.value for m in threads} <= {1, cpu}, threads
    best = charsearch("best", "--export", "model.pt", cwd=workdir)
    assert best.returncode == 0, best.stderr
    winner = trials.loc[trials["metrics.best_val_loss"].astype(float).idxmin()]
    assert torch.load(workdir / "model.pt", weights_only=True)["summary"]["trial_id"] == winner["tags.ray.trial_id"]
    if members > 1:  # the lines' command mixes them, no worse on val than the better one alone
        assert f"its {members} members mixed: --ensemble {members}" in r.stdout.splitlines()[-1], r.stdout
        mixed = charsearch("best", "--export", "mix.pt", "--ensemble", str(members), cwd=workdir)
        assert mixed.returncode == 0, mixed.stderr
        val = float(re.search(r"exported .*; val (\d+\.\d+)", mixed.stdout).group(1))
        assert val <= float(winner["metrics.best_val_loss"]) + 1e-4, (val, mixed.stdout)


def test_a_trial_ended_between_its_report_and_tune_registering_the_checkpoint_keeps_the_reported_model(tmp_path):
    # Tune registers a reported checkpoint one step after the result: a sweep ended in between holds the
    # newer result, and the checkpoint before it as the trial's
    import pyarrow.fs
    from ray import tune

    from charsearch.search.tracking_callback import reported_checkpoint
    for i in (1, 2):
        (tmp_path / f"checkpoint_00000{i}").mkdir()
        (tmp_path / f"checkpoint_00000{i}" / "model.pt").write_text(str(i))
    fs = pyarrow.fs.LocalFileSystem()
    registered = tune.Checkpoint(path=str(tmp_path / "checkpoint_000001"), filesystem=fs)
    got = reported_checkpoint({"checkpoint_dir_name": "checkpoint_000002"}, fs, str(tmp_path), registered)
    with got.as_directory() as d:
        assert (Path(d) / "model.pt").read_text() == "2"
    # a result without a checkpoint, or one whose folder is gone: the registered one
    assert reported_checkpoint({"checkpoint_dir_name": None}, fs, str(tmp_path), registered) is registered
    assert reported_checkpoint({"checkpoint_dir_name": "checkpoint_000009"}, fs, str(tmp_path), registered) is registered


def test_a_machine_that_gives_trials_far_less_than_calibration_measured_is_said_once():
    from charsearch.search.ledger import SweepState
    state = SweepState(time.time(), 180, expected_rates={"gru 2x128": 26_026})
    assert state.slow_note("gru 2x128", 20_000) == ""  # within what a shared machine varies
    note = state.slow_note("gru 2x128", 3_136)
    assert note.startswith("note: a gru 2x128 trial trains at 3,136 chars/s, 12% of the 26,026 calibration measured "
                           "on one thread")
    assert state.slow_note("gru 2x128", 1_000) == ""  # once
    assert SweepState(time.time()).slow_note("gru 2x128", 1) == ""  # a sweep file's sweep: nothing to compare


def test_a_trial_reports_at_the_latest_after_twice_what_its_interval_takes_at_calibration_rate():
    from charsearch.core.config import TrainConfig
    from charsearch.search.trial import late_report_s
    cfg = TrainConfig(eval_every=100, batch_size=10, seq_length=50)  # 50,000 chars a report
    assert late_report_s(cfg, 10_000.0) == pytest.approx(10.0)  # 5 s at calibration's rate
    assert late_report_s(cfg, None) is None and late_report_s(cfg, 0.0) is None  # nothing measured: on characters


def test_a_trial_whose_threads_are_slower_than_one_drops_to_one_and_times_them_again_later():
    from charsearch.core.threads import Threads
    before = torch.get_num_threads()
    machine = {2: 150.0, 1: 100.0}  # chars/s of a few steps, by torch's threads now (a quiet machine: 2 pay)
    timed = lambda seconds: machine[torch.get_num_threads()]  # noqa: E731
    try:
        quiet = Threads(2, 100.0, timed)
        assert quiet.probe() == "" and quiet.current == 2 == torch.get_num_threads()
        assert [quiet.after_window(150.0 * s, s) for s in (1, 2, 3)] == ["", "", ""] and quiet.current == 2

        t = Threads(2, 100.0, timed)
        assert t.probe() == "" and t.current == 2
        note = t.after_window(30.0, 1.0)  # other work arrives: a window at 30 chars/s on two threads
        assert note.startswith("2 threads made 30 chars/s, less than one thread (100): training with one thread")
        assert t.current == 1 == torch.get_num_threads()
        machine.update({2: 40.0, 1: 90.0})  # still there: two threads time slower than one at the retry
        chars, secs, seen = 30.0, 1.0, []
        for _ in range(7):  # windows of one second each, at the machine's rate on the trial's threads
            chars, secs = chars + machine[t.current], secs + 1
            seen.append((t.after_window(chars, secs), t.current))
            if len(seen) == 5:
                machine[2] = 180.0  # the other work is gone
        # timed again after two windows (one thread kept), then after four more: two threads again; nothing said
        assert seen == [("", 1), ("", 1), ("", 1), ("", 1), ("", 1), ("", 2), ("", 2)], seen
        assert torch.get_num_threads() == 2
        machine[2] = 40.0
        assert t.after_window(chars + 40, secs + 1) == "" and t.current == 1  # dropped again, said once per trial

        # at the start: a few steps timed with all threads and with one; the faster is kept
        machine.update({2: 40.0, 1: 90.0})
        busy = Threads(2, None, timed)
        note = busy.probe()
        assert note.startswith("2 threads made 40 chars/s, one thread 90: training with one thread")
        assert busy.current == 1 == torch.get_num_threads() and busy.one_rate == 90.0 and busy.wait == 2
        # nothing can be timed now (the run's next evaluation is a step away): as it was, timed at the next window
        idle = Threads(2, 100.0, lambda seconds: float("nan"))
        assert idle.probe() == "" and idle.current == 2 and idle.one_rate == 100.0
        # nothing to compare with, or a single thread: never changes
        blind = Threads(2, None, timed)
        assert blind.after_window(1.0, 1.0) == "" and blind.current == 2
        single = Threads(1, 100.0, timed)
        assert single.probe() == "" and single.after_window(1.0, 1.0) == "" and single.current == 1

        # the sweep measured the shape alone on all threads moments ago: the first probe times nothing
        calls = []
        counted = lambda seconds: calls.append(seconds) or machine[torch.get_num_threads()]  # noqa: E731
        torch.set_num_threads(1)
        measured = Threads(2, 100.0, counted, all_threads_rate=150.0)
        assert measured.probe() == "" and measured.current == 2 == torch.get_num_threads() and calls == []
        assert measured.after_window(40.0, 1.0).startswith("2 threads made 40 chars/s, less than one thread")
        assert measured.current == 1  # still watched; its later retries time both again
        assert [measured.after_window(40.0 + 90 * s, 1.0 + s) for s in (1, 2)] == ["", ""] and len(calls) == 2
        # all threads measured no faster than one: the probe times both, as without a measurement
        slower = Threads(2, 100.0, counted, all_threads_rate=90.0)
        assert slower.probe().startswith("2 threads made 40 chars/s, one thread 90") and len(calls) == 4
    finally:
        torch.set_num_threads(before)
