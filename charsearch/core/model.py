"""CharRNN: one-hot input (or a trained embedding) -> stacked RNN / LSTM / GRU (cuDNN on CUDA) -> dropout -> an
output layer over the vocabulary: a linear layer with a full softmax, or for vocabularies of thousands of
characters an adaptive softmax (Grave et al. 2017, torch.nn.AdaptiveLogSoftmaxWithLoss) that is exact too.

The adaptive softmax puts the most frequent characters in a head with one entry per tail cluster and
the rarer ones in clusters behind it, each cluster scored through a narrower projection (width / 4 per
cluster): a character's probability is its head probability, or its cluster's times its probability
within the cluster, a proper distribution over the whole vocabulary. Training pays for a tail cluster
only at the characters that fall in it. It needs the characters ranked by frequency: the model keeps
that ranking (`rank`, id -> rank, from the train split) as a buffer, so the ids stay the corpus's own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ARCH_KEYS = ("vocab_size", "model", "rnn_size", "num_layers", "embed_size", "dropout", "cutoffs", "tie")
ARCH_DEFAULTS = {"cutoffs": [], "tie": False}  # keys files written before them lack
ADAPTIVE_FROM = 1000  # distinct characters from which `softmax: auto` is adaptive
DIV_VALUE = 4.0  # each tail cluster's projection is this much narrower than the one before
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # weight blocks per layer: one per gate
# sizes beyond any char-rnn anyone trains; checked before anything is allocated, so an absurd
# flag or a doctored model file is refused at once instead of building a model for minutes
MAX_WIDTH = 65536  # rnn_size, embed_size
MAX_LAYERS = 64
MAX_VOCAB = 0x110000 + 1  # every Unicode code point, and the unknown symbol

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class Regularizers:
    """Dropout that only training sees (probabilities; 0: off), beyond `dropout` between layers and before
    the output layer. None of them changes the model a file stores or how it samples."""
    embed_dropout: float = 0.0  # drop whole characters' embeddings (Gal & Ghahramani 2016)
    input_dropout: float = 0.0  # locked (variational) dropout on the embedded input
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices (Merity et al. 2017)

    @property
    def active(self) -> bool:
        return bool(self.embed_dropout or self.input_dropout or self.weight_drop)


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, model: str = "lstm", rnn_size: int = 128, num_layers: int = 2,
                 embed_size: int = 0, dropout: float = 0.0, cutoffs: list | tuple = (), tie: bool = False):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, model=model, rnn_size=rnn_size, num_layers=num_layers,
                           embed_size=embed_size, dropout=dropout, cutoffs=list(cutoffs), tie=tie)
        # By default, as char-rnn: one-hot input vectors (a fixed identity embedding: no gradient flows
        # into the input, the first layer's W_ih is the per-character table). A vocabulary wider than the
        # hidden state (thousands of CJK characters), or tied weights, get a trained embedding of rnn_size.
        self.one_hot = one_hot(vocab_size, rnn_size, embed_size, tie)
        self.regularizers = Regularizers()  # training only: none unless train.py sets them
        self.embed = nn.Embedding(vocab_size, vocab_size if self.one_hot else (embed_size or rnn_size))
        self.embed.weight.requires_grad_(not self.one_hot)
        # dropout between layers (inside the cell stack) and before the head, as char-rnn
        self.rnn = CELLS[model](self.embed.embedding_dim, rnn_size, num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.adaptive = bool(cutoffs)
        if self.adaptive:
            self.head = nn.AdaptiveLogSoftmaxWithLoss(rnn_size, vocab_size, list(cutoffs), div_value=DIV_VALUE)
            self.register_buffer("rank", torch.arange(vocab_size, dtype=torch.float32))  # id -> frequency rank
        else:
            self.head = nn.Linear(rnn_size, vocab_size)
        self.reset_parameters()
        if tie:  # the output layer's rows are the characters' embeddings (Press & Wolf 2017; Inan et al. 2017)
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        # char-rnn's init: U(-0.08, 0.08) everywhere, LSTM forget-gate bias 1 to remember by default
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)
        if self.adaptive:
            self.rank.copy_(torch.arange(len(self.rank), dtype=torch.float32))
        if self.one_hot:
            with torch.no_grad():
                self.embed.weight.copy_(torch.eye(self.embed.num_embeddings))
        if isinstance(self.rnn, nn.LSTM):
            h = self.rnn.hidden_size
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_"):
                    with torch.no_grad():
                        p[h:2 * h] = 1.0 if name.startswith("bias_ih") else 0.0

    def forward(self, x: torch.Tensor, state: State = None, targets: torch.Tensor | None = None):
        """x: (batch, time) character ids -> logits (batch, time, vocab), new state; with `targets` (the
        next characters, same shape), (mean cross-entropy, new state) instead: what training needs, without
        the adaptive softmax's full distribution."""
        out, state = self.recur(x, state)
        out = self.drop(out)
        if not self.adaptive:
            logits = self.head(out)
            if targets is None:
                return logits, state
            return nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)), state
        h = out.reshape(-1, out.size(-1)).float()
        rank = self.rank.long()
        if targets is not None:
            return self.head(h, rank[targets.reshape(-1)]).loss, state
        # log-probabilities over the vocabulary (by rank, then back to the ids): exact, and valid logits
        return self.head.log_prob(h)[:, rank].view(*x.shape, -1), state

    def target_nll(self, x: torch.Tensor, targets: torch.Tensor, state: State = None):
        """(-log p(target) of each position (batch, time), float32; new state): exact, as forward's logits
        give it, but the adaptive softmax scores only each target's cluster, not all the vocabulary (with
        4,000 characters, scoring a split that way is several times faster)."""
        if not self.adaptive:
            logits, state = self.forward(x, state)
            return nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none"), state
        out, state = self.recur(x, state)
        h = self.drop(out).reshape(-1, out.size(-1)).float()
        return -self.head(h, self.rank.long()[targets.reshape(-1)]).output.view(targets.shape), state

    def recur(self, x: torch.Tensor, state: State):
        """The embedded input through the recurrent layers, with the training-only regularizers where set:
        embedding dropout (whole characters), locked input dropout (one mask per stream for the whole chunk)
        and weight drop (DropConnect on the hidden-to-hidden matrices, AWD-LSTM's)."""
        r = self.regularizers
        if not self.training or not r.active:
            return self.rnn(self.embed(x), state)
        weight = self.embed.weight
        if r.embed_dropout:
            keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - r.embed_dropout) / (1 - r.embed_dropout)
            weight = weight * keep
        emb = nn.functional.embedding(x, weight)
        if r.input_dropout:
            mask = emb.new_empty(emb.size(0), 1, emb.size(2)).bernoulli_(1 - r.input_dropout) / (1 - r.input_dropout)
            emb = emb * mask
        if not r.weight_drop:
            return self.rnn(emb, state)
        dropped = {name: nn.functional.dropout(p, r.weight_drop, True)
                   for name, p in self.rnn.named_parameters() if name.startswith("weight_hh")}
        return torch.func.functional_call(self.rnn, dropped, (emb, state), strict=False)

    def rank_by(self, counts: torch.Tensor) -> None:
        """Rank the characters by `counts` (their frequency in the train split), the most frequent first."""
        if self.adaptive:
            order = torch.argsort(counts.to(self.rank.device), descending=True, stable=True)
            self.rank[order] = torch.arange(len(order), dtype=torch.float32, device=self.rank.device)

    def num_params(self) -> int:
        """Trained parameters (the fixed one-hot input is not counted, as char-rnn did not)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class Ensemble(nn.Module):
    """A mixture of CharRNNs over one vocabulary, p(c) = sum_i w_i p_i(c). `forward` returns the mixture's
    log-probabilities: as logits they give the mixture back under softmax (sampling, temperature) and
    cross-entropy scores it exactly (fair validation), so every consumer of a CharRNN takes it as is.
    Its state is the list of the members' states."""

    def __init__(self, members: list[CharRNN], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("log_w", torch.log(torch.tensor(weights, dtype=torch.float32)))
        self.config = {"model": "ensemble", "vocab_size": members[0].config["vocab_size"],
                       "members": [dict(m.config) for m in members], "weights": list(weights)}

    def forward(self, x: torch.Tensor, state=None):
        return mixed_step(self.members, x, state if state is not None else [None] * len(self.members), self.log_w)

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)


