"""The sweep report: the Optuna study rebuilt from MLflow, its plots, the summary, the memorisation check.

Fast tests use a sweep written into a real MLflow SQLite store through charsearch.tracking.tracker (as the sweep
writes it); the slow ones report on the session's real smoke sweep, in a copy of its project.
"""

import re
import shutil
import sqlite3
from datetime import datetime

import matplotlib.image
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import pytest
import yaml
from matplotlib.collections import LineCollection, PathCollection
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from charsearch.cli import main
from charsearch.core.data import load_corpus
from charsearch.ship.report import memorisation, plots
from charsearch.ship.report import study as report_study
from charsearch.tracking.tracker import Tracker

from .conftest import Trial, charsearch, counts_in, make_text, record_sweep, store_uri, write_model

SPACE = {"rnn_size": {"choice": [32, 64]}, "num_layers": {"int": [1, 3]}, "dropout": {"float": [0.0, 0.3]},
         "learning_rate": {"log_float": [1.0e-3, 1.0e-2]}, "use_ss": {"choice": [False, True]}}
# trial id, outcome, params, val_loss at 1000, 2000, ... characters trained
TRIALS = [
    ("t1", "finished", dict(rnn_size=64, num_layers=2, dropout=0.1, learning_rate=0.002, use_ss=False), [2.0, 1.6]),
    ("t2", "stopped_early", dict(rnn_size=32, num_layers=1, dropout=0.25, learning_rate=0.009, use_ss=True), [2.5]),
    ("t3", "failed", dict(rnn_size=32, num_layers=3, dropout=0.0, learning_rate=0.001, use_ss=True), []),
    ("t4", "finished", dict(rnn_size=32, num_layers=1, dropout=0.2, learning_rate=0.005, use_ss=False), [2.1, 1.9, 1.8]),
    ("t5", "finished", dict(rnn_size=64, num_layers=3, dropout=0.3, learning_rate=0.008, use_ss=True), [2.2, 2.0]),
    ("t6", "interrupted", dict(rnn_size=64, num_layers=1, dropout=0.0, learning_rate=0.003, use_ss=False), [2.4]),
]
EXPECTED_STATES = {"t1": TrialState.COMPLETE, "t2": TrialState.PRUNED, "t3": TrialState.FAIL,
                   "t4": TrialState.COMPLETE, "t5": TrialState.COMPLETE, "t6": TrialState.FAIL}
FILES = {f"{name}.{ext}" for name in ("history", "history_wall_time", "timeline", "importances",
                                      "parallel_coordinate", "slice", "learning_curves", "tradeoff")
         for ext in ("html", "png")} | {"summary.txt"}


def tiny_model(path, vocab, seed):
    write_model(path, vocab, seed=seed, val_loss=1.0)
    return path


def write_sweep(workdir, with_models=True) -> tuple[str, str]:
    """Sweep 'exp' as charsearch.search records it: parent run with resolved.yaml, five trial runs."""
    corpus_file = workdir / "data" / "small" / "input.txt"
    corpus_file.parent.mkdir(parents=True)
    corpus_file.write_text(make_text(20_000), encoding="utf-8")
    corpus = load_corpus(corpus_file)
    uri = store_uri(workdir)
    resolved = {"name": "exp", "corpus": "small", "min_freq": 0, "train_frac": 0.9, "val_frac": 0.1, "space": SPACE}
    trials = [Trial(trial, {**params, "data": "small", "seed": 123}, curve,
                    None if outcome == "interrupted" else outcome,  # the sweep stopped while it ran
                    tiny_model(workdir / f"{trial}.pt", corpus.vocab, i) if curve and with_models else None,
                    None if curve else "diverged")
              for i, (trial, outcome, params, curve) in enumerate(TRIALS)]
    t = record_sweep(uri, "exp", trials, {"corpus": str(corpus_file), "corpus_sha256": corpus.sha256},
                     {"sweep.yaml": "name: exp\n", "resolved.yaml": yaml.safe_dump(resolved, sort_keys=False)},
                     status="KILLED", run_name="exp-1")
    return uri, t.parent_id


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sweep(workdir):
    return write_sweep(workdir)


@pytest.fixture(scope="module")
def shared_sweep(tmp_path_factory):
    """A sweep for the tests that must not write anything (bad input)."""
    store = tmp_path_factory.mktemp("shared-store")
    return tmp_path_factory.mktemp("shared"), store, *write_sweep(store)


