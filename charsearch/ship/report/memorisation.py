"""How much of what the best model writes is copied from its train text: n-grams of its samples found
verbatim in the train split, against the val text's own share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charsearch.core.config import DEFAULT_SEED
from charsearch.core.errors import UsageError
from charsearch.ship.selection import SweepRuns

NGRAMS = (10, 20, 40)
MEMO_SAMPLES, MEMO_LENGTH, MEMO_SEED = 8, 1000, DEFAULT_SEED  # 8,000 sampled characters: a second or two on CPU


# ---------------------------------------------------------------------------------------------
# memorisation


@dataclass
class Memorisation:
    trial: str  # the trial whose model was sampled
    chars: int  # characters sampled
    shares: dict[int, float]  # n -> share of the sampled n-grams found verbatim in the train split
    reference: dict[int, float]  # n -> the same share for the val split: real text the model never saw


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-gram of `ids` (uint64 arithmetic wraps: it works mod 2**64).
    It keeps the train split's n-grams at 8 bytes each, not a set of a million strings per n; a chance
    match between 8 k sampled and 1 M train n-grams of ordinary text is about 1 in 10**9."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    ids = np.asarray(ids, dtype=np.uint64) + np.uint64(1)  # id 0 still counts
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # in place: a 1 MB corpus needs ~16 MB here, not a temporary per step
        h *= np.uint64(1_000_003)
        h += ids[k:k + m]
    return h


def verbatim_share(pieces: list[np.ndarray], known: np.ndarray, n: int) -> float:
    """The share of the n-grams of `pieces` (each read on its own) whose hash is in `known` (sorted).
    (searchsorted on the sorted hashes: np.isin takes 40x as long on 1 M of them.)"""
    grams = np.concatenate([ngram_hashes(p, n) for p in pieces])
    if len(grams) == 0 or len(known) == 0:
        return math.nan if len(grams) == 0 else 0.0
    at = np.minimum(np.searchsorted(known, grams), len(known) - 1)
    return float((known[at] == grams).mean())


def check_memorisation(mf, trial: str, train_ids: np.ndarray, val_ids: np.ndarray, vocab,
                       ngrams=NGRAMS) -> Memorisation:
    """Sample the model (seeded, temperature 1) and measure how much of it is copied from the train text;
    the val text's own share is the bar to compare with."""
    from charsearch.core.config import SampleOptions
    from charsearch.core.sample import Sampler, cpu_sampling

    with cpu_sampling():
        texts = Sampler(mf, "cpu").generate(SampleOptions(length=MEMO_LENGTH, seed=MEMO_SEED,
                                                          num_samples=MEMO_SAMPLES))
    samples = [np.asarray(vocab.encode(t, what="a sample"), dtype=np.int64) for t in texts]
    shares, reference = {}, {}
    for n in ngrams:
        known = np.sort(ngram_hashes(train_ids, n))
        shares[n] = verbatim_share(samples, known, n)
        reference[n] = verbatim_share([val_ids], known, n)
    return Memorisation(trial, sum(map(len, texts)), shares, reference)


def memorisation_for(sweep: SweepRuns, mf, trial: str) -> tuple[Memorisation | None, str]:
    """The check against the sweep's train split, or (None, why not) when that text is not here as it was."""
    from charsearch.core.data import load_corpus

    params = sweep.parent.data.params
    path = params.get("corpus") or sweep.resolved.get("corpus", "")
    try:
        corpus = load_corpus(path, int(sweep.resolved.get("min_freq", 0)))
    except UsageError as e:
        return None, f"memorisation check skipped: the training text is not here ({e})"
    if params.get("corpus_sha256") and corpus.sha256 != params["corpus_sha256"]:
        return None, f"memorisation check skipped: {corpus.path} has changed since the sweep (sha256 differs)"
    if corpus.vocab != mf.vocab:
        return None, f"memorisation check skipped: the model's vocabulary differs from {corpus.path}'s"
    train, val, _ = corpus.split(float(sweep.resolved["train_frac"]), float(sweep.resolved["val_frac"]))
    return check_memorisation(mf, trial, train, val, corpus.vocab), ""
