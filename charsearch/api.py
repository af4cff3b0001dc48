"""charsearch from Python: load a model file and sample from it, train one model, run a sweep.

The command line is built on the same functions (`charsearch sample`, `train`, `sweep`, `best`), so what
this page says of a flag holds for its keyword.

>>> import charsearch
>>> from pathlib import Path
>>> _ = Path("corpus.txt").write_text("the cat sat on the mat. " * 400)
>>> run = charsearch.train("corpus.txt", rnn_size=32, num_layers=1, max_epochs=1, eval_every=20,
...                        batch_size=8, seq_length=32, checkpoint_dir="cv", seed=1)
>>> run.best_val_loss < 2.5
True
>>> model = run.export("model.pt")
>>> model = charsearch.load("model.pt")
>>> text = model.sample("the ", length=40, seed=3)
>>> text.startswith("the ") and len(text) == 44
True
>>> model.score("the cat sat on the mat. " * 10) < 2.5
True
>>> model.info["architecture"]
'lstm 1x32'
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import pandas as pd

from charsearch.core.config import DEFAULT_SEED, SampleOptions, TrainConfig
from charsearch.core.errors import UsageError


class Model:
    """A model file (or an ensemble file) loaded for use: plain data only, checked before anything is built,
    on the CPU unless a device is given. Sampling defaults are `charsearch sample`'s."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from charsearch.core import artifact
        from charsearch.core.devices import resolve_device
        from charsearch.core.sample import Sampler
        self.path = Path(path)
        self.file = artifact.load(path)
        self.sampler = Sampler(self.file, resolve_device(device))

    @property
    def info(self) -> dict:
        """The architecture, its parameters, the vocabulary and the training summary the file carries."""
        return {"architecture": self.file.label, "parameters": self.file.num_params(),
                "vocabulary": "".join(self.file.vocab.chars), "config": dict(self.file.config),
                "summary": dict(self.file.summary)}

    def sample(self, prime: str = "", length: int = SampleOptions.length,
               temperature: float = SampleOptions.temperature, top_k: int = 0, seed: int = DEFAULT_SEED,
               argmax: bool = False, stop: str = "") -> str:
        """Generated text: the prime followed by `length` characters (fewer where `stop` ends it)."""
        return "".join(self.stream(prime, length, temperature, top_k, seed, argmax, stop))

    def stream(self, prime: str = "", length: int = SampleOptions.length,
               temperature: float = SampleOptions.temperature, top_k: int = 0, seed: int = DEFAULT_SEED,
               argmax: bool = False, stop: str = "") -> Iterator[str]:
        """The prime, then each character as it is generated."""
        from charsearch.core.sample import cpu_sampling
        opts = SampleOptions(prime, length, temperature, top_k, argmax, seed, 1, stop).validate()
        with cpu_sampling() if self.sampler.device.type == "cpu" else contextlib.nullcontext():
            for step in self.sampler.stream(opts):
                if step[0]:
                    yield step[0]

    def score(self, text: str) -> float:
        """The model's fair loss on `text`, in nats per character (as `charsearch eval` scores a split)."""
        import numpy as np

        from charsearch.core.train import Evaluator
        ids = np.asarray(self.file.vocab.encode(text, what="the text"), dtype=self.file.vocab.dtype)
        return Evaluator(ids, self.sampler.device)(self.sampler.model)


def load(path: str | Path, device: str = "cpu") -> Model:
    """A model file or an ensemble file, checked and ready to sample from (`Model`)."""
    return Model(path, device)


@dataclass
class TrainRun:
    """What `train` did: its best val loss and checkpoint, each evaluation as a row of `history`."""
    best_val_loss: float
    best_checkpoint: Path | None
    stop_reason: str
    history: pd.DataFrame

    def export(self, path: str | Path) -> Model:
        """Write the best checkpoint's portable model file (CPU float32) and load it."""
        from charsearch.core import artifact
        if self.best_checkpoint is None:
            raise UsageError("the run wrote no checkpoint (it never reached an evaluation)")
        artifact.export(self.best_checkpoint, path)
        return load(path)


