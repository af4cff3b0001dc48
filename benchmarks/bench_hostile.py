"""Hostile inputs, each run as a user would run it, against one or more charsearch trees side by side:
exit code, wall time and peak memory (max RSS of the command and everything it waited for).

    python benchmarks/bench_hostile.py --tree before=/path/to/old/checkout --tree after=.

Each case builds its own files in a fresh folder; a case whose command outlives --timeout is killed and
shown as such. The last line is stderr's, or stdout's where stderr is empty. Prints a markdown table (one row per case, a column group per tree).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(os.environ.get("CHARSEARCH_SHAKESPEARE", ROOT.parent / "shared/data/tinyshakespeare/input.txt"))


def tree_modules():
    """(artifact, Vocab, CharRNN, expected_shapes) of the tree under test, whichever layout it has."""
    try:
        from charsearch.core import artifact
        from charsearch.core.data import Vocab
        from charsearch.core.model import CharRNN, expected_shapes
    except ImportError:
        from charsearch import artifact
        from charsearch.data import Vocab
        from charsearch.model import CharRNN, expected_shapes
    return artifact, Vocab, CharRNN, expected_shapes


def model_file(path: Path, chars: str = "abcd\n", cell: str = "gru", size: int = 8, layers: int = 1,
               **summary) -> None:
    """A valid model file, written with the tree under test's own format."""
    artifact, Vocab, CharRNN, _ = tree_modules()
    m = CharRNN(len(chars), cell, size, layers)
    artifact.save(path, artifact.ModelFile(dict(m.config), Vocab(tuple(chars)), m.state_dict(),
                                           {"val_loss": 1.5, **summary}).to_dict())


def expanded(path: Path, layers: int, size: int) -> None:
    """A model file of a legal LSTM whose every weight is a stride-0 view of one stored float."""
    artifact, Vocab, CharRNN, expected_shapes = tree_modules()
    config = {**CharRNN(5, "lstm", 8, layers).config, "rnn_size": size}
    weights = {name: torch.full((1,), 0.01).expand(*shape) for name, shape in expected_shapes(config).items()}
    torch.save({**artifact.ModelFile(config, Vocab(tuple("abcd\n")), {}).to_dict(), "state_dict": weights}, path)


