import collections
import pickle
import time
import warnings

import pytest
import torch

from charsearch.core import artifact
from charsearch.core.data import Vocab
from charsearch.core.errors import UsageError
from charsearch.core.model import CharRNN

from .conftest import one_line_error, write_model


def model_file(tmp_path, **summary):
    path = tmp_path / "model.pt"
    return path, write_model(path, "abcde", layers=2, **{"val_loss": 1.5, **summary})


def test_model_file_is_plain_data_and_rebuilds_the_same_model(tmp_path):
    path, m = model_file(tmp_path, trial_id="t1")
    raw = torch.load(path, weights_only=True)  # no code can run on load
    assert raw["format"] == "charsearch-model" and raw["version"] == 1
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in raw["state_dict"].values())
    mf = artifact.load(path)
    assert mf.summary["trial_id"] == "t1" and mf.vocab.chars == tuple("abcde")
    x = torch.randint(0, 5, (2, 4))
    torch.testing.assert_close(mf.build()(x)[0], m.eval()(x)[0])


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("make, match", [
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), "no charsearch format tag"),
    (lambda p: p.write_bytes(b"just some text"), "not a charsearch model file: not a file torch.save wrote"),
    (lambda p: p.write_bytes(b""), "not a charsearch model file"),
    (lambda p: torch.save({"format": "charsearch-model", "version": 99}, p), "version 99 is newer"),
    (lambda p: torch.save({"format": "charsearch-model", "version": 1, "x": Evil()}, p), "could run code"),
    (lambda p: torch.save(collections.OrderedDict(a=1), p), "no charsearch format tag"),
])
def test_files_that_are_not_ours_are_refused_in_one_line(tmp_path, make, match, capfd):
    bad = tmp_path / "bad.pt"
    make(bad)
    with pytest.raises(UsageError, match=match) as e:
        artifact.load(bad)
    assert "\n" not in str(e.value)
    assert "this must never run" not in capfd.readouterr().out


def test_truncated_file_is_refused(tmp_path):
    path, _ = model_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="not a charsearch model file, or truncated"):
        artifact.load(path)


def test_weights_that_do_not_fit_the_architecture_are_damaged(tmp_path):
    path, _ = model_file(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["config"]["rnn_size"] = 16
    torch.save(raw, path)
    with pytest.raises(UsageError, match="damaged"):
        artifact.load(path)


def doctor(path, change) -> None:
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def set_config(**values):
    return lambda raw: raw["config"].update(values)


def set_weight(name, index, value):
    return lambda raw: raw["state_dict"][name].view(-1).__setitem__(index, value)


@pytest.mark.parametrize("change, match", [
    (set_config(rnn_size=20000), r"rnn.weight_ih_l0 has shape \(24, 5\); the config needs \(60000, 5\)"),
    (set_config(num_layers=1000000), r"config num_layers is 1000000; expected an integer in \[1, 64\]"),
    (set_config(rnn_size=10 ** 400), r"config rnn_size is <an integer of 1,329 bits>"),
    (set_config(num_layers=3), "weights do not match the config: rnn.bias_hh_l2"),
    (set_config(model="cnn"), "config model is 'cnn'; expected one of rnn, lstm, gru"),
    (set_config(vocab_size=6), "vocab has 5 entries, model expects 6"),
    (lambda raw: raw["config"].pop("dropout"), "config lacks dropout"),
    (lambda raw: raw.update(unk=9), "unknown-symbol id 9"),
    (set_weight("head.weight", 0, float("nan")), "head.weight holds NaN or infinite values"),
    (set_weight("rnn.weight_hh_l1", 3, float("inf")), "rnn.weight_hh_l1 holds NaN or infinite values"),
])
def test_a_doctored_config_is_refused_before_any_model_is_built(tmp_path, change, match):
    """A small file whose config asks for a huge model is refused by arithmetic, at once: nothing is
    built from the config before the weights the file carries are checked against it."""
    path, _ = model_file(tmp_path)
    doctor(path, change)
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=match) as e:
        artifact.load(path)
    assert time.monotonic() - t0 < 2
    assert str(e.value).startswith(f"{path}: damaged charsearch file (") and "\n" not in str(e.value)


