"""Choosing what to ship, from a real MLflow store of trained models: the held-out test score beside val,
an ensemble of the top trials as one model file, and constraints on size, parameters and speed."""

import re

import pytest
import torch
import yaml

from charsearch.cli import main
from charsearch.core import artifact
from charsearch.core.config import TrainConfig
from charsearch.core.data import file_sha256, load_corpus
from charsearch.core.errors import UsageError
from charsearch.core.train import Evaluator, train
from charsearch.search.sweepfile import SweepConfig

from .conftest import Trial, make_text, one_line_error, record_sweep, store_uri

SHAPES = (("gru", 32, 1, 11), ("lstm", 24, 1, 12), ("gru", 16, 1, 13), ("rnn", 8, 1, 14))


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A sweep 'pick' of four trained trials of different shapes, with a test split (train 0.8 / val 0.1 /
    test 0.1), recorded as `charsearch sweep` records one: (uri, folder, corpus)."""
    root = tmp_path_factory.mktemp("pick")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(40_000, seed=3))
    uri = store_uri(root)
    sweep = SweepConfig(path="", name="pick", corpus=str(corpus), train_frac=0.8, val_frac=0.1, test_frac=0.1)
    trials = []
    for cell, size, layers, seed in SHAPES:
        cfg = TrainConfig(data=str(corpus), model=cell, rnn_size=size, num_layers=layers, seed=seed, train_frac=0.8,
                          val_frac=0.1, max_epochs=0.6, eval_every=40, batch_size=16, seq_length=32,
                          learning_rate=5e-3, checkpoint_dir=str(root / f"cv{seed}"))
        result = train(cfg, progress=False)
        artifact.export(result.best_checkpoint, root / f"m{seed}.pt")
        trials.append(Trial(f"t{seed}", {"model": cell, "rnn_size": size}, [result.best_val_loss],
                            model=root / f"m{seed}.pt"))
    record_sweep(uri, "pick", trials, {"corpus": str(corpus), "corpus_sha256": file_sha256(corpus)},
                 {"resolved.yaml": yaml.safe_dump(sweep.to_dict())}, run_name="pick-1")
    return uri, root, corpus


def best(uri, *args):
    return main(["best", "--tracking-uri", uri, *map(str, args)])


def test_best_shows_test_loss_beside_val_and_the_selection_bias(sweep_store, capsys, tmp_path):
    uri, root, corpus = sweep_store
    assert best(uri, "--export", tmp_path / "m.pt") == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header[:3] == ["trial", "best_val_loss", "test_loss"]
    row = out.splitlines()[2].split()
    m = re.search(r"selection bias: the chosen trial (\w+) scores ([0-9.]+) on the test split against ([0-9.]+) on "
                  r"val \(gap ([+-][0-9.]+)\); the top 4's mean gap ([+-][0-9.]+)", out)
    assert m and m[1] == row[1], out
    # the test loss is the fair loss of that model on the corpus's last 10%, never seen in selection
    ids = load_corpus(corpus).ids
    exported = artifact.load(tmp_path / "m.pt")
    expected = Evaluator(ids[int(0.9 * len(ids)):], torch.device("cpu"))(exported.build())
    assert exported.summary["test_loss"] == pytest.approx(expected, abs=1e-6)
    assert float(row[3]) == pytest.approx(expected, abs=1e-4)


def test_an_ensemble_of_the_top_trials_is_one_model_file_every_command_takes(sweep_store, capsys, tmp_path):
    uri, root, corpus = sweep_store
    out = tmp_path / "ens.pt"
    assert best(uri, "--export", out, "--ensemble", 4) == 0
    printed = capsys.readouterr().out
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "charsearch-ensemble" and abs(sum(raw["weights"]) - 1) < 1e-6
    ens = artifact.load(out)
    vals = {t: float(v) for t, v in re.findall(r"^\s*\d+\s+(t\d+)\s+([0-9.]+)", printed, re.M)}
    # greedy selection starts from the best single model: the mixture is never worse on val
    assert ens.summary["val_loss"] <= min(vals.values()) + 5e-5  # (the table shows 4 decimals)
    ids = load_corpus(corpus).ids
    val = ids[int(0.8 * len(ids)):int(0.9 * len(ids))]
    assert Evaluator(val, torch.device("cpu"))(ens.build()) == pytest.approx(ens.summary["val_loss"], abs=1e-6)
    assert f"test {ens.summary['test_loss']:.4f}" in printed
    # inspect lists the members and weights; sample, eval and serve take it as any model file
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "ensemble of" in shown and len(re.findall(r"^  x[0-9.]+ ", shown, re.M)) == len(ens.members)
    assert main(["sample", str(out), "--length", "40", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out) == 41
    assert main(["eval", str(out), "--data", str(corpus), "--split", "all"]) == 0
    capsys.readouterr()
    # it carries what its members were trained and chosen on: the corpus, its hash, the split
    member = artifact.load(root / "m11.pt").summary
    assert {k: ens.summary[k] for k in ("data_path", "data_sha256", "train_frac", "val_frac", "min_freq")} == {
        k: member[k] for k in ("data_path", "data_sha256", "train_frac", "val_frac", "min_freq")}
    assert main(["eval", str(out), "--data", str(corpus), "--split", "test"]) == 0
    test = float(re.search(r"test: ([0-9.]+) nats/char", capsys.readouterr().out)[1])
    assert test == pytest.approx(ens.summary["test_loss"], abs=1e-4)
    from charsearch.serve import make_server
    server = make_server(str(out), port=0)
    try:
        assert server.info["description"].startswith("ensemble of") and server.info["config"]["model"] == "ensemble"
    finally:
        server.server_close()


def test_constraints_choose_the_lowest_val_model_that_fits(sweep_store, capsys, tmp_path):
    uri, root, _ = sweep_store
    assert best(uri) == 0
    table = capsys.readouterr().out
    ranked = [line.split()[1] for line in table.splitlines()[2:6]]
    params = {f"t{seed}": artifact.load(root / f"m{seed}.pt").num_params() for *_, seed in SHAPES}
    limit = min(params.values()) + 1  # only the smallest fits
    assert best(uri, "--export", tmp_path / "small.pt", "--max-params", limit) == 0
    small = min(params, key=params.get)
    assert artifact.load(tmp_path / "small.pt").num_params() == params[small]
    assert f"exported trial {small} " in capsys.readouterr().out
    size = (root / f"m{ranked[0][1:]}.pt").stat().st_size
    assert best(uri, "--export", tmp_path / "s.pt", "--max-size", f"{size}B") == 0  # the best fits exactly
    assert f"exported trial {ranked[0]} " in capsys.readouterr().out
    assert best(uri, "--export", tmp_path / "fast.pt", "--min-chars-per-sec", 1) == 0
    assert "chars/s sampling one stream here" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--ensemble", "9"], r"--ensemble 9: experiment 'pick' has 4 trial\(s\) with a model"),
    (["--max-params", "10"], r"no trial's model has at most 10 parameters: t\d+ \([\d,]+ parameters > 10\)"),
    (["--max-size", "1kB"], r"no trial's model has at most 0.001 MB: t\d+ \("),
    (["--min-chars-per-sec", "1e12"], r"no trial's model has at least 1,000,000,000,000 chars/s"),
    (["--max-size", "five"], r"--max-size 'five': expected a size such as 5MB"),
    (["--ensemble", "0"], r"--ensemble must be >= 1"),
    (["--ensemble", "2", "--max-params", "10"], r"no ensemble of the top 2 trials has at most 10 parameters"),
])
def test_choices_nothing_can_meet_are_one_line(sweep_store, capsys, tmp_path, args, match):
    uri, _, _ = sweep_store
    one_line_error(capsys, "best", "--tracking-uri", uri, "--export", tmp_path / "x.pt", *args, match=match)
    assert not (tmp_path / "x.pt").exists()
    one_line_error(capsys, "best", "--tracking-uri", uri, "--ensemble", "2", match="give --export PATH too")


def test_members_over_different_vocabularies_are_refused(tmp_path, capsys):
    from charsearch.core.errors import UsageError
    from charsearch.ship.candidates import Candidate, Constraints, Splits, ensemble_of

    from .conftest import write_model
    write_model(tmp_path / "a.pt", "abc", seed=1)
    write_model(tmp_path / "b.pt", "abd", seed=2)
    pool = [Candidate(t, t, 1.0, artifact.load(tmp_path / f"{t}.pt"), 1) for t in ("a", "b")]
    with pytest.raises(UsageError, match="an ensemble mixes next-character probabilities over one vocabulary; its "
                                         r"members have 3 and 3 characters \(not both: 'cd'\)"):
        ensemble_of(pool, Splits(None, None, None), Constraints(), rounds=4)


def ensemble_file(tmp_path):
    from .conftest import write_model
    for seed in (1, 2):
        write_model(tmp_path / f"m{seed}.pt", "abcd\n", "gru", 8, seed=seed)
    members = [artifact.load(tmp_path / f"m{seed}.pt") for seed in (1, 2)]
    artifact.save(tmp_path / "e.pt", artifact.EnsembleFile(members, [0.25, 0.75], members[0].vocab).to_dict())
    return tmp_path / "e.pt"


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw.update(weights=[0.5, 0.75]), "one weight in \\(0, 1\\] per member, summing to 1"),
    (lambda raw: raw.update(weights=[-0.25, 1.25]), "one weight in"),
    (lambda raw: raw.update(weights=[1.0]), "one weight in"),
    (lambda raw: raw.update(members=[]), "a list of 1 to 64 members"),
    (lambda raw: raw["members"][1]["config"].update(rnn_size=20000), "rnn.weight_ih_l0 has shape"),
    (lambda raw: raw["members"][0].pop("state_dict"), "no 'state_dict'"),
    (lambda raw: raw.update(vocab=list("abcd")), "vocab has 4 entries, model expects 5"),
])
def test_a_tampered_ensemble_file_is_refused_before_anything_is_built(tmp_path, capsys, change, match):
    path = ensemble_file(tmp_path)
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)
    for cmd in (["inspect"], ["sample", "--length", "5"]):
        one_line_error(capsys, cmd[0], path, *cmd[1:], match=f"damaged charsearch file \\(.*{match}")


def test_the_report_draws_val_against_size_and_speed_and_names_the_test_gap(sweep_store, capsys, tmp_path):
    from charsearch.ship.report.plots import front
    uri, _, _ = sweep_store
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "selection bias: the chosen trial" in out
    assert (tmp_path / "rep" / "tradeoff.png").stat().st_size > 10_000
    html = (tmp_path / "rep" / "tradeoff.html").read_text()
    assert "Pareto front" in html and "chosen (t" in html
    # the front: no point on it is beaten on both axes
    points = [(1.0, 3.0), (2.0, 2.5), (3.0, 2.7), (4.0, 2.0)]
    assert front(points, lower_x=True) == [0, 1, 3] and front(points, lower_x=False) == [3]


def test_an_exported_ensemble_is_what_gets_registered(sweep_store, capsys, tmp_path):
    import mlflow
    import pandas as pd
    uri, _, _ = sweep_store
    assert best(uri, "--export", tmp_path / "e.pt", "--ensemble", 2, "--register", "pick-ens") == 0
    out = capsys.readouterr().out
    version = mlflow.MlflowClient(uri).get_model_version("pick-ens", "1")
    ens = artifact.load(tmp_path / "e.pt")
    assert version.tags["trial_id"] == ens.summary["ensemble_trials"] and "registered pick-ens version 1" in out
    assert version.tags["architecture"] == ens.label
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/pick-ens/1")
    (text,) = model.predict(pd.DataFrame([{"prime_text": "", "length": 30, "seed": 1}]))
    assert len(text) == 30


def test_an_ensemble_of_models_trained_on_other_data_or_splits_is_refused(sweep_store, tmp_path):
    _, root, _ = sweep_store
    a, b = artifact.load(root / "m11.pt"), artifact.load(root / "m12.pt")
    artifact.ensemble_file([a, b], [0.5, 0.5], {})  # one sweep's: fine
    b.summary["val_frac"] = 0.2
    with pytest.raises(UsageError, match=r"trained on different data or splits \(val_frac 0.1 and 0.2\)"):
        artifact.ensemble_file([a, b], [0.5, 0.5], {})
