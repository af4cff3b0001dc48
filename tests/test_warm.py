"""A warm start: what the last finished sweep of the same corpus and budget found, read from a real
MLflow store (SQLite) and handed to a real Optuna study."""

import time

import optuna
import pytest

from charsearch.search.ledger import SweepState
from charsearch.search.space import make_searcher, search_space
from charsearch.search.sweepfile import parse_sweep
from charsearch.search.tracking_callback import trial_params
from charsearch.search.warm import WARM_TAG, earlier_sweep

from .conftest import Trial, make_text, record_sweep, store_uri

SHA = "a" * 64


@pytest.fixture
def sweep(workdir):
    (workdir / "corpus.txt").write_text(make_text(20_000))
    return parse_sweep({
        "name": "w", "data": {"corpus": "corpus.txt"},
        "search_space": {"shape": {"choice": ["lstm 1x32", "gru 1x32"]}, "learning_rate": {"log_float": [1e-3, 1e-2]},
                         "use_ss": {"choice": [False, True]}},
        "search": {"points_to_evaluate": [{"shape": "gru 1x32", "learning_rate": 3e-3, "use_ss": False}],
                   "seed": 0},
        "budget": {"sweep_time": 300}})


def record(uri, sweep, trials, sha=SHA, budget=300, status="FINISHED", tags=None, **fixed):
    """One sweep as the driver records it: a parent run, one child run per trial (params, best_val_loss)."""
    return record_sweep(uri, sweep.name, [Trial(f"t{i}", {**trial_params(sweep, params), **fixed},
                                                [] if value is None else [value])
                                          for i, (params, value) in enumerate(trials)],
                        params={"corpus_sha256": sha, "sweep_time": budget}, status=status, tags=tags).parent_id


def test_the_last_finished_sweep_of_the_same_corpus_and_budget_is_read_back_in_the_space_types(workdir, sweep):
    uri = store_uri(workdir, "mlflow.db")
    assert earlier_sweep(uri, sweep, SHA) is None  # no experiment yet
    lstm = {"shape": "lstm 1x32", "learning_rate": 0.005, "use_ss": True}
    gru = {"shape": "gru 1x32", "learning_rate": 0.003, "use_ss": False}
    older = record(uri, sweep, [(lstm, 2.5)])
    source = record(uri, sweep, [(lstm, 2.1), (gru, 2.0), ({**gru, "shape": "rnn 1x32"}, 1.0),  # no longer searched
                                 ({**gru, "learning_rate": 0.5}, 1.0), (gru, None)])  # out of range; no value
    record(uri, sweep, [(gru, 1.5)], budget=600)  # another budget
    record(uri, sweep, [(gru, 1.5)], sha="b" * 64)  # another corpus
    record(uri, sweep, [(gru, 1.5)], status="FAILED")
    record(uri, sweep, [(gru, 1.5)], val_frac=0.2)  # another val split: its trials do not count
    record(uri, sweep, [(gru, 1.5)], optimizer="sgd")  # another fixed option
    record(uri, sweep, [(gru, 1.5)], max_epochs=20.0)  # an epoch cap far from this sweep's 10
    warm = earlier_sweep(uri, sweep, SHA)
    assert warm.source_run_id == source != older
    assert warm.evaluated == [(gru, 2.0), (lstm, 2.1)] and warm.best == gru
    assert isinstance(warm.evaluated[1][0]["use_ss"], bool)
    assert "2 trial(s)" in warm.describe()
    sweep.sweep_time = 315  # within 5%: the same budget
    assert earlier_sweep(uri, sweep, SHA).source_run_id == source
    sweep.sweep_time = 400
    assert earlier_sweep(uri, sweep, SHA) is None
    sweep.sweep_time = 300
    record(uri, sweep, [(gru, 1.9)], max_epochs=11.0, eval_chars=0)  # an auto sweep's planned cap moves a little
    assert earlier_sweep(uri, sweep, SHA).evaluated == [(gru, 1.9)]