@pytest.mark.parametrize("write", [
    lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)),
    # torch's legacy format names each storage's size in its pickle: a few bytes could declare gigabytes
    lambda p: torch.save({"format": "charsearch-model", "version": 1}, p, _use_new_zipfile_serialization=False),
])
def test_a_foreign_pickle_or_the_legacy_format_is_refused_without_torch_warnings(tmp_path, write):
    path = tmp_path / "raw.pkl"
    write(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match="not a file torch.save wrote"):
            artifact.load(path)
    assert [str(w.message) for w in caught] == []


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path, _ = model_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        artifact.save(path, {"x": Evil()} | {"y": lambda: 0})  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_written_files_get_the_permissions_the_umask_gives(tmp_path):
    """Files written atomically are readable by whoever the umask lets read them (shared storage, serving)."""
    import os

    from charsearch.core.files import UMASK
    artifact.save(tmp_path / "m.pt", {"format": artifact.MODEL_FORMAT})
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert os.umask(UMASK) == UMASK  # reading it left it unchanged


def recompress(path, out) -> None:
    """The same archive with every entry DEFLATE-compressed (torch.save stores them)."""
    import zipfile
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))


def test_a_compressed_archive_is_refused_before_it_expands(tmp_path):
    """A few kilobytes on disk that would expand to 400 MB: refused from the sizes the archive declares."""
    path, _ = model_file(tmp_path)
    doctor(path, lambda raw: raw["summary"].update(bomb=torch.zeros(100_000_000)))
    small = tmp_path / "small.pt"
    recompress(path, small)
    assert small.stat().st_size < 2_000_000
    with pytest.raises(UsageError, match=r"archive entry .* is compressed, which torch.save never does"):
        artifact.load(small)


def test_fields_a_model_file_does_not_know_are_dropped_and_never_exported(tmp_path):
    path, _ = model_file(tmp_path, trial_id="t1")
    doctor(path, lambda raw: raw["summary"].update(extra=torch.ones(20_000_000), note="x"))
    assert path.stat().st_size > 80_000_000
    mf = artifact.load(path)
    assert mf.summary == {"val_loss": 1.5, "trial_id": "t1"}
    artifact.export(path, tmp_path / "out.pt")
    assert (tmp_path / "out.pt").stat().st_size < 100_000
    assert set(torch.load(tmp_path / "out.pt", weights_only=True)["summary"]) == {"val_loss", "trial_id"}


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw["summary"].update(epoch="two"), "summary epoch is 'two'; expected a number"),
    (lambda raw: raw["summary"].update(trial_id=b"abc"), "summary trial_id is b'abc'; expected a string"),
    (lambda raw: raw["summary"].update(val_loss=True), "summary val_loss is True; expected a number"),
    (lambda raw: raw["summary"].update(trial_id=torch.zeros(3)), "summary trial_id is tensor"),
    (lambda raw: raw.update(summary=[1, 2]), "summary is not a mapping"),
    (lambda raw: raw.pop("state_dict"), "no 'state_dict'"),
    (lambda raw: raw.update(config=7), "config is not a mapping"),
    (lambda raw: raw.update(version="1"), "format version '1' is newer"),
])
def test_every_value_of_a_model_file_is_checked_against_its_schema(tmp_path, change, match):
    path, _ = model_file(tmp_path)
    doctor(path, change)
    with pytest.raises(UsageError, match=match) as e:
        artifact.load(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw["config"].update(cutoffs=[900, 100]), "config cutoffs is \\[900, 100\\]; expected at most 8"),
    (lambda raw: raw["config"].update(cutoffs=[1000]), "config cutoffs"),
    (lambda raw: raw["state_dict"]["rank"].fill_(0.0), "rank is not a ranking of the vocabulary"),
    (lambda raw: raw["config"].update(cutoffs=[100]), "weights do not match the config"),
])
def test_an_adaptive_softmax_file_is_checked_too(tmp_path, change, match):
    m = CharRNN(1000, "gru", 16, 1, cutoffs=[100, 400])
    m.rank_by(torch.rand(1000))
    path = tmp_path / "a.pt"
    artifact.save(path, artifact.ModelFile(dict(m.config), Vocab(tuple(chr(0x4E00 + i) for i in range(1000))),
                                           m.state_dict()).to_dict())
    x = torch.randint(0, 1000, (2, 5))
    torch.testing.assert_close(artifact.load(path).build()(x)[0], m.eval()(x)[0])
    doctor(path, change)
    with pytest.raises(UsageError, match=match):
        artifact.load(path)


def test_a_model_file_from_before_the_adaptive_softmax_loads(tmp_path):
    path, m = model_file(tmp_path)
    doctor(path, lambda raw: raw["config"].pop("cutoffs"))
    assert artifact.load(path).config["cutoffs"] == []