def test_the_sweep_is_rebuilt_as_an_optuna_study_in_an_rdb_storage(sweep, workdir, capsys):
    uri, parent = sweep
    code, out, err = run(capsys, "report", "--tracking-uri", uri)
    assert code == 0, err
    storage = store_uri(workdir, "mlruns/optuna.db")  # beside the MLflow store
    study = optuna.load_study(study_name="exp-1", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    trials = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    client = mlflow.MlflowClient(uri)
    assert {k: t.state for k, t in trials.items()} == EXPECTED_STATES
    assert [t.user_attrs["ray_trial_id"] for t in study.trials] == [t[0] for t in TRIALS]  # numbered as started
    for trial, outcome, params, curve in TRIALS:
        got = trials[trial]
        assert got.params == params and type(got.params["rnn_size"]) is int and got.params["use_ss"] is params["use_ss"]
        assert got.intermediate_values == {1000 * (k + 1): v for k, v in enumerate(curve)}  # step = chars trained
        assert got.value == (min(curve) if outcome in ("finished", "stopped_early") else None)  # pruned: its best
        assert got.user_attrs["outcome"] == outcome
        info = client.get_run(got.user_attrs["mlflow_run_id"]).info  # the trial's times are its run's
        assert got.datetime_start == datetime.fromtimestamp(info.start_time / 1000)
        assert got.datetime_complete == datetime.fromtimestamp(info.end_time / 1000)
    dists = trials["t1"].distributions
    assert dists["rnn_size"] == CategoricalDistribution([32, 64]) and dists["num_layers"] == IntDistribution(1, 3)
    assert dists["learning_rate"] == FloatDistribution(1e-3, 1e-2, log=True)
    assert study.best_trial.user_attrs["ray_trial_id"] == "t1"
    assert f"optuna-dashboard {storage}" in out

    # a second report replaces the study instead of adding a second one or more trials
    assert run(capsys, "report", "--tracking-uri", uri)[0] == 0
    assert optuna.get_all_study_names(storage) == ["exp-1"]
    assert len(optuna.load_study(study_name="exp-1", storage=storage).trials) == len(TRIALS)


def test_report_files_summary_and_parent_run_artifacts(sweep, workdir, capsys):
    uri, parent = sweep
    code, out, err = run(capsys, "report", "--tracking-uri", uri, "--out", "rep", "--top", "2")
    assert code == 0, err
    assert {p.name for p in (workdir / "rep").iterdir()} == FILES
    client = mlflow.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent, "report")} == {f"report/{f}" for f in FILES}
    lines = out.splitlines()
    assert lines[0].endswith("6 trials (3 finished, 1 stopped early by ASHA, 1 interrupted, 1 failed)")
    assert lines[1].startswith("best trial t1 (Optuna trial 0, finished): val loss 1.6000 nats/char")
    assert lines[2].split() == ["rnn_size=64", "num_layers=2", "dropout=0.1", "learning_rate=0.002", "use_ss=False"]
    top3 = re.match(r"most important params: (\w+) [\d.]+, (\w+) [\d.]+, (\w+) [\d.]+$", lines[3])
    assert top3 and set(top3.groups()) <= set(SPACE)
    # three finished trials: PED-ANOVA's top 10% is one trial, and the summary says what that makes them worth
    assert lines[4] == ("  (only 3 finished trials: PED-ANOVA's top 10% is the best trial alone, so these importances "
                        "are a hint, not a ranking)")
    assert (workdir / "rep" / "summary.txt").read_text().strip() == "\n".join(lines[:-2])
    # memorisation of the best model: shares in [0, 1], printed and logged on the parent run
    metrics = client.get_run(parent).data.metrics
    for n in memorisation.NGRAMS:
        for kind in ("memorised", "val_text"):
            assert 0.0 <= metrics[f"{kind}_{n}gram_share"] <= 1.0
        assert f"{n}-grams {100 * metrics[f'memorised_{n}gram_share']:5.1f}%" in lines[6]
        assert f"{n}-grams {100 * metrics[f'val_text_{n}gram_share']:5.1f}%" in lines[7]
    assert lines[5] == ("memorisation: n-grams found verbatim in the train text, of 8,000 characters sampled from "
                        "trial t1's model, and of the val text")
    # held-out text shares short n-grams with the train text far more often than long ones
    assert metrics["val_text_10gram_share"] > metrics["val_text_40gram_share"]
    # learning curves of the best two trials only (t1 1.6, t4 1.8), named by their Ray trial ids
    html = (workdir / "rep" / "learning_curves.html").read_text()
    assert '"name":"t1"' in html and '"name":"t4"' in html and '"name":"t5"' not in html and "Trial" not in html


