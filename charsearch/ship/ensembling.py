"""Ensemble selection (Caruana et al. 2004, as auto-sklearn does): greedy forward selection with
replacement over candidate models, scored on the val split by the mixture's fair loss.

A mixture of next-character distributions scores character t as log sum_i w_i p_i(c_t), so each
candidate is represented by the log-probability it gives every val character (Evaluator.
target_log_probs). Each round adds the candidate (one already in, again, or a new one) whose addition
gives the lowest val loss; a member's weight is the share of rounds that picked it. The ensemble kept
is the best seen over the rounds, so more rounds never make it worse on val.
"""

from __future__ import annotations

import math

import torch

from charsearch.core.model import mix

ROUNDS = 20


def mixture_loss(log_probs: torch.Tensor, counts: torch.Tensor) -> float:
    """Val loss (nats/char) of the mixture weighting each row of `log_probs` (models x characters) by
    `counts` (any non-negative numbers, normalised here)."""
    return -mix(log_probs, torch.log(counts.double() / counts.sum())).mean().item()


def greedy(log_probs: torch.Tensor, rounds: int = ROUNDS, allowed=None) -> tuple[list[float], float]:
    """(weights, val loss) of the best ensemble greedy selection finds over `rounds` rounds. `allowed(counts)`
    says whether a candidate choice (picks per model) may be taken (constraints on the whole ensemble)."""
    n = log_probs.shape[0]
    counts = torch.zeros(n, dtype=torch.float64)
    best_counts, best_loss = None, math.inf
    for _ in range(rounds):
        trial = []
        for i in range(n):
            c = counts.clone()
            c[i] += 1
            if allowed is None or allowed(c):
                trial.append((mixture_loss(log_probs, c), i))
        if not trial:
            break
        loss, i = min(trial)
        counts[i] += 1
        if loss < best_loss - 1e-12:
            best_counts, best_loss = counts.clone(), loss
    if best_counts is None:
        return [], math.inf
    return (best_counts / best_counts.sum()).tolist(), best_loss
