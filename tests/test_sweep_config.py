"""Sweep files are validated before anything starts: one clear line naming file, key and problem."""

import re
import time
from pathlib import Path

import pytest
import yaml

from charsearch.cli import main
from charsearch.core.config import ConfigError
from charsearch.search.sweepfile import load_sweep

from .conftest import ROOT, make_text

BASE = """
name: t
data: {corpus: corpus.txt}
search_space:
  rnn_size: {choice: [16, 32]}
"""


@pytest.fixture
def sweepdir(workdir):
    (workdir / "corpus.txt").write_text(make_text(20_000))
    return workdir


def write(sweepdir, text: str) -> Path:
    p = sweepdir / "s.yaml"
    p.write_text(text)
    return p


def edit(**sections) -> str:
    d = yaml.safe_load(BASE)
    for k, v in sections.items():
        d[k] = v
    return yaml.safe_dump(d)


def test_shipped_sweep_files_are_valid(workdir):
    corpus = workdir / "data" / "tinyshakespeare" / "input.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text(make_text(50_000))
    for name in ("smoke.yaml", "shakespeare.yaml"):
        s = load_sweep(ROOT / "sweeps" / name)
        assert s.space and s.num_samples >= 4
    smoke = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    assert smoke.gpu == 0 and smoke.sweep_time <= 120
    big = load_sweep(ROOT / "sweeps" / "shakespeare.yaml")
    assert {"rnn_size", "num_layers", "dropout", "seq_length", "batch_size", "model", "learning_rate",
            "weight_decay"} <= set(big.space)
    assert 0 < big.gpu < 1 and 1200 <= big.sweep_time <= 1800


def test_a_minimal_file_gets_defaults(sweepdir):
    s = load_sweep(write(sweepdir, BASE))
    assert s.name == "t" and s.algorithm == "tpe" and s.scheduler == "asha" and s.time_attr == "chars_trained"
    assert s.tracking_uri == "sqlite:///mlruns/mlflow.db"
    cfg = s.trial_config({"rnn_size": 32})
    assert cfg.rnn_size == 32 and cfg.data == "corpus.txt" and cfg.max_epochs == s.trial_max_epochs


def test_exponents_without_a_dot_are_numbers(sweepdir):
    s = load_sweep(write(sweepdir, BASE + "  learning_rate: {log_float: [1e-4, 1e-2]}\n"))
    assert s.space["learning_rate"].values == [1e-4, 1e-2]