def study_of(*values, state=TrialState.COMPLETE):
    dists = {"x": FloatDistribution(0, 1), "y": CategoricalDistribution(["a", "b"])}
    return [optuna.trial.create_trial(state=state, params={"x": v / 10, "y": "ab"[i % 2]}, distributions=dists,
                                      value=v) for i, v in enumerate(values)]


def test_importances_are_skipped_with_a_note_when_trials_are_too_few():
    # Optuna's evaluator itself says when it cannot tell the params apart (and then scores them all alike)
    pruned = study_of(5.0, state=TrialState.PRUNED)
    imp, note = report_study.importances(report_study.make_study(study_of(1.0) + pruned))
    assert imp == {} and note.startswith("parameter importances skipped (1 finished trial): The number of trials")
    imp, note = report_study.importances(report_study.make_study(study_of(1.0, 1.0, 1.0)))
    assert imp == {} and note.startswith("parameter importances skipped (3 finished trials): ")
    imp, note = report_study.importances(report_study.make_study(study_of(*range(1, 10))))
    assert note == "" and set(imp) == {"x", "y"} and imp["x"] > imp["y"]  # x decides the value here
    figs = plots.figures(report_study.make_study(study_of(1.0) + pruned), with_importances=False)
    assert [f.name for f in figs] == ["history", "history_wall_time", "timeline", "parallel_coordinate", "slice",
                                      "learning_curves"]


def lr_study(n_complete, lr_range):
    """Finished trials whose values fall with the learning rate, each with a Ray trial id and a learning curve."""
    dists = {"learning_rate": FloatDistribution(*lr_range, log=True), "rnn_size": CategoricalDistribution([32, 64])}
    lrs = np.geomspace(*lr_range, n_complete)
    return report_study.make_study([optuna.trial.create_trial(
        state=TrialState.COMPLETE, params={"learning_rate": float(lr), "rnn_size": [32, 64][i % 2]},
        distributions=dists, value=2.0 + i / 10, intermediate_values={1000: 3.0, 2000: 2.0 + i / 10},
        user_attrs={"ray_trial_id": f"{0xa0 + i:08x}"}) for i, lr in enumerate(lrs)])


def test_learning_curves_are_labelled_with_the_ray_trial_ids():
    study = lr_study(4, (1e-3, 1e-2))
    figs = {f.name: f for f in plots.figures(study, top=2)}
    best_two = ["000000a0", "000000a1"]  # the lowest values
    ax = figs["learning_curves"].png.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == best_two
    assert [trace.name for trace in figs["learning_curves"].html.data] == best_two
    for f in figs.values():
        plt.close(f.png)


def test_every_trial_with_a_value_is_drawn_named_by_its_ray_trial_id_and_the_legend_is_best_first():
    dists = {"dropout": FloatDistribution(0.0, 0.5)}
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.COMPLETE)
    study = report_study.make_study([optuna.trial.create_trial(
        state=state, params={"dropout": 0.1 * i}, distributions=dists, value=2.0 - i / 10,
        intermediate_values={1000: 3.0, 2000: 2.0 - i / 10}, user_attrs={"ray_trial_id": f"t{i}"})
        for i, state in enumerate(states)])
    figs = {f.name: f for f in plots.figures(study, top=3)}
    assert list(figs["history"].html.data[0].text) == ["t0", "t1", "t2", "t3"]  # ASHA's stopped trials too
    assert [t.get_text() for t in figs["history"].png.axes[0].texts] == ["t0", "t1", "t2", "t3"]
    assert list(figs["slice"].html.data[0].text) == ["t0", "t1", "t2", "t3"]
    assert len(figs["history_wall_time"].html.data[0].x) == 4
    assert [trace.name for trace in figs["learning_curves"].html.data] == ["t3", "t2", "t1"]  # best first
    ax = figs["learning_curves"].png.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["t3", "t2", "t1"]
    assert study.trials[1].state == TrialState.PRUNED  # the study itself keeps ASHA's verdict
    for f in figs.values():
        plt.close(f.png)


