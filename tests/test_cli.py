"""The command line: every bad input ends in one clear line on stderr, exit code 2, nothing written."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from charsearch.cli import main

from .conftest import make_text, one_line_error


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(workdir, small_corpus, capsys):
    """A tiny trained model, exported: (checkpoint folder, model file)."""
    code = main(["train", "--data", str(small_corpus), "--rnn-size", "16", "--num-layers", "1", "--batch-size", "8",
                 "--seq-length", "16", "--max-epochs", "0.3", "--eval-every", "50", "--quiet"])
    assert code == 0
    ckpt = sorted((workdir / "cv").glob("*.pt"))[-1]
    assert main(["export", str(ckpt), "--out", str(workdir / "model.pt")]) == 0
    capsys.readouterr()
    return ckpt, workdir / "model.pt"


# --- corpus problems ------------------------------------------------------------------------------

@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"caf\xe9 au lait", r"not UTF-8 .*byte offset 3"),
])
def test_bad_corpus_files(capsys, workdir, content, match):
    (workdir / "bad.txt").write_bytes(content)
    one_line_error(capsys, "train", "--data", "bad.txt", match=match)
    assert not (workdir / "cv").exists()


def test_missing_corpus(capsys, workdir):
    one_line_error(capsys, "train", "--data", "missing.txt", match="missing.txt: no such file")
    one_line_error(capsys, "data", "info", "missing.txt", match="no such file")


def test_corpus_too_short_says_what_fits(capsys, workdir):
    (workdir / "short.txt").write_text(make_text(2000))
    line = one_line_error(capsys, "train", "--data", "short.txt", match="train split has 1,800 characters")
    assert "--batch-size 35 --seq-length 50 fits" in line
    assert not (workdir / "cv").exists()


def test_the_val_split_need_not_hold_a_training_batch(capsys, workdir):
    """Fair validation reads its own 16 streams: a val split smaller than one batch is fine; 1 character is not."""
    (workdir / "c.txt").write_text(make_text(30_000))
    assert main(["train", "--data", "c.txt", "--batch-size", "50", "--seq-length", "50", "--val-frac", "0.05",
                 "--rnn-size", "16", "--max-epochs", "0.1", "--quiet"]) == 0  # val: 1,500 < 2,501 characters
    capsys.readouterr()
    one_line_error(capsys, "train", "--data", "c.txt", "--train-frac", "0.99995", "--val-frac", "0.00004",
                   "--checkpoint-dir", "cv2", match="val split has 1 characters; validation needs at least 2")


@pytest.mark.parametrize("argv, match", [
    (["--savefile", "runs/a"], "--savefile: must be a file name prefix"),
    (["--checkpoint-dir", "small.txt"], "--checkpoint-dir small.txt: a file, not a folder"),
    (["--device", "gpu0"], "--device: must be auto, cpu, cuda or cuda:N"),
])
def test_bad_output_places(capsys, workdir, small_corpus, argv, match):
    (workdir / "small.txt").write_text("x")
    one_line_error(capsys, "train", "--data", small_corpus, *argv, match=match)
    assert not (workdir / "cv").exists() and not (workdir / "runs").exists()


def test_bad_fractions_and_devices_outside_train(capsys, workdir, small_corpus, trained):
    _, model = trained
    one_line_error(capsys, "data", "info", small_corpus, "--train-frac", "2", match="each must be in \\[0, 1\\]")
    one_line_error(capsys, "eval", model, "--data", small_corpus, "--val-frac", "-0.1", match="each must be in")
    for cmd in ("sample", "eval"):
        extra = ["--data", str(small_corpus)] if cmd == "eval" else []
        one_line_error(capsys, cmd, model, *extra, "--device", "foo", match="--device 'foo': expected auto, cpu")
    (workdir / "adir").mkdir()
    one_line_error(capsys, "export", model, "--out", workdir / "adir", match="adir: a folder; give the path of a file")
    assert list((workdir / "adir").iterdir()) == []


# --- impossible hyperparameters -------------------------------------------------------------------

@pytest.mark.parametrize("flags, match", [
    (["--dropout", "1.5"], r"--dropout: must be in \[0, 1\)"),
    (["--num-layers", "0"], "--num-layers: must be > 0"),
    (["--rnn-size", "-4"], "--rnn-size: must be > 0"),
    (["--batch-size", "0"], "--batch-size: must be > 0"),
    (["--train-frac", "0.95", "--val-frac", "0.1"], "train_frac \\+ val_frac must be <= 1"),
    (["--model", "cnn"], "argument --model: invalid choice"),
    (["--rnn-size", "big"], "argument --rnn-size: invalid int value"),
    (["--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--warmup-iters", "-100"], "--warmup-iters: must be >= 0"),
    (["--warmup-iters", "1.5"], "argument --warmup-iters: invalid int value"),
])
def test_impossible_hyperparameters(capsys, workdir, small_corpus, flags, match):
    one_line_error(capsys, "train", "--data", small_corpus, *flags, match=match)
    assert not (workdir / "cv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, workdir, small_corpus):
    one_line_error(capsys, "train", "--data", small_corpus, "--device", "cuda", match="no CUDA GPU is available")
    one_line_error(capsys, "train", "--data", small_corpus, "--device", "cuda:1", match="no CUDA GPU")


# --- model files and sampling ---------------------------------------------------------------------

def test_sampling_errors(capsys, trained):
    _, model = trained
    one_line_error(capsys, "sample", model, "--temperature", "0", match="--temperature must be > 0")
    one_line_error(capsys, "sample", model, "--temperature", "-2", match="--temperature must be > 0")
    one_line_error(capsys, "sample", model, "--primetext", "Hello, ZQX!", match=r"characters .*'Z', 'Q', 'X'")
    one_line_error(capsys, "sample", model, "--device", "cuda:7", match="cuda")


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a charsearch model file"),
    (lambda p: torch.save({"state_dict": {}}, p), "no charsearch format tag"),
    (lambda p: torch.save({"format": "charsearch-model", "version": 2}, p), "newer than this charsearch reads"),
])
def test_model_files_that_are_not_ours(capsys, workdir, make, match):
    bad = workdir / "bad.pt"
    make(bad)
    for cmd in ("sample", "inspect"):
        one_line_error(capsys, cmd, bad, match=match)
    one_line_error(capsys, "export", bad, "--out", workdir / "out.pt", match=match)
    assert not (workdir / "out.pt").exists()


def test_truncated_model_file(capsys, trained, workdir):
    _, model = trained
    data = model.read_bytes()
    (workdir / "cut.pt").write_bytes(data[: len(data) - 200])
    one_line_error(capsys, "sample", workdir / "cut.pt", match="truncated")


def test_sample_eval_inspect_and_export(capsys, trained, small_corpus):
    ckpt, model = trained
    code, out, _ = run(capsys, "sample", model, "--primetext", "The cat", "--length", "80", "--seed", "3")
    assert code == 0 and out.startswith("The cat") and len(out) == len("The cat") + 80 + 1
    assert run(capsys, "sample", model, "--primetext", "The cat", "--length", "80", "--seed", "3")[1] == out
    code, out, _ = run(capsys, "sample", model, "--num-samples", "3", "--length", "20")
    assert code == 0 and out.count("--- sample") == 3
    code, out, _ = run(capsys, "eval", model, "--data", small_corpus)
    assert code == 0 and "nats/char" in out and "bits/char" in out
    recorded = torch.load(model, weights_only=True)["summary"]["val_loss"]
    assert float(out.split()[1]) == pytest.approx(recorded, abs=1e-4)  # same file, same number
    code, out, _ = run(capsys, "eval", model, "--data", small_corpus, "--split", "all")
    assert code == 0 and "over 29,999 characters" in out
    one_line_error(capsys, "eval", model, "--data", small_corpus, "--split", "test", match="test split is empty")
    for target in (model, ckpt):
        code, out, _ = run(capsys, "inspect", target)
        assert code == 0 and "parameters" in out and "val loss" in out and "sha256" in out


def test_data_info_reports_the_train_splits_unigram_score_on_val(capsys, workdir, small_corpus):
    code, out, _ = run(capsys, "data", "info", small_corpus)
    ids = np.frombuffer(small_corpus.read_bytes(), np.uint8)
    train, val = ids[:27_000], ids[27_000:]
    counts = np.bincount(train, minlength=256)[sorted(set(ids))] + 1.0
    p = dict(zip(sorted(set(ids)), counts / counts.sum()))
    expected = -np.mean([np.log(p[c]) for c in val])
    assert code == 0 and f"score {expected:.4f} nats/char" in out and "unseen" not in out
    # lzma's size of the train split, per character: below the unigram score on a text with structure
    import lzma
    lz = len(lzma.compress(small_corpus.read_bytes()[:27_000], preset=6)) * 8 * np.log(2) / 27_000
    assert f"lzma       {lz:.4f} nats/char" in out and lz < expected
    # characters only the val split holds: counted, and scored as add-one smoothing scores them
    text = small_corpus.read_text()
    (workdir / "c.txt").write_text(text[:27_000] + "Z" * 30 + text[27_030:])
    code, out, _ = run(capsys, "data", "info", workdir / "c.txt")
    assert code == 0 and "unseen     30 val characters (1.0%) never occur in the train split" in out


def test_a_real_process_prints_no_traceback(workdir):
    r = subprocess.run([sys.executable, "-m", "charsearch", "train", "--data", "nowhere.txt"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# --- absurd and hostile inputs: refused before anything is allocated ------------------------------

@pytest.mark.parametrize("flags, match", [
    (["--rnn-size", "100000"], "--rnn-size: must be <= 65,536; got 100000"),
    (["--rnn-size", "1000000000"], "--rnn-size: must be <= 65,536"),
    (["--embed-size", "1000000000"], "--embed-size: must be <= 65,536"),
    (["--rnn-size", "16", "--num-layers", "10000", "--max-time", "5"], "--num-layers: must be <= 64; got 10000"),
    (["--rnn-size", "4096", "--num-layers", "8", "--batch-size", "2000", "--seq-length", "2000"],
     r"lstm 8x4096, vocabulary \d+, batch 2000 x seq 2000: [\d,]+ parameters, about [\d,.]+ TB to train, more than "
     r"the [\d,.]+ [GT]B available"),
])
def test_absurd_training_sizes_are_refused_up_front(capsys, workdir, small_corpus, flags, match):
    t0 = time.monotonic()
    one_line_error(capsys, "train", "--data", small_corpus, *flags, match=match)
    assert time.monotonic() - t0 < 5
    assert not (workdir / "cv").exists()


def test_a_checkpoint_whose_config_asks_for_a_huge_model_is_refused_before_resuming(capsys, workdir, small_corpus):
    from charsearch.core import artifact
    from charsearch.core.data import Vocab
    from charsearch.core.model import CharRNN
    part = artifact.model_part(CharRNN(5, "lstm", 16, 1), Vocab(tuple("abcde")))
    part["config"]["num_layers"] = 1_000_000
    torch.save({"format": artifact.CHECKPOINT_FORMAT, "version": 1, "model": part, "state": {}, "train_config": {}},
               workdir / "ckpt.pt")
    t0 = time.monotonic()
    one_line_error(capsys, "train", "--data", small_corpus, "--init-from", "ckpt.pt",
                   match=r"ckpt.pt: damaged charsearch file \(config num_layers is 1000000; expected an integer in "
                         r"\[1, 64\]\)")
    assert time.monotonic() - t0 < 5
    assert not (workdir / "cv").exists()


def test_absurd_sampling_requests_and_nan_weights_are_refused_up_front(capsys, trained, workdir):
    _, model = trained
    t0 = time.monotonic()
    one_line_error(capsys, "sample", model, "--num-samples", "1000000000",
                   match=r"1,000,000,000 samples of 2,000 characters would take about [\d,.]+ [GT]B at once")
    assert time.monotonic() - t0 < 5
    one_line_error(capsys, "sample", model, "--seed", str(2 ** 64), match=r"--seed must be in \[0, 2\*\*63 - 1\]")
    one_line_error(capsys, "sample", model, "--seed", "-1", match=r"--seed must be in \[0, 2\*\*63 - 1\]; got -1")
    one_line_error(capsys, "serve", model, "--port", "99999", match=r"--port must be in \[0, 65535\]")
    raw = torch.load(model, weights_only=True)
    raw["state_dict"]["head.bias"][0] = float("nan")
    torch.save(raw, workdir / "nan.pt")
    for cmd in ("sample", "inspect"):
        one_line_error(capsys, cmd, workdir / "nan.pt", match="head.bias holds NaN or infinite values")


def test_a_fifo_or_a_symlink_loop_is_named_for_what_it_is(capsys, workdir):
    os.mkfifo(workdir / "pipe")
    (workdir / "loop1").symlink_to("loop2")
    (workdir / "loop2").symlink_to("loop1")
    one_line_error(capsys, "train", "--data", "pipe", match="pipe: a named pipe \\(FIFO\\), not a regular file")
    one_line_error(capsys, "train", "--data", "loop1", match="loop1: a loop of symbolic links")
    one_line_error(capsys, "sample", "pipe", match="pipe: a named pipe")
    assert not (workdir / "cv").exists()


def test_reading_sweeps_from_no_store_creates_none(capsys, workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_line_error(capsys, "best", "--export", "model.pt", match="no sweeps recorded in sqlite:///mlruns/mlflow.db")
    one_line_error(capsys, "report", match="no sweeps recorded")
    one_line_error(capsys, "best", "--register", "two\nlines",
                   match=r"--register 'two\\nlines': a model name is 1 to 256 printable characters on one line")
    assert list(workdir.iterdir()) == []


def special_files(workdir) -> dict:
    """A FIFO, a socket, a device node (as root) and links to them: paths a write must never replace."""
    import socket
    import stat
    os.mkfifo(workdir / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(workdir / "sock"))
    found = {"pipe": stat.S_ISFIFO, "sock": stat.S_ISSOCK}
    if os.geteuid() == 0:  # a private copy of /dev/null: the machine's own is never put at risk
        os.mknod(workdir / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        found["null"] = stat.S_ISCHR
    for name in list(found):
        (workdir / f"link-to-{name}").symlink_to(name)
        found[f"link-to-{name}"] = found[name]
    return found


def test_export_writes_only_to_a_regular_file_or_a_new_path(capsys, trained, workdir):
    ckpt, model = trained
    specials = special_files(workdir)
    for name, is_kind in specials.items():
        one_line_error(capsys, "export", ckpt, "--out", workdir / name,
                       match=f"{name}: .*writes only to a regular file or a new path")
        assert is_kind(os.stat(workdir / name).st_mode), name  # untouched, whatever the link points at
        assert (workdir / name).is_symlink() == name.startswith("link-to-")
    (workdir / "folder").mkdir()
    one_line_error(capsys, "export", ckpt, "--out", workdir / "folder", match="folder: a folder; give the path of a file")
    # a link to a regular file is followed: the file gets the model, the link stays a link
    (workdir / "old.pt").write_bytes(b"old")
    (workdir / "link.pt").symlink_to("old.pt")
    assert main(["export", str(ckpt), "--out", str(workdir / "link.pt")]) == 0
    assert (workdir / "link.pt").is_symlink() and (workdir / "old.pt").read_bytes()[:2] == b"PK"
    assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


def test_best_export_refuses_a_special_target_before_reading_any_store(capsys, workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    specials = special_files(workdir)
    for name, is_kind in specials.items():
        one_line_error(capsys, "best", "--export", workdir / name, match=f"{name}: .*untouched")
        assert is_kind(os.stat(workdir / name).st_mode), name
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw.pop("model"), "a checkpoint needs a 'model' mapping; got None"),
    (lambda raw: raw.pop("state"), "a checkpoint needs a 'state' mapping; got None"),
    (lambda raw: raw["state"].update(optimizer={}), "state optimizer lacks its state and parameter groups"),
    (lambda raw: raw["state"].update(iteration="7"), "state iteration is '7'"),
    (lambda raw: raw["state"]["optimizer"]["state"].clear() or raw["state"]["optimizer"]["param_groups"][0]
     .update(params=[0]), "optimizer or RNG state does not fit the model"),
    (lambda raw: raw["summary"].update(epoch="x"), "summary epoch is 'x'; expected a number"),
])
def test_a_damaged_checkpoint_is_one_line_for_every_command(capsys, trained, workdir, small_corpus, change, match):
    ckpt, _ = trained
    raw = torch.load(ckpt, weights_only=True)
    change(raw)
    torch.save(raw, workdir / "bad.pt")
    one_line_error(capsys, "train", "--data", small_corpus, "--init-from", "bad.pt", "--checkpoint-dir", "cv2",
                   match=f"bad.pt: damaged charsearch (file|checkpoint) \\(.*{match}")
    assert not (workdir / "cv2").exists() or not list((workdir / "cv2").iterdir())
    if "state" not in match and "optimizer" not in match:  # the model part alone serves the other commands
        for cmd in (["inspect"], ["sample", "--length", "5"], ["export", "--out", "x.pt"]):
            one_line_error(capsys, cmd[0], "bad.pt", *cmd[1:], match=f"bad.pt: damaged charsearch file \\(.*{match}")


def test_training_is_admitted_against_the_memory_free_now_not_the_total(capsys, workdir, small_corpus):
    """A run sized to need about 90% of the memory free now (less than the machine's total) is refused
    before anything is allocated, in one line that says what is available."""
    from charsearch.core.config import TrainConfig
    from charsearch.core.devices import available_bytes, total_bytes, training_size
    free = available_bytes(torch.device("cpu"))
    size = next(h for h in range(64, 65536, 64)
                if training_size(TrainConfig(rnn_size=h, num_layers=4, batch_size=1, seq_length=16), 32)[1] > 0.9 * free)
    need = training_size(TrainConfig(rnn_size=size, num_layers=4, batch_size=1, seq_length=16), 32)[1]
    assert need < total_bytes(torch.device("cpu"))
    one_line_error(capsys, "train", "--data", small_corpus, "--rnn-size", size, "--num-layers", "4",
                   "--seq-length", "16", "--batch-size", "1",
                   match=r"more than the [\d,.]+ GB available now \(80% of the memory free\)")
    assert not (workdir / "cv").exists()