def test_warm_starts_chain_back_through_the_sweeps_they_started_from(workdir, sweep):
    uri = store_uri(workdir, "mlflow.db")
    lstm = {"shape": "lstm 1x32", "learning_rate": 0.005, "use_ss": True}
    gru = {"shape": "gru 1x32", "learning_rate": 0.003, "use_ss": False}
    first = record(uri, sweep, [(lstm, 2.1)])
    second = record(uri, sweep, [(gru, 2.0)], tags={WARM_TAG: first})
    warm = earlier_sweep(uri, sweep, SHA)
    assert warm.source_run_id == second and warm.sweeps == 2
    assert warm.evaluated == [(gru, 2.0), (lstm, 2.1)]
    assert "and 1 sweep(s) it started from" in warm.describe()


def test_hostile_records_in_the_store_are_left_out_with_a_line_and_never_followed(workdir, sweep, monkeypatch):
    """A value no fair val loss can be is not taken as the best; a chain of warm starts that leads back to
    itself is cut; the runs read are bounded, however many the store holds."""
    import mlflow

    from charsearch.search import warm as warm_module
    uri = store_uri(workdir, "mlflow.db")
    gru = {"shape": "gru 1x32", "learning_rate": 0.003, "use_ss": False}
    lstm = {"shape": "lstm 1x32", "learning_rate": 0.005, "use_ss": True}
    looped = record(uri, sweep, [(gru, 2.0), (lstm, -1e308)])
    mlflow.MlflowClient(uri).set_tag(looped, WARM_TAG, looped)  # a chain that points back to itself
    notes = []
    warm = earlier_sweep(uri, sweep, SHA, notes)
    assert warm.evaluated == [(gru, 2.0)] and warm.sweeps == 1
    assert any("leads back to run" in n for n in notes) and any("-1e+308 is no fair val loss" in n for n in notes)
    monkeypatch.setattr(warm_module, "MAX_RUNS", 3)  # the bound on trial runs read, made small to see it hold
    record(uri, sweep, [(gru, 1.9)] * 5)
    notes = []
    warm = earlier_sweep(uri, sweep, SHA, notes)
    assert len(warm.evaluated) <= 3


def test_a_warm_study_runs_the_earlier_best_first_knows_its_trials_and_skips_points_already_run(workdir, sweep):
    uri = store_uri(workdir, "mlflow.db")
    lstm = {"shape": "lstm 1x32", "learning_rate": 0.005, "use_ss": True}
    prior = sweep.points_to_evaluate[0]
    record(uri, sweep, [(prior, 2.3), (lstm, 2.1)])
    state = SweepState(time.time())
    state.ends_at = time.time() + 600
    searcher = make_searcher(sweep, state, earlier_sweep(uri, sweep, SHA))
    assert searcher.set_search_properties("best_val_loss", "min", search_space(sweep))
    study = searcher.searcher._ot_study
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.params["shape"], t.value) for t in done) == [("gru 1x32", 2.3), ("lstm 1x32", 2.1)]
    assert searcher.suggest("first") == lstm  # the earlier best, not the prior it already ran
    second = searcher.suggest("second")
    assert second != prior and second["shape"] in ("lstm 1x32", "gru 1x32")

    cold = make_searcher(sweep, state)
    assert cold.set_search_properties("best_val_loss", "min", search_space(sweep))
    assert not cold.searcher._ot_study.trials or all(t.state != optuna.trial.TrialState.COMPLETE
                                                      for t in cold.searcher._ot_study.trials)
    assert cold.suggest("first") == prior


def test_auto_sweeps_start_warm_unless_told_not_to_and_sweep_files_only_when_they_ask(workdir, sweep):
    import io

    from charsearch.core.data import load_corpus
    from charsearch.search.driver import warm_start
    uri = store_uri(workdir, "mlflow.db")
    corpus = load_corpus(sweep.corpus)
    record(uri, sweep, [(sweep.points_to_evaluate[0], 2.0)], sha=corpus.sha256)
    out = io.StringIO()
    assert warm_start(sweep, uri, corpus, out) is None and not out.getvalue()  # a sweep file: off by default
    sweep.auto = True
    assert warm_start(sweep, uri, corpus, out).evaluated == [(sweep.points_to_evaluate[0], 2.0)]
    assert out.getvalue().startswith("warm start: 1 trial(s) of w-")
    sweep.warm_start = False  # --no-warm-start
    assert warm_start(sweep, uri, corpus, io.StringIO()) is None
    sweep.auto, sweep.warm_start = False, True  # search.warm_start: true
    assert warm_start(sweep, uri, corpus, io.StringIO()) is not None