def bomb(path: Path, elements: int) -> None:
    """A model file with an extra tensor in its summary, every archive entry DEFLATE-compressed."""
    plain = path.with_suffix(".plain")
    model_file(plain)
    raw = torch.load(plain, weights_only=True)
    raw["summary"]["extra"] = torch.zeros(elements)
    torch.save(raw, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()


def sweep_yaml(folder: Path, name: str, extra: str = "", space: str = "  rnn_size: {choice: [16, 32]}\n") -> Path:
    p = folder / "s.yaml"
    p.write_text(f"name: {name}\ndata: {{corpus: corpus.txt}}\nsearch_space:\n{space}search: {{num_samples: 2}}\n"
                 f"budget: {{sweep_time: 60, trial_max_epochs: 0.05}}\nscheduler: {{type: none, report_every_epochs: "
                 f"0.02}}\ntrain: {{batch_size: 16, seq_length: 32}}\n{extra}")
    return p


def cases(folder: Path):
    """(name, setup, argv) per case; setup(folder) prepares files and returns nothing."""
    corpus = lambda f: (f / "corpus.txt").write_text(SHAKESPEARE.read_text()[:300_000])  # noqa: E731

    def fifo_and_model(f):
        model_file(f / "m.pt")
        os.mkfifo(f / "pipe")

    def device_node(f):
        model_file(f / "m.pt")
        os.mknod(f / "null", 0o666 | 0o020000, os.makedev(1, 3))  # a private copy of /dev/null

    def finished_sweep(f):
        corpus(f)
        subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(sweep_yaml(f, "done"))], cwd=f,
                       capture_output=True, timeout=300, env=case_env(f))

    def big_choice(f):
        corpus(f)
        sweep_yaml(f, "big", space="  rnn_size: {choice: [" + ", ".join(map(str, range(16, 10016))) + "]}\n")

    def sparse_corpus(f):
        with open(f / "huge.txt", "wb") as h:
            h.truncate(64 * 2 ** 30)

    def no_model_key(f):
        torch.save({"format": "charsearch-checkpoint", "version": 1, "summary": {}, "state": {}, "train_config": {}},
                   f / "ckpt.pt")

    return [
        ("export --out FIFO", fifo_and_model, ["export", "m.pt", "--out", "pipe"]),
        ("export --out device node (root)", device_node, ["export", "m.pt", "--out", "null"]),
        ("resume a finished sweep, --num-samples 6", finished_sweep, ["sweep", "s.yaml", "--resume", "--num-samples", "6"]),
        ("inspect: 1 GB tensor, DEFLATE (1 MB file)", lambda f: bomb(f / "b.pt", 250_000_000), ["inspect", "b.pt"]),
        ("sample: same file", lambda f: bomb(f / "b.pt", 250_000_000), ["sample", "b.pt", "--length", "5"]),
        ("best --tracking-uri http://127.0.0.1:1", None, ["best", "--tracking-uri", "http://127.0.0.1:1"]),
        ("sweep file: choice of 10,000 values", big_choice, ["sweep", "s.yaml", "--dry-run"]),
        ("sample --temperature 1e-300", lambda f: model_file(f / "m.pt"),
         ["sample", "m.pt", "--temperature", "1e-300", "--length", "20"]),
        ("sweep name of 10,000 characters", lambda f: (corpus(f), sweep_yaml(f, "x" * 10_000)), ["sweep", "s.yaml"]),
        ("ray.storage not writable", lambda f: (corpus(f), (f / "file").write_text("x"),
                                                sweep_yaml(f, "st", extra="ray: {storage: file/ray}\n")),
         ["sweep", "s.yaml"]),
        ("checkpoint without model", no_model_key, ["inspect", "ckpt.pt"]),
        ("corpus: 64 GB sparse file (NUL at 0)", sparse_corpus, ["data", "info", "huge.txt"]),
        ("inspect: 2x8192 LSTM of stride-0 weights (70 kB file)", lambda f: expanded(f / "e.pt", 2, 8192),
         ["inspect", "e.pt"]),
        ("eval, model file truncated in place while it runs", eval_setup,
         ["eval", "m.pt", "--data", "big.txt", "--device", "cpu"], truncate_model),
        ("eval, another model copied over it in place while it runs", eval_setup,
         ["eval", "m.pt", "--data", "big.txt", "--device", "cpu"], overwrite_model),
        ("--resume, record names another experiment's run", foreign_record, ["sweep", "s.yaml", "--resume"]),
        ("--calibration: 1,000,000 trials at 0.0001 CPU (dry run)", lambda f: calibration(f, parallel=1_000_000,
                                                                                         cpu_per_trial=0.0001),
         ["sweep", "--data", "corpus.txt", "--time", "5m", "--calibration", "cal.json", "--dry-run"]),
        ("--calibration: shape rnn 99999999x1 (dry run)", lambda f: calibration(f, shape="rnn 99999999x1"),
         ["sweep", "--data", "corpus.txt", "--time", "5m", "--calibration", "cal.json", "--dry-run"]),
        ("--calibration: seconds NaN (dry run)", lambda f: calibration(f, seconds=float("nan")),
         ["sweep", "--data", "corpus.txt", "--time", "5m", "--calibration", "cal.json", "--dry-run"]),
        ("data info: 1 GB ASCII file", lambda f: repeat_corpus(f / "big.txt", 10 ** 9), ["data", "info", "big.txt"]),
        ("train: 200,000 distinct characters, --rnn-size 32 --batch-size 4", wide_corpus,
         ["train", "--data", "wide.txt", "--rnn-size", "32", "--batch-size", "4", "--max-epochs", "0.005",
          "--eval-every", "20"]),
        ("sweep --dry-run --test-frac 1e-12", lambda f: (corpus(f), sweep_yaml(f, "tf")),
         ["sweep", "s.yaml", "--dry-run", "--test-frac", "1e-12"]),
    ]