def expand_weights(raw, part=lambda raw: raw) -> None:
    """Every weight a stride-0 view of one stored element: torch.save writes one float for each."""
    weights = part(raw)["state_dict"]
    for name, t in weights.items():
        weights[name] = torch.full((1,), 0.01).expand(*t.shape)


@pytest.mark.parametrize("change, refused", [
    (expand_weights, True),
    (lambda raw: raw["state_dict"].update(  # two weights reading the same stored bytes
        {"head.bias": raw["state_dict"]["head.weight"][0, :5]}), True),
    (lambda raw: raw["state_dict"].update({"head.bias": torch.zeros(10)[::2]}), False),  # each element stored
])
def test_every_element_of_a_weight_must_be_stored_in_the_file(tmp_path, change, refused):
    """A small file cannot stand for a large model: an expanded or overlapping view is refused before any
    model is built; a strided view whose elements each have their own bytes is only a layout."""
    path, _ = model_file(tmp_path)
    doctor(path, change)
    if not refused:
        assert artifact.load(path).state_dict["head.bias"].shape == (5,)
        return
    with pytest.raises(UsageError, match="a file must hold every element it stands for") as e:
        artifact.load(path)
    assert str(e.value).startswith(f"{path}: damaged charsearch file (")


def test_an_expanded_wide_model_is_refused_before_anything_is_allocated(tmp_path, capsys):
    """A 2x4096 LSTM (537 M parameters) stood for by a file of a few kilobytes: `inspect` refuses it in one
    line instead of allocating gigabytes."""
    import resource
    m = CharRNN(5, "lstm", 8, 2)
    config = {**m.config, "rnn_size": 4096}
    from charsearch.core.model import expected_shapes
    weights = {name: torch.full((1,), 0.01).expand(*shape) for name, shape in expected_shapes(config).items()}
    path = tmp_path / "wide.pt"
    torch.save(artifact.ModelFile(config, Vocab(tuple("abcd\n")), {}).to_dict() | {"state_dict": weights}, path)
    assert path.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one_line_error(capsys, "inspect", path, match="a file must hold every element it stands for")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: far below the 8.6 GB asked


def test_an_ensemble_member_or_a_checkpoints_optimizer_state_is_checked_the_same(tmp_path):
    from charsearch.cli import main
    path, _ = model_file(tmp_path)
    ens = tmp_path / "e.pt"
    mf = artifact.load(path)
    artifact.save(ens, artifact.EnsembleFile([mf], [1.0], mf.vocab).to_dict())
    doctor(ens, lambda raw: expand_weights(raw, lambda r: r["members"][0]))
    with pytest.raises(UsageError, match="a file must hold every element"):
        artifact.load(ens)
    ckpt = tmp_path / "c.pt"
    torch.save({"format": artifact.CHECKPOINT_FORMAT, "version": 1, "model": torch.load(path, weights_only=True),
                "state": {"optimizer": {"state": {0: {"exp_avg": torch.zeros(1).expand(10_000, 10_000)}}}},
                "train_config": {}}, ckpt)
    with pytest.raises(UsageError, match="a file must hold every element"):
        artifact.safe_load(ckpt, "charsearch checkpoint")
    assert main(["inspect", str(ckpt)]) == 2


def test_the_weights_a_command_loaded_are_its_own(tmp_path):
    """Once loaded, a model file truncated or copied over in place (a user's cp, a full disk) changes
    nothing the command holds."""
    path, m = model_file(tmp_path)
    (tmp_path / "o").mkdir()
    other, _ = model_file(tmp_path / "o")
    mf = artifact.load(path)
    before = {k: v.clone() for k, v in mf.state_dict.items()}
    path.write_bytes(other.read_bytes())  # in place: same inode
    with open(path, "r+b") as f:
        f.truncate(100)
    assert all(torch.equal(before[k], v) for k, v in mf.state_dict.items())
    x = torch.randint(0, 5, (2, 4))
    torch.testing.assert_close(mf.build()(x)[0], m.eval()(x)[0])


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    path, _ = model_file(tmp_path)
    unpickle = artifact._unpickle

    def written_meanwhile(f, *args):
        obj = unpickle(f, *args)
        with open(path, "ab") as g:  # another program appends while the file is read
            g.write(b"\0" * 10)
        return obj
    monkeypatch.setattr(artifact, "_unpickle", written_meanwhile)
    with pytest.raises(UsageError, match="changed while it was read .* run the command again"):
        artifact.load(path)