def test_no_warm_start_on_the_command_line_turns_it_off_but_leaves_a_resumed_sweep_as_recorded(workdir, sweep):
    import yaml

    from charsearch.cli import build_parser
    from charsearch.cli.sweep_commands import sweep_to_run
    path = workdir / "w.yaml"
    path.write_text(yaml.safe_dump({**sweep.to_file(), "search": {"warm_start": True}}))
    parse = build_parser().parse_args
    assert sweep_to_run(parse(["sweep", str(path)]))[0].warm_start is True
    assert sweep_to_run(parse(["sweep", str(path), "--no-warm-start"]))[0].warm_start is False
    assert sweep_to_run(parse(["sweep", str(path), "--no-warm-start", "--resume"]))[0].warm_start is True


def test_a_trial_the_restored_study_lacks_is_told_to_it_not_looked_up(workdir, sweep):
    """Tune's saved trials newer than the searcher's saved study (separate checkpoint cadences): completing
    one the study never suggested adds it as a finished point instead of raising KeyError."""
    searcher = make_searcher(sweep, SweepState(started=time.time()))
    assert searcher.set_search_properties("best_val_loss", "min", search_space(sweep))
    known = searcher.suggest("t-known")
    searcher.on_trial_complete("t-known", result={"best_val_loss": 2.0, "config": known})
    point = {"shape": "gru 1x32", "learning_rate": 0.004, "use_ss": True}
    searcher.on_trial_result("t-lost", {"best_val_loss": 1.5, "config": point})
    searcher.on_trial_complete("t-lost", result={"best_val_loss": 1.5, "config": point})
    study = searcher.searcher._ot_study
    values = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert values == [1.5, 2.0]


def test_the_members_of_a_prior_without_a_search_each_train_the_earlier_best_with_their_own_seed_and_dropout(workdir):
    """Without a search the earlier best is what trains; members keep what sets them apart, so the second is not
    left to a random draw (both member points ran before)."""
    (workdir / "corpus.txt").write_text(make_text(20_000))
    members = [{"shape": "gru 1x32", "learning_rate": 3e-3, "dropout": 0.2, "seed": 123},
               {"shape": "gru 1x32", "learning_rate": 3e-3, "dropout": 0.4, "seed": 124}]
    sweep = parse_sweep({
        "name": "m", "data": {"corpus": "corpus.txt"},
        "search_space": {"shape": {"choice": ["lstm 1x32", "gru 1x32"]}, "learning_rate": {"log_float": [1e-3, 1e-2]},
                         "dropout": {"float": [0.1, 0.4]}, "seed": {"choice": [123, 124]}},
        "search": {"points_to_evaluate": members, "seed": 0, "num_samples": 2}, "scheduler": {"type": "none"},
        "budget": {"sweep_time": 300}})
    uri = store_uri(workdir, "mlflow.db")
    best = {"shape": "lstm 1x32", "learning_rate": 0.005, "dropout": 0.4, "seed": 124}
    record(uri, sweep, [(members[0], 2.3), (members[1], 2.2), (best, 2.1)])
    state = SweepState(time.time())
    state.ends_at = time.time() + 600
    searcher = make_searcher(sweep, state, earlier_sweep(uri, sweep, SHA))
    assert searcher.set_search_properties("best_val_loss", "min", search_space(sweep))
    assert [searcher.suggest("first"), searcher.suggest("second")] == [
        {"shape": "lstm 1x32", "learning_rate": 0.005, "dropout": 0.2, "seed": 123},
        {"shape": "lstm 1x32", "learning_rate": 0.005, "dropout": 0.4, "seed": 124}]