def tick_labels(fig):
    fig.canvas.draw()
    return [(axis, label) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for label in axis.get_ticklabels(which="both") if label.get_visible() and label.get_text()]


@pytest.mark.parametrize("lr_range", [(2.3e-3, 2.6e-3), (2e-3, 1e-2), (1e-5, 1e-1)])
def test_slice_and_parallel_coordinate_label_a_log_axis_with_a_few_plain_ticks_that_do_not_overlap(lr_range):
    figs = {f.name: f for f in plots.figures(lr_study(5, lr_range))}
    for name in ("slice", "parallel_coordinate"):
        fig = figs[name].png
        labels = tick_labels(fig)
        log_labels = [label for axis, label in labels if axis.get_scale() == "log"]  # the learning rate's
        assert 2 <= len(log_labels) <= 6, (name, [label.get_text() for label in log_labels])
        assert all(re.fullmatch(r"[\d.e+-]+", label.get_text()) for label in log_labels), name  # no 2×10⁻³
        boxes = [label.get_window_extent() for _, label in labels]
        for label in log_labels:
            box = label.get_window_extent()
            assert sum(box.overlaps(other) for other in boxes) == 1, (name, label.get_text())  # itself only
    for f in figs.values():
        plt.close(f.png)


def test_no_trial_is_drawn_white_on_the_grey_background():
    figs = {f.name: f for f in plots.figures(lr_study(5, (1e-3, 1e-2)))}
    for name in ("slice", "parallel_coordinate"):
        fig = figs[name].png
        fig.canvas.draw()
        kind = PathCollection if name == "slice" else LineCollection  # the trials' points, lines
        drawn = [c for ax in fig.axes for c in ax.collections if isinstance(c, kind) and c.get_array() is not None]
        assert drawn, name
        for c in drawn:
            colours = c.get_facecolors() if name == "slice" else c.get_edgecolors()
            assert len(colours) == len(c.get_array())
            # the ggplot background is #E5E5E5 (luminance 0.9); white would be 1.0
            assert plots.luminance(colours).max() < 0.75, name
    for f in figs.values():
        plt.close(f.png)


@pytest.mark.parametrize("n_complete, caveat", [(2, True), (report_study.FEW_FOR_IMPORTANCES + 1, False)])
def test_importances_from_few_finished_trials_carry_a_caveat(n_complete, caveat):
    study = lr_study(n_complete, (1e-3, 1e-2))
    imp, note = report_study.importances(study)
    assert imp and note == ""  # drawn: the evaluator told the params apart
    text = report_study.importance_caveat(study)
    assert bool(text) == caveat
    figs = {f.name: f for f in plots.figures(study)}
    title = figs["importances"].png.axes[0].get_title(loc="left")
    assert title.startswith("Hyperparameter Importances")
    if caveat:
        assert text.startswith(f"only {n_complete} finished trials: ")
        assert " ".join(title.split()[2:]) == text  # under the title, wrapped
        assert text in figs["importances"].html.layout.title.text
    else:
        assert title == "Hyperparameter Importances" and "finished trials" not in figs["importances"].html.layout.title.text
    for f in figs.values():
        plt.close(f.png)


@pytest.mark.parametrize("kind, values, text, expected", [
    ("choice", [32, 64], "64", 64), ("choice", [False, True], "False", False), ("choice", [0.0, 0.1], "0.0", 0.0),
    ("choice", ["lstm", "gru"], "gru", "gru"), ("int", [1, 3], "2", 2), ("log_int", [16, 256], "64", 64),
    ("float", [0.0, 0.5], "0.25", 0.25), ("log_float", [1e-4, 1e-2], "0.001", 0.001),
])
def test_mlflow_params_are_cast_back_through_the_distribution(kind, values, text, expected):
    dist = report_study.distributions({"p": {kind: values}})["p"]
    got = report_study.cast(dist, text)
    assert got == expected and type(got) is type(expected)
    assert dist._contains(dist.to_internal_repr(got))


