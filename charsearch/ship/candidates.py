"""Choosing what to ship from a sweep's trials: each candidate's model with what a user weighs besides its
val loss (the file's size, its parameters, how fast it samples one stream on this CPU, its loss on the
held-out test split), the lowest-val candidate that meets the user's constraints, and an ensemble of the
top candidates (charsearch.ensemble) written as one model file.

Test data is never used to choose: only to show, beside the val loss a choice was made by, how much of
that val loss is selection bias.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from charsearch.core import artifact
from charsearch.core.errors import UsageError, excerpt
from charsearch.tracking.layout import MODEL_ARTIFACT, TRIAL_TAG
from charsearch.tracking.store import client_for

RATE_CHARS = 200  # characters sampled to measure a candidate's speed: the best of RATE_RUNS, after a warm-up
RATE_RUNS = 3
TEST_TOP = 5  # trials whose test loss `best` shows beside their val loss


@dataclass
class Candidate:
    trial_id: str
    run_id: str
    val: float
    mf: object  # artifact.ModelFile or EnsembleFile
    size: int  # bytes of its model file
    test: float | None = None
    rate: float | None = None  # chars/s sampling one stream on this machine's CPU (one thread)

    @property
    def params(self) -> int:
        return self.mf.num_params()


def candidates(uri: str, df: pd.DataFrame, limit: int, folder: Path):
    """The trials that have a model, best val first, at most `limit`, each model downloaded into `folder`
    and checked (a generator: a caller that stops early downloads no more)."""
    import mlflow
    client = client_for(uri)
    n = 0
    for _, row in df[df["metrics.best_val_loss"].notna()].iterrows():
        if n >= limit:
            return
        files = {a.path: a for a in client.list_artifacts(row["run_id"], str(Path(MODEL_ARTIFACT).parent))}
        if MODEL_ARTIFACT not in files:
            continue
        local = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path=MODEL_ARTIFACT,
                                                    dst_path=str(folder / row["run_id"]), tracking_uri=uri)
        n += 1
        yield Candidate(row[f"tags.{TRIAL_TAG}"], row["run_id"], float(row["metrics.best_val_loss"]),
                        artifact.load(local), Path(local).stat().st_size)


def sampling_rate(mf) -> float:
    """Chars/s of one sample stream on this CPU, one thread, as `charsearch sample` and `serve` generate."""
    from charsearch.core.sample import SampleOptions, Sampler, cpu_sampling
    with cpu_sampling():
        sampler = Sampler(mf, "cpu")
        sampler.generate(SampleOptions(length=20))  # warm-up
        best = 0.0
        for _ in range(RATE_RUNS):  # the best run: the others were slowed by whatever else ran
            t0 = time.perf_counter()
            sampler.generate(SampleOptions(length=RATE_CHARS))
            best = max(best, RATE_CHARS / (time.perf_counter() - t0))
        return best


# ---------------------------------------------------------------------------------------------
# constraints


SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?", re.I)
UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_size(text: str) -> int:
    """'5MB', '500kB', '1.5GiB', '123456' (bytes) -> bytes."""
    m = SIZE.fullmatch(text.strip()) if len(text) < 40 else None
    if not m or float(m[1]) <= 0:
        raise UsageError(f"--max-size {excerpt(text)}: expected a size such as 5MB, 500kB or 1.5GiB")
    return int(float(m[1]) * UNITS[(m[2] or "b").lower()])


@dataclass
class Constraints:
    max_params: int | None = None
    max_size: int | None = None
    min_rate: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_params, self.max_size, self.min_rate))

    def misses(self, params: int, size: int, rate) -> str:
        """'' if a model meets every constraint, else the first it misses (rate: a number, or a function
        that measures it, called only when needed)."""
        if self.max_params is not None and params > self.max_params:
            return f"{params:,} parameters > {self.max_params:,}"
        if self.max_size is not None and size > self.max_size:
            return f"{size / 1e6:.2f} MB > {self.max_size / 1e6:.2f} MB"
        if self.min_rate is not None:
            r = rate() if callable(rate) else rate
            if r < self.min_rate:
                return f"{r:,.0f} chars/s < {self.min_rate:,.0f}"
        return ""

    def describe(self) -> str:
        parts = [f"at most {self.max_params:,} parameters" if self.max_params is not None else "",
                 f"at most {self.max_size / 1e6:g} MB" if self.max_size is not None else "",
                 f"at least {self.min_rate:,.0f} chars/s sampling one stream here" if self.min_rate is not None else ""]
        return ", ".join(p for p in parts if p)


def rate_of(c: Candidate) -> float:
    if c.rate is None:
        c.rate = sampling_rate(c.mf)
    return c.rate


def choose(pool, constraints: Constraints) -> Candidate:
    """The lowest-val candidate that meets the constraints (the candidates come best first)."""
    missed = []
    for c in pool:
        why = constraints.misses(c.params, c.size, lambda c=c: rate_of(c))
        if not why:
            return c
        missed.append(f"{c.trial_id} ({why})")
    if not missed:
        raise UsageError("no trial has a model yet (none reached its first evaluation)")
    raise UsageError(f"no trial's model has {constraints.describe()}: {'; '.join(missed[:4])}"
                     f"{' ...' if len(missed) > 4 else ''}")


# ---------------------------------------------------------------------------------------------
# held-out score and ensembles


@dataclass
class Splits:
    """The sweep's corpus as this machine has it, split as the sweep split it."""
    val: np.ndarray
    test: np.ndarray
    vocab: object