@pytest.mark.parametrize("text, where, problem", [
    (BASE + "serach: {}\n", "serach", "did you mean 'search'"),
    (edit(search={"num_sample": 4}), "search.num_sample", "did you mean 'num_samples'"),
    (edit(train={"rnn_sise": 3}), "train.rnn_sise", "did you mean 'rnn_size'"),
    (edit(search_space={"dropuot": {"float": [0, 0.5]}}), "search_space.dropuot", "did you mean 'dropout'"),
    (edit(search_space={"dropout": {"uniform": [0, 0.5]}}), "search_space.dropout.uniform", "valid: choice, float, int, log_float"),
    (edit(search={"num_samples": "four"}), "search.num_samples", "must be an integer"),
    (edit(train={"dropout": "high"}), "train.dropout", "must be a number"),
    (edit(resources={"gpu": "lots"}), "resources.gpu", "GPU fraction"),
    (edit(search_space={"dropout": {"float": [0.5, 0.5]}}), "search_space.dropout.float", "empty or inverted"),
    (edit(search_space={"num_layers": {"int": [3, 1]}}), "search_space.num_layers.int", "empty or inverted"),
    (edit(search_space={"rnn_size": {"choice": []}}), "search_space.rnn_size.choice", "non-empty list"),
    (edit(search_space={"learning_rate": {"log_float": [0, 0.1]}}), "search_space.learning_rate.log_float", "low > 0"),
    (edit(search_space={"num_layers": {"float": [1, 3]}}), "search_space.num_layers.float", "is an integer"),
    (edit(search_space={"dropout": {"float": [0.0, 1.5]}}), "search_space.dropout", r"must be in \[0, 1\)"),
    (edit(search_space={"model": {"choice": ["lstm", "cnn"]}}), "search_space.model", "must be one of rnn, lstm, gru"),
    (edit(search_space={}), "search_space", "at least one"),
    (edit(train={"max_epochs": 3}), "train.max_epochs", "use budget.trial_max_epochs"),
    (edit(train={"rnn_size": 64}), "search_space.rnn_size", "also fixed in train"),
    (edit(search_space={"eval_chars": {"choice": [10_000, 20_000]}}), "search_space.eval_chars", "would not compare"),
    (edit(data={"corpus": "nowhere.txt"}), "data.corpus", "nowhere.txt: no such file"),
    (edit(data={"corpus": "corpus.txt", "val_frac": 0.5, "train_frac": 0.6}), "data.val_frac", "must be <= 1"),
    (edit(scheduler={"time_attr": "training_iteration"}), "scheduler.time_attr", "chars_trained, epoch"),
    (edit(budget={"sweep_time": -5}), "budget.sweep_time", "out of range"),
    (edit(name=""), "name", "required"),
    (edit(search={"points_to_evaluate": {"rnn_size": 16}}), "search.points_to_evaluate", "must be a list"),
    (edit(search={"points_to_evaluate": [16]}), "search.points_to_evaluate[0]", "must be a mapping"),
    (edit(search={"points_to_evaluate": [{"rnn_size": 16}, {"rnn_sise": 16}]}),
     "search.points_to_evaluate[1].rnn_sise", "did you mean 'rnn_size'"),
    (edit(search={"points_to_evaluate": [{"rnn_size": 24}]}), "search.points_to_evaluate[0].rnn_size",
     r"24 is outside the search space \(choice \[16, 32\]\)"),
    (edit(search={"points_to_evaluate": [{"rnn_size": "big"}]}), "search.points_to_evaluate[0].rnn_size",
     "must be an integer"),
    (edit(search={"startup_trials": -1}), "search.startup_trials", "out of range"),
    (edit(search={"warm_start": "yes"}), "search.warm_start", "must be true or false"),
    (edit(search={"warm_start": 1}), "search.warm_start", "must be true or false"),
    (edit(search={"num_samples": True}), "search.num_samples", "must be an integer"),
    (edit(search_space="auto", budget={"sweep_time": 60}, search={"points_to_evaluate": [{"dropout": 0}]}),
     "search.points_to_evaluate", "not with search_space: auto"),
])
def test_bad_sweep_files(sweepdir, text, where, problem):
    path = write(sweepdir, text)
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {where}"), msg
    assert re.search(problem, msg), msg