def test_verbatim_share_counts_ngrams_found_in_the_train_text():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50, 5000)
    copied = train[100:200]  # 100 characters taken verbatim: all of its 91 10-grams occur in train
    novel = rng.integers(50, 60, 100)  # characters train never has
    half = np.concatenate([train[1000:1050], novel[:50]])
    known = np.sort(memorisation.ngram_hashes(train, 10))
    assert memorisation.verbatim_share([copied], known, 10) == 1.0
    assert memorisation.verbatim_share([novel], known, 10) == 0.0
    assert memorisation.verbatim_share([half], known, 10) == pytest.approx(41 / 91)  # 10-grams wholly in the first half
    assert memorisation.verbatim_share([copied[:60], copied[60:]], np.sort(memorisation.ngram_hashes(train, 40)), 40) == 1.0
    assert memorisation.verbatim_share([copied[:60], copied[60:]], np.sort(memorisation.ngram_hashes(novel, 40)), 40) == 0.0
    assert np.isnan(memorisation.verbatim_share([copied[:5]], known, 10))  # too short for one n-gram


def test_no_model_is_an_error_and_nothing_is_written(workdir, capsys):
    uri, parent = write_sweep(workdir, with_models=False)
    code, out, err = run(capsys, "report", "--tracking-uri", uri)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "has a model" in err
    assert not (workdir / "report").exists() and not (workdir / "mlruns" / "optuna.db").exists()
    assert mlflow.MlflowClient(uri).list_artifacts(parent, "report") == []


@pytest.mark.parametrize("argv, match", [
    (["--experiment", "nope"], r"no experiment 'nope'.*known: .*exp"),
    (["--run", "0123abc"], r"no MLflow run '0123abc'"),
    (["--top", "0"], r"--top must be >= 1"),
    (["--out", "afile"], r"--out afile: exists and is not a folder"),
    (["--storage", "sqlite:///damaged.db"], r"Optuna storage sqlite:///damaged.db: not a readable Optuna database "
                                            r"\(file is not a database\); delete it"),
])
def test_bad_input_is_one_line_exit_2(shared_sweep, capsys, argv, match, monkeypatch):
    cwd, store, uri, parent = shared_sweep
    monkeypatch.chdir(cwd)
    (cwd / "afile").write_text("x")
    (cwd / "damaged.db").write_bytes(b"not sqlite " * 100)
    code, out, err = run(capsys, "report", "--tracking-uri", uri, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (store / "mlruns" / "optuna.db").exists() and not (cwd / "report").exists()
    assert mlflow.MlflowClient(uri).list_artifacts(parent, "report") == []
    assert (cwd / "damaged.db").read_bytes() == b"not sqlite " * 100


def test_the_parent_run_of_another_experiment_is_refused(shared_sweep, capsys):
    cwd, store, uri, parent = shared_sweep
    other = Tracker(uri, "other")
    other_parent = other.start_sweep("other-1", {}, {}, {})
    other.trial_started("o1", "run_o1", {"rnn_size": 32})
    code, out, err = run(capsys, "report", "--tracking-uri", uri, "--experiment", "exp", "--run", other_parent)
    assert code == 2 and f"run {other_parent} is not a sweep run of experiment 'exp'" in err


# ---------------------------------------------------------------------------------------------
# the session's smoke sweep


def relocate(project, copy) -> str:
    """Point a copied project's MLflow store at its own artifact folder: the SQLite store holds absolute
    artifact paths, and a report logs artifacts, which must not land in the shared sweep's folder."""
    db = copy / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                    (str(project), str(copy)))
        con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (str(project), str(copy)))
    return store_uri(db, "")


@pytest.fixture(scope="module")
def smoke_report(smoke_sweep, tmp_path_factory):
    project, _, _ = smoke_sweep
    copy = tmp_path_factory.mktemp("report") / "project"
    shutil.copytree(project, copy)
    uri = relocate(project, copy)
    r = charsearch("report", cwd=copy, timeout=300)
    assert r.returncode == 0, r.stderr
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["smoke"], max_results=100)
    return copy, uri, r, df[df["tags.charsearch.kind"] == "sweep"].iloc[0], df[df["tags.charsearch.kind"] == "trial"]