def mix(log_probs: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """The mixture log sum_i w_i p_i of the members' log-probabilities (stacked on the first dimension),
    with their log-weights: the ensemble's one formula (its forward pass, its sampling step, its selection)."""
    return torch.logsumexp(log_probs + log_w.view(-1, *[1] * (log_probs.dim() - 1)), dim=0)


def mixed_step(members, x: torch.Tensor, states: list, log_w: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Each member's step (a CharRNN, or sample.Stepper) on `x` from its own state, their distributions mixed:
    (the mixture's log-probabilities, the members' new states)."""
    logps, new = [], []
    for member, s in zip(members, states):
        logits, s = member(x, s)
        logps.append(torch.log_softmax(logits.float(), dim=-1))
        new.append(s)
    return mix(torch.stack(logps), log_w), new


def members_of(model: nn.Module) -> list[CharRNN]:
    """The CharRNNs a model is made of: itself, or an ensemble's members."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT chunks while keeping the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def one_hot(vocab_size: int, rnn_size: int, embed_size: int, tie: bool = False) -> bool:
    """CharRNN's input rule: one-hot unless an embedding is asked for, the weights are tied, or the vocabulary
    is wider than the state."""
    return not embed_size and not tie and vocab_size <= rnn_size


def input_size_of(config: dict) -> tuple[int, bool]:
    """(width of the first layer's input, whether it is the fixed one-hot table)."""
    v, h, e, tie = config["vocab_size"], config["rnn_size"], config["embed_size"], config.get("tie", False)
    return (v, True) if one_hot(v, h, e, tie) else (h if tie else e or h, False)


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The state dict's tensor shapes that `build(config)` makes, by arithmetic alone (nothing allocated)."""
    v, h, n = config["vocab_size"], config["rnn_size"], config["num_layers"]
    g = GATES[config["model"]] * h
    width = input_size_of(config)[0]
    shapes = {"embed.weight": (v, width)}
    for k in range(n):
        shapes |= {f"rnn.weight_ih_l{k}": (g, width if k == 0 else h), f"rnn.weight_hh_l{k}": (g, h),
                   f"rnn.bias_ih_l{k}": (g,), f"rnn.bias_hh_l{k}": (g,)}
    cutoffs = list(config.get("cutoffs") or [])
    if not cutoffs:
        return shapes | {"head.weight": (v, h), "head.bias": (v,)}
    shapes |= {"head.head.weight": (cutoffs[0] + len(cutoffs), h), "rank": (v,)}
    edges = cutoffs + [v]
    for i in range(len(cutoffs)):
        width_i = int(h // (DIV_VALUE ** (i + 1)))
        shapes |= {f"head.tail.{i}.0.weight": (width_i, h), f"head.tail.{i}.1.weight": (edges[i + 1] - edges[i], width_i)}
    return shapes


def cutoffs_for(vocab_size: int, softmax: str = "auto") -> list[int]:
    """The adaptive softmax's cluster edges by frequency rank ([] for a full softmax): a head of the 256
    most frequent characters, then one cluster to 1,024 and one for the rest (one for all the rest below
    2,048 distinct characters)."""
    if softmax == "full" or (softmax == "auto" and vocab_size < ADAPTIVE_FROM) or vocab_size <= 300:
        return []
    return [256, 1024] if vocab_size > 2048 else [256]


def param_count(config: dict) -> int:
    """Trained parameters, as CharRNN.num_params (the fixed one-hot table and the rank are not counted)."""
    shapes = expected_shapes(config)
    if input_size_of(config)[1]:
        del shapes["embed.weight"]
    if config.get("tie"):  # one matrix, the embedding's
        del shapes["head.weight"]
    shapes.pop("rank", None)
    return sum(math.prod(s) for s in shapes.values())


def score_width(config: dict) -> int:
    """The most scores one position needs at once: the vocabulary for a full softmax; for an adaptive one,
    its head or its widest cluster, whichever is wider (a target in the tail is scored over its cluster)."""
    v, cutoffs = config["vocab_size"], list(config.get("cutoffs") or [])
    if not cutoffs:
        return v
    edges = cutoffs + [v]
    return max(cutoffs[0] + len(cutoffs), *(b - a for a, b in zip(edges, edges[1:])))


def core_params(config: dict) -> int:
    """The recurrent core's parameters: all but the input embedding and the output layer, as scaling-law
    work counts them. They are what learns the text's structure; the embedding and the output layer grow
    with the vocabulary (with 3,600 distinct characters they hold most of a small model's parameters)."""
    return sum(math.prod(s) for name, s in expected_shapes(config).items() if name.startswith("rnn."))


def arch_of(config: dict) -> dict:
    """The architecture keys of a stored config; files from before a key have its default (ARCH_DEFAULTS)."""
    return {k: config.get(k, ARCH_DEFAULTS[k]) if k in ARCH_DEFAULTS else config[k] for k in ARCH_KEYS}


def build(config: dict) -> CharRNN:
    return CharRNN(**arch_of(config))