def test_points_to_evaluate_are_checked_against_the_space_and_dry_run_keeps_them(sweepdir, capsys):
    space = {"rnn_size": {"choice": [16, 32]}, "dropout": {"float": [0.0, 0.5]},
             "learning_rate": {"log_float": [1e-3, 1e-2]}}
    path = write(sweepdir, edit(search_space=space, search={"startup_trials": 2, "points_to_evaluate": [
        {"rnn_size": 32, "dropout": 0, "learning_rate": 0.01}, {"dropout": 0.5}]}))
    s = load_sweep(path)
    # both ends of a range are allowed; an int for a float option is that float
    assert s.points_to_evaluate == [{"rnn_size": 32, "dropout": 0.0, "learning_rate": 0.01}, {"dropout": 0.5}]
    assert main(["sweep", str(path), "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["search"]["points_to_evaluate"] == s.points_to_evaluate
    assert resolved["search"]["startup_trials"] == 2 and s.startup_trials == 2
    assert load_sweep(write(sweepdir, BASE)).startup_trials is None  # Optuna's default


def test_bad_sweep_file_through_the_cli(sweepdir, capsys):
    path = write(sweepdir, edit(search_space={"dropout": {"float": [0.7, 0.2]}}))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search_space.dropout.float: empty or inverted range" in err
    assert not (sweepdir / "mlruns").exists() and not (sweepdir / "ray_results").exists()
    assert main(["sweep", "missing.yaml"]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    write(sweepdir, "name: [unclosed")
    assert main(["sweep", str(sweepdir / "s.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_sweep_and_resources(sweepdir, capsys):
    path = write(sweepdir, edit(resources={"cpu": 2, "gpu": 0.25}))
    assert main(["sweep", str(path), "--dry-run", "--num-samples", "7"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)  # a sweep file, with the command line's overrides in it
    assert resolved["search"]["num_samples"] == 7 and resolved["search_space"] == {"rnn_size": {"choice": [16, 32]}}
    assert "# resources per trial: cpu 2, gpu 0.25" in out
    again = sweepdir / "again.yaml"
    again.write_text(out)
    assert load_sweep(again).num_samples == 7
    assert not (sweepdir / "mlruns").exists()



def laughs(depth: int) -> str:
    """A YAML flow list of a few hundred bytes whose anchors make 9**depth leaves (billion laughs)."""
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    return "[" + ", ".join(items) + "]"


def test_a_self_repeating_value_is_quoted_as_a_short_excerpt(sweepdir, capsys):
    path = write(sweepdir, BASE + f"train:\n  savefile: {laughs(9)}\n")
    t0 = time.monotonic()
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - t0 < 5  # the value is never expanded
    assert len(err.splitlines()) == 1 and len(err) < 400, err[:1000]
    assert "train.savefile: must be a string; got [[" in err


@pytest.mark.parametrize("text, where, problem", [
    (BASE + "name: u\n", "not valid YAML", "duplicate key 'name'"),
    (BASE.replace("rnn_size: {choice: [16, 32]}", "rnn_size: {choice: [1000000000]}"), "search_space.rnn_size",
     "must be <= 65,536; got 1000000000"),
    (BASE.replace("rnn_size: {choice: [16, 32]}", "num_layers: {int: [1, 10000]}"), "search_space.num_layers",
     "must be <= 64; got 10000"),
    (BASE + "search: {max_concurrent: 0}\n", "search.max_concurrent", "out of range: 0"),
    (BASE + "train: {savefile: runs/" + "x" * 100_000 + "}\n", "train.savefile",
     r"got 'runs/x{55}'\.\.\. \(100,005 characters\)"),
    (BASE + "search: {seed: " + "9" * 5000 + "}\n", "not valid YAML", "limit"),
])
def test_values_no_trial_could_use_are_refused_in_one_short_line(sweepdir, capsys, text, where, problem):
    path = write(sweepdir, text)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err[:1000]
    assert where in err and re.search(problem, err), err


def test_a_search_space_whose_largest_trial_cannot_fit_is_refused(sweepdir, capsys):
    """Each size is allowed on its own; together, at their maxima, no device could train them."""
    path = write(sweepdir, BASE.replace("rnn_size: {choice: [16, 32]}", "rnn_size: {choice: [16, 65536]}\n"
                                        "  num_layers: {int: [1, 64]}\n  batch_size: {choice: [8, 4096]}"))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"search_space: the largest trial \(rnn_size 65536, num_layers 64, batch_size 4096\): "
                     r"lstm 64x65536, .* parameters, about [\d,.]+ TB to train, more than the", err), err
    assert not (sweepdir / "mlruns").exists() and not (sweepdir / "ray_results").exists()


@pytest.mark.parametrize("space, problem", [
    ({"min_ss": {"float": [0.1, 0.95]}, "start_ss": {"float": [0.9, 1.0]}},
     r"search_space.min_ss: must be <= start_ss \(0.9\); got 0.95 \(a draw of min_ss 0.95, start_ss 0.9\)"),
    ({"start_ss": {"choice": [0.95, 1.0]}, "min_ss": {"choice": [0.2, 0.96]}},
     r"search_space.min_ss: must be <= start_ss \(0.95\); got 0.96 \(a draw of min_ss 0.96, start_ss 0.95\)"),
])
def test_every_pair_of_searched_keys_is_a_valid_draw(sweepdir, space, problem):
    path = write(sweepdir, edit(search_space=space, train={"use_ss": True}))
    with pytest.raises(ConfigError, match=problem):
        load_sweep(path)
    ok = write(sweepdir, edit(search_space={"min_ss": {"float": [0.1, 0.85]}, "start_ss": {"float": [0.9, 1.0]}}))
    assert set(load_sweep(ok).space) == {"min_ss", "start_ss"}


def test_large_lists_and_files_are_refused_in_linear_time(sweepdir, capsys):
    values = list(range(16, 16 + 50_000))
    for n, problem in ((1000, None), (10_000, "has 10,000 values; at most 1,000"),
                       (50_000, "has 50,000 values; at most 1,000")):
        path = write(sweepdir, edit(search_space={"rnn_size": {"choice": values[:n]}}))
        t0 = time.monotonic()
        code = main(["sweep", str(path), "--dry-run"])
        err = capsys.readouterr().err.strip()
        assert time.monotonic() - t0 < 20, n
        if problem is None:
            assert code == 0, err
        else:
            assert code == 2 and len(err.splitlines()) == 1 and problem in err, err
    big = write(sweepdir, BASE + "# " + "x" * 2_000_000 + "\n")
    assert main(["sweep", str(big), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2,000,0" in err and "at most 1,000,000 bytes" in err, err


@pytest.mark.parametrize("name", ["x" * 300, "a\x00b", "two\nlines", "tab\there", ".hidden", "a/b"])
def test_names_that_cannot_be_an_experiment_a_folder_and_one_line_are_refused(sweepdir, capsys, name):
    path = write(sweepdir, edit(name=name))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name: must be 1 to 100 printable characters" in err, err
    assert not (sweepdir / "mlruns").exists() and not (sweepdir / "ray_results").exists()


@pytest.mark.parametrize("test_frac, match", [
    ("1e-12", r"test_frac 1e-12 gives a test split of 0 characters; scoring needs at least 2"),
    ("0.8999999999", r"the train split has 0 characters, too few for one batch"),
])
def test_a_dry_run_refuses_splits_that_round_to_nothing_as_the_sweep_does(sweepdir, capsys, test_frac, match):
    from .conftest import one_line_error
    path = write(sweepdir, BASE)
    one_line_error(capsys, "sweep", path, "--dry-run", "--test-frac", test_frac, match=match)


def test_a_dry_run_says_how_many_characters_each_split_holds(sweepdir, capsys):
    path = write(sweepdir, BASE)
    assert main(["sweep", str(path), "--dry-run", "--test-frac", "0.1"]) == 0
    m = re.search(r"# splits: train 0.8, val 0.1, test 0.1 of the corpus \(([\d,]+) / ([\d,]+) / ([\d,]+) characters",
                  capsys.readouterr().out)
    n = len((sweepdir / "corpus.txt").read_text())
    assert m and sum(int(x.replace(",", "")) for x in m.groups()) == n


def test_an_address_where_no_cluster_listens_is_refused_in_one_line_before_anything_is_written(sweepdir, capsys,
                                                                                                 monkeypatch):
    """Ray itself retries such an address for minutes; a typo or a stopped cluster is said at once."""
    import socket
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write(sweepdir, BASE)
    for argv in (["sweep", path, "--address", f"127.0.0.1:{port}"],
                 ["sweep", "--data", "corpus.txt", "--time", "60", "--address", f"127.0.0.1:{port}"],
                 ["sweep", "--data", "corpus.txt", "--time", "60", "--address", f"127.0.0.1:{port}", "--dry-run"]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"no Ray cluster answers at 127.0.0.1:{port}" in err, err
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # where Ray's 'auto' looks first
    assert main(["sweep", str(path), "--address", "auto"]) == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "localhost")  # not host:port
    assert main(["sweep", str(path)]) == 2
    assert "Ray address 'localhost' (--address, ray.address or RAY_ADDRESS): expected host:port" in capsys.readouterr().err
    write(sweepdir, edit(ray={"address": f"127.0.0.1:{port}"}))
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["sweep", str(path)]) == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (sweepdir / "mlruns").exists() and not (sweepdir / "ray_results").exists()


def test_a_host_whose_lookup_hangs_is_refused_within_the_reach_timeout(sweepdir, capsys, monkeypatch):
    """A socket's timeout does not bound getaddrinfo: a resolver that never answers must not hold the sweep."""
    import socket
    import threading

    from charsearch.search import resources
    never = threading.Event()

    def hung_lookup(*args, **kwargs):  # a resolver that answers only once the test has its result
        never.wait(60)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 1))]
    monkeypatch.setattr(socket, "getaddrinfo", hung_lookup)
    monkeypatch.setattr(resources, "REACH_TIMEOUT_S", 0.5)
    assert main(["sweep", str(write(sweepdir, BASE)), "--address", "cluster.example:6379"]) == 2
    never.set()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "no Ray cluster answers at cluster.example:6379 (looking up cluster.example took over 0.5 s)" in err, err
    assert not (sweepdir / "mlruns").exists()


def test_a_host_is_reached_at_any_of_its_addresses(monkeypatch):
    """As socket.create_connection: localhost's first address (::1) may refuse where Ray listens on 127.0.0.1."""
    import socket

    from charsearch.core.errors import UsageError
    from charsearch.search import resources
    with socket.socket() as closed:  # bound, then released: nothing listens there
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        addresses = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", refused),
                     (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: addresses)
        resources.check_reachable(f"cluster.example:{port}")  # the second address answers
        addresses.pop()
        with pytest.raises(UsageError, match=f"no Ray cluster answers at cluster.example:{port}"):
            resources.check_reachable(f"cluster.example:{port}")