def scores(mf, ids: np.ndarray, target: bool = False):
    """The fair loss of a model (or its log-probability of every character, `target`) on `ids`, on CPU."""
    import torch

    from charsearch.core.train import Evaluator
    evaluate = Evaluator(ids, torch.device("cpu"))
    model = mf.build("cpu")
    return evaluate.target_log_probs(model) if target else evaluate(model)


def ensemble_of(pool: list[Candidate], splits: Splits, constraints: Constraints, rounds: int):
    """(EnsembleFile, its val loss) by greedy selection over `pool` on the val split; members over one
    vocabulary only; the constraints hold for the ensemble as a whole (parameters and file size summed
    over its distinct members, one stream's speed from theirs: 1 / sum of 1 / rate)."""
    import torch

    from charsearch.ship.ensembling import greedy
    artifact.ensemble_file([c.mf for c in pool], [1 / len(pool)] * len(pool), {})  # refuses members that differ
    log_probs = torch.stack([scores(c.mf, splits.val, target=True) for c in pool])

    def allowed(counts) -> bool:
        members = [c for c, k in zip(pool, counts.tolist()) if k > 0]
        rate = lambda: 1 / sum(1 / rate_of(c) for c in members)  # noqa: E731
        return not constraints.misses(sum(c.params for c in members), sum(c.size for c in members), rate)

    weights, loss = greedy(log_probs, rounds, allowed if constraints else None)
    if not weights:
        raise UsageError(f"no ensemble of the top {len(pool)} trials has {constraints.describe()}")
    members = [(c, w) for c, w in zip(pool, weights) if w > 0]
    ens = artifact.ensemble_file([c.mf for c, _ in members], [w for _, w in members],
                                 {"val_loss": loss, "ensemble_trials": ",".join(f"{c.trial_id}:{w:.3f}" for c, w in members)})
    return ens, loss


def splits_of(sweep) -> tuple[Splits | None, str]:
    """A sweep run's (selection.SweepRuns) val and test splits of its corpus, or (None, why not) when the
    corpus is not here as it was."""
    from charsearch.core.data import load_corpus
    path, resolved = sweep.parent.data.params.get("corpus", ""), sweep.resolved
    try:
        corpus = load_corpus(path, int(resolved.get("min_freq", 0)))
    except UsageError as e:
        return None, f"the sweep's corpus is not here ({e})"
    if corpus.sha256 != sweep.parent.data.params.get("corpus_sha256", corpus.sha256):
        return None, f"{corpus.path} has changed since the sweep (sha256 differs)"
    _, val, test = corpus.split(float(resolved["train_frac"]), float(resolved["val_frac"]))
    return Splits(np.asarray(val), np.asarray(test), corpus.vocab), ""


def held_out(pool: list[Candidate], splits: Splits) -> None:
    """Each candidate's loss on the test split (where there is one)."""
    if len(splits.test) >= 2:
        for c in pool:
            if c.test is None and c.mf.vocab == splits.vocab:
                c.test = scores(c.mf, splits.test)


def bias_line(pool: list[Candidate]) -> str:
    """How far test loss sits above val loss for the winner and for the top trials on average."""
    tested = [c for c in pool if c.test is not None and math.isfinite(c.test)]
    if not tested:
        return ""
    gaps = [c.test - c.val for c in tested]
    return (f"selection bias: the chosen trial {tested[0].trial_id} scores {tested[0].test:.4f} on the test split "
            f"against {tested[0].val:.4f} on val (gap {gaps[0]:+.4f}); the top {len(tested)}'s mean gap "
            f"{sum(gaps) / len(gaps):+.4f} (test data is never used to choose)")