def repeat_corpus(path: Path, size: int) -> None:
    text = SHAKESPEARE.read_text()
    with open(path, "w") as f:
        for _ in range(size // len(text)):
            f.write(text)


def eval_setup(f: Path) -> None:
    # encoding 100 MB takes seconds after the model file is read: the file changes meanwhile, before the
    # weights are used (a file that is memory-mapped is read only then)
    repeat_corpus(f / "big.txt", 100_000_000)
    chars = "".join(sorted(set(SHAKESPEARE.read_text())))
    torch.manual_seed(0)  # the same two models for every tree: what each eval printed is comparable
    model_file(f / "m.pt", chars, "lstm", 64, 1)
    torch.manual_seed(1)
    model_file(f / "other.pt", chars, "lstm", 64, 1)


def truncate_model(f: Path) -> None:
    os.truncate(f / "m.pt", 100)


def overwrite_model(f: Path) -> None:
    data = (f / "other.pt").read_bytes()
    with open(f / "m.pt", "r+b") as out:  # in place, as cp does: the same inode, new bytes
        out.write(data)
        out.truncate(len(data))


def foreign_record(f: Path) -> None:
    """A finished sweep whose record's parent_run_id is changed to a running run of another experiment."""
    import json

    import mlflow
    (f / "corpus.txt").write_text(SHAKESPEARE.read_text()[:300_000])
    subprocess.run([sys.executable, "-m", "charsearch", "sweep", str(sweep_yaml(f, "done"))], cwd=f,
                   capture_output=True, timeout=300, env=case_env(f))
    client = mlflow.MlflowClient(f"sqlite:///{f}/mlruns/mlflow.db")
    other = client.create_run(client.create_experiment("other-team")).info.run_id
    (record,) = f.glob("ray_results/done/*/charsearch.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "parent_run_id": other}))


def calibration(f: Path, shape: str = "lstm 2x128", **fields) -> None:
    import json
    (f / "corpus.txt").write_text(SHAKESPEARE.read_text()[:300_000])
    cal = {"device": "cpu", "parallel": 2, "threads": 1, "rates": {"lstm 2x128": 40_000.0, shape: 40_000.0},
           "params": {"lstm 2x128": 200_000, shape: 200_000}, "seconds": 10.0, **fields}
    (f / "cal.json").write_text(json.dumps(cal))


def wide_corpus(f: Path) -> None:
    import random
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(20_000)] + [chr(0x20000 + i) for i in range(180_000)]
    (f / "wide.txt").write_text("".join(chars) + "".join(rng.choice(chars[:3000]) for _ in range(400_000)))


TREE = [Path(".")]  # the tree the case being set up runs against


def case_env(folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(TREE[0])}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


MEANWHILE_S = 4.0  # a case's action on its files runs this long after the command starts


def run_case(tree: Path, setup, argv: list[str], timeout: float, meanwhile=None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        TREE[0] = tree
        env = case_env(folder)
        if setup is not None:
            sys.path.insert(0, str(tree))
            try:
                setup(folder)
            finally:
                sys.path.pop(0)
                for name in [m for m in sys.modules if m == "charsearch" or m.startswith("charsearch.")]:
                    del sys.modules[name]
        t0 = time.monotonic()
        usage = folder / "usage.txt"  # GNU time: the command's own peak RSS, in KiB
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(usage), sys.executable, "-m", "charsearch",
                              *argv], cwd=folder, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        if meanwhile is not None:
            timer = threading.Timer(MEANWHILE_S, meanwhile, (folder,))
            timer.start()
        try:
            out, err = p.communicate(timeout=timeout)
            code = str(p.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            code = f"killed at {timeout:.0f} s"
        wall = time.monotonic() - t0
        peak = int(usage.read_text().split()[-1]) / 2 ** 20 if usage.is_file() and usage.read_text().strip() else 0
        last = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1][:90].replace("|", "/")
        return f"{code} | {wall:.1f} s | {peak:.2f} GB | {last}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--timeout", type=float, default=150)
    ap.add_argument("--only", action="append", default=[], metavar="WORDS", help="run the cases whose name has these")
    args = ap.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    header = "| input | " + " | ".join(f"{n}: exit | time | peak RSS | last line" for n, _ in trees) + " |"
    print(header)
    print("|" + "---|" * (1 + 4 * len(trees)))
    with tempfile.TemporaryDirectory() as scratch:
        for name, setup, argv, *meanwhile in cases(Path(scratch)):
            if name.startswith("export --out device") and os.geteuid() != 0:
                continue
            if args.only and not any(word in name for word in args.only):
                continue
            cells = [run_case(tree, setup, argv, args.timeout, *meanwhile) for _, tree in trees]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