def train(data: str | Path, progress: bool = False, threads: int | None = None, **options) -> TrainRun:
    """Train one model on `data` (a text file, a folder holding input.txt, or a name under data/), with any
    `charsearch train` option as a keyword (`rnn_size=256`, `lr_schedule="wsd"`, ...). On a CPU it trains on
    every core, or on one where other work makes them slower; `threads` fixes their number (torch's, for this
    process), and a seeded run then repeats exactly."""
    from charsearch.core.config import ConfigError
    from charsearch.core.train import train as train_one
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown training option {unknown[0]!r}; see `charsearch train --help`")
    cfg = TrainConfig(data=str(data), **options)
    try:
        cfg.validate()
    except ConfigError as e:
        raise UsageError(f"{e.field}: {e.problem}") from None
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise UsageError(f"threads must be a whole number >= 1; got {threads!r}")
        import torch
        torch.set_num_threads(threads)
    result = train_one(cfg, progress=progress, thread_rates=None if threads else (None, None))
    return TrainRun(result.best_val_loss, result.best_checkpoint, result.stop_reason, pd.DataFrame(result.history))


@dataclass
class SweepRun:
    """What `sweep` did: its best trial, every trial of it as a row of `trials` (from MLflow, best first)."""
    experiment: str
    tracking_uri: str
    best_val_loss: float | None
    best_trial: str | None
    best_config: dict | None
    trials: pd.DataFrame

    def export(self, path: str | Path, ensemble: int | None = None) -> Model:
        """Write the best trial's model file (or an ensemble of the top `ensemble` trials), as `charsearch
        best --export` does, and load it."""
        import tempfile

        from charsearch.ship.best import export, held_out_view, pick
        from charsearch.ship.candidates import Constraints
        with tempfile.TemporaryDirectory() as tmp:
            held = held_out_view(self.tracking_uri, self.experiment, self.trials, Path(tmp), len(self.trials),
                                 need_val=ensemble is not None)
            mf, _ = pick(self.tracking_uri, self.trials, self.experiment, Constraints(), held, Path(tmp), ensemble)
        export(self.tracking_uri, self.experiment, mf, path)
        return load(path)


def sweep(file_or_data: str | Path, time: str | float | None = None, tracking_uri: str | None = None,
          resume: bool = False, warm_start: bool = True, test_frac: float | None = None,
          address: str | None = None, search: str = "auto") -> SweepRun:
    """Run a sweep, as `charsearch sweep` does: a sweep file (.yaml), or a corpus with a `time` budget
    (seconds, or '10m') for an automatically sized one. Ray starts here unless `address` (or RAY_ADDRESS)
    names a cluster; MLflow records to `tracking_uri`, else MLFLOW_TRACKING_URI, else the sweep file's.
    `search` (an automatically sized sweep): auto searches where the plan says the search can compare
    enough configurations to pay, else trains the prior without a search (twice at once, seeds apart, on a
    CPU with two slots or more, at two dropouts where it would memorise the corpus: `.export(path)` takes the
    better, `.export(path, ensemble=2)` mixes the two); always or never decide it."""
    import sys
    import time as clock

    from charsearch.search import run
    from charsearch.search.prepare import prepare_sweep
    from charsearch.ship.selection import trials
    from charsearch.tracking.store import resolve_uri
    started = clock.time()
    is_file = Path(file_or_data).suffix in (".yaml", ".yml")
    config, plan = prepare_sweep(str(file_or_data) if is_file else None, None if is_file else str(file_or_data),
                                 time, resume=resume, no_warm_start=not warm_start, test_frac=test_frac,
                                 address=address, search=search)
    plan_text = plan.describe() if plan else ""
    if plan_text:
        print(plan_text, file=sys.stderr)
    outcome = run(config, resume=resume, address=address, tracking_uri=tracking_uri, started=started,
                  plan_text=plan_text, expected_rates=plan.calibration.rates if plan else None,
                  whole_rates=plan.calibration.whole if plan else None)
    uri = resolve_uri(tracking_uri, config.tracking_uri)
    _, df = trials(uri, config.name)
    return SweepRun(config.name, uri, outcome.best_val_loss, outcome.best_trial, outcome.best_config, df)