@pytest.mark.slow
def test_smoke_sweep_report_files_and_summary(smoke_report):
    copy, uri, r, parent, children = smoke_report
    out = copy / "report" / "smoke"
    study = optuna.load_study(study_name=parent["tags.mlflow.runName"], storage=store_uri(copy, "mlruns/optuna.db"))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    expected = FILES if len(complete) >= 2 else FILES - {"importances.html", "importances.png"}
    assert {p.name for p in out.iterdir()} == expected
    for name in (f for f in expected if f.endswith(".png")):
        img = matplotlib.image.imread(out / name)
        assert img.shape[0] >= 400 and img.shape[1] >= 500, name
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50, name  # a drawing, not a blank
    searched = yaml.safe_load((copy / "sweeps" / "smoke.yaml").read_text())["search_space"]
    for name in ("parallel_coordinate.html", "slice.html") + (("importances.html",) if len(complete) >= 2 else ()):
        html = (out / name).read_text()
        assert "Plotly.newPlot" in html and all(p in html for p in searched), name
    client = mlflow.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.run_id, "report")} == {f"report/{f}" for f in expected}

    # summary: the best trial as `charsearch best` ranks them, and the trial counts of the sweep
    winner = children.loc[children["metrics.best_val_loss"].idxmin()]
    assert f"best trial {winner['tags.ray.trial_id']} " in r.stdout
    assert f"val loss {winner['metrics.best_val_loss']:.4f} nats/char" in r.stdout
    # the counts the sweep's ledger logged as metrics: read back from the summary line as numbers
    shown = counts_in(r.stdout)
    assert shown["started"] == len(children)
    for outcome in ("finished", "stopped_early", "cut_by_budget", "failed"):
        assert shown.get(outcome, 0) == int(parent[f"metrics.trials_{outcome}"]), (outcome, r.stdout)
    assert (out / "summary.txt").read_text().splitlines()[0] in r.stdout
    metrics = client.get_run(parent.run_id).data.metrics
    assert all(0.0 <= metrics[f"memorised_{n}gram_share"] <= 1.0 for n in memorisation.NGRAMS)
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_smoke_sweep_study_matches_mlflow(smoke_report):
    copy, uri, r, parent, children = smoke_report
    study = optuna.load_study(study_name=parent["tags.mlflow.runName"], storage=store_uri(copy, "mlruns/optuna.db"))
    assert len(study.trials) == len(children)
    state = {"finished": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED, "failed": TrialState.FAIL}
    client = mlflow.MlflowClient(uri)
    for t in study.trials:
        child = children[children.run_id == t.user_attrs["mlflow_run_id"]].iloc[0]
        assert t.state == state[child["tags.charsearch.outcome"]]
        assert t.value == pytest.approx(child["metrics.best_val_loss"])
        assert t.params["rnn_size"] == int(child["params.rnn_size"]) and set(t.params) == set(report_study.distributions(
            yaml.safe_load((copy / "sweeps" / "smoke.yaml").read_text())["search_space"]))
        history = client.get_metric_history(child.run_id, "val_loss")
        assert t.intermediate_values == {m.step: m.value for m in history}


@pytest.mark.slow
def test_smoke_sweep_figures_have_a_series_per_trial_and_a_panel_per_param(smoke_report):
    copy, uri, r, parent, children = smoke_report
    study = optuna.load_study(study_name=parent["tags.mlflow.runName"], storage=store_uri(copy, "mlruns/optuna.db"))
    complete = [t for t in study.trials if t.value is not None]  # finished, stopped early or cut: all drawn
    figs = {f.name: f for f in plots.figures(study, top=2)}
    n_params = len(study.trials[0].params)
    history = figs["history"].png.axes[0]
    assert len(history.collections[0].get_offsets()) == len(complete)  # one point per finished trial
    assert len(figs["history"].html.data[0].x) == len(complete)
    assert len(figs["history_wall_time"].png.axes[0].collections[0].get_offsets()) == len(complete)
    assert len(figs["timeline"].png.axes[0].patches) == len(study.trials)  # one bar per trial
    assert sum(len(bar.x) for bar in figs["timeline"].html.data) == len(study.trials)
    assert complete  # the smoke sweep's trials report: each has a value
    assert len(figs["slice"].png.axes) == n_params + 1  # a panel per param and the colour bar
    assert len(figs["slice"].html.data) == n_params
    parallel = figs["parallel_coordinate"].html
    lines = [trace for trace in parallel.data if trace.mode == "lines"]  # a line per finished trial
    assert len(lines) == len(complete) and all(len(line.x) == n_params + 1 for line in lines)
    assert parallel.layout.xaxis.ticktext == (report_study.TARGET, *sorted(study.trials[0].params))
    curves = figs["learning_curves"]
    assert len(curves.png.axes[0].lines) == len(curves.html.data) == min(2, len(plots.top_trials(study, 10)))
    for f in figs.values():
        plt.close(f.png)
