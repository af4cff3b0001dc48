"""One training run: truncated BPTT over contiguous streams, fair validation, atomic checkpoints, resume.

The loop keeps everything on the training device and reads the loss back only every `print_every`
iterations, so the GPU is never stalled by a per-step host sync. Progress goes to a callback
(`on_eval`), which is how a sweep reports to Ray Tune; this module knows nothing of Ray or MLflow.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from charsearch.core import artifact
from charsearch.core.config import TrainConfig, label_of
from charsearch.core.data import MIN_EVAL_CHARS, Batches, Corpus, char_counts, check_fits, check_val, load_corpus
from charsearch.core.devices import EVAL_BYTES, resolve_device
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.model import CharRNN, Regularizers, State, cutoffs_for, detach_state, members_of, score_width
from charsearch.core.threads import MIN_WINDOW_S, WINDOW_S, Threads
from charsearch.core.units import bits, human_bytes, loss_text

VAL_STREAMS = 16  # the fair validation protocol: fixed streams, state carried, every character scored once
VAL_CHUNK = 512  # memory only: with the state carried, the chunk length does not change the result
EXPLODE_FACTOR = 3.0  # char-rnn's guard: stop when the loss exceeds 3x its initial value


class Diverged(UsageError):
    """The loss became NaN/inf or exploded: the hyperparameters do not train."""


@dataclass
class TrainResult:
    best_val_loss: float
    best_checkpoint: Path | None
    latest_checkpoint: Path | None
    iterations: int
    epochs: float
    chars_trained: int
    chars_per_sec: float
    stop_reason: str
    num_params: int
    history: list[dict] = field(default_factory=list)


OnEval = Callable[[dict, Path, bool], bool | None]  # (metrics, checkpoint, is_best) -> stop?


# ---------------------------------------------------------------------------------------------
# fair validation


class Evaluator:
    """Scores a split the same way for every model: VAL_STREAMS contiguous streams read in order with
    the hidden state carried, every character predicted exactly once, dropout off, float32. The
    number therefore depends only on the weights and the split, not on the batch size or sequence
    length the model was trained with. With `limit`, each stream is read only from its start until about
    `limit` characters are scored in all: stretches spread evenly over the split, the same for every
    model (a large val split would otherwise cost more than the training between two evaluations)."""

    def __init__(self, ids: np.ndarray, device: torch.device, streams: int = VAL_STREAMS, limit: int = 0):
        data = torch.from_numpy(np.array(ids)).to(device)  # compact dtype; chunks are widened as read
        self.n = len(data) - 1  # predictions: character t+1 from characters 0..t
        if len(data) < MIN_EVAL_CHARS:
            raise UsageError(f"the evaluation split needs at least {MIN_EVAL_CHARS} characters")
        k = min(streams, self.n)
        self.length = -(-self.n // k)
        x = torch.zeros(k * self.length, dtype=data.dtype, device=device)
        y = torch.zeros_like(x)
        mask = torch.zeros(k * self.length, dtype=torch.bool, device=device)
        x[: self.n], y[: self.n], mask[: self.n] = data[:-1], data[1:], True
        self.x, self.y, self.mask = x.view(k, -1), y.view(k, -1), mask.view(k, -1)
        if 0 < limit < self.n:
            self.length = -(-limit // k)
            self.x, self.y, self.mask = self.x[:, :self.length], self.y[:, :self.length], self.mask[:, :self.length]
            self.n = int(self.mask.sum())

    @torch.no_grad()
    def __call__(self, model: CharRNN) -> float:
        """Mean negative log-likelihood in nats per character."""
        total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        for nll, mask in self._chunks(model):
            total += (nll * mask).sum(dtype=torch.float64)
        return total.item() / self.n

    @torch.no_grad()
    def target_log_probs(self, model: CharRNN) -> torch.Tensor:
        """log p(character) of every character predicted, in the split's order (float64, on the CPU): what
        a mixture of models is scored from."""
        streams = [[] for _ in range(self.x.shape[0])]
        for nll, _ in self._chunks(model):
            for k, row in enumerate((-nll).double().cpu()):
                streams[k].append(row)
        return torch.cat([torch.cat(s) for s in streams])[: self.n]

    def chunk_length(self, model) -> int:
        """Characters per stream scored at once: VAL_CHUNK, fewer where the scores of that many (streams x
        chunk x the widest scores a position needs, model.score_width, with their softmax and a temporary:
        12 bytes each) would pass EVAL_BYTES, as with hundreds of thousands of distinct characters."""
        members = members_of(model)
        mixed = members[0].config["vocab_size"] if len(members) > 1 else 0  # the mixture's own scores
        width = sum(score_width(m.config) for m in members) + mixed
        return max(1, min(VAL_CHUNK, EVAL_BYTES // (12 * self.x.shape[0] * width)))

    def _chunks(self, model: CharRNN):
        """(per-character NLL, mask of real characters) of each chunk, the streams read in order with the
        hidden state carried, dropout off."""
        was_training = model.training
        model.eval()
        state = None
        chunk = self.chunk_length(model)
        for s in range(0, self.length, chunk):
            cols = slice(s, s + chunk)
            x, y = self.x[:, cols].long(), self.y[:, cols].long()
            if isinstance(model, CharRNN):
                nll, state = model.target_nll(x, y, state)
            else:  # a mixture of models: its probabilities are mixed over the whole vocabulary
                logits, state = model(x, state)
                nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
            yield nll, self.mask[:, cols]
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# schedules


def run_progress(cfg: TrainConfig, iteration: int, total_iters: int, elapsed: float = 0.0) -> float:
    """How far the run is, in [0, 1]: by iterations or, under --max-time, by wall time, whichever is
    further, so a schedule ends annealed whether the epochs or the clock run out first."""
    progress = iteration / max(1, total_iters)
    if cfg.max_time > 0:
        progress = max(progress, elapsed / cfg.max_time)
    return min(1.0, progress)


def learning_rate(cfg: TrainConfig, iteration: int, iters_per_epoch: int, total_iters: int,
                  elapsed: float = 0.0) -> float:
    """The schedule's rate, raised linearly from 0 over the first warmup_iters iterations: Adam's first steps,
    taken before its second-moment estimates settle, can throw a fresh model into a slow start it never
    makes up (a GRU 2x192 at 0.0035 on 64 x 128 steps, BENCHMARKS.md warmup-cpu)."""
    warmup = min(1.0, (iteration + 1) / cfg.warmup_iters) if cfg.warmup_iters else 1.0
    return warmup * scheduled_rate(cfg, iteration, iters_per_epoch, total_iters, elapsed)


def scheduled_rate(cfg: TrainConfig, iteration: int, iters_per_epoch: int, total_iters: int,
                   elapsed: float = 0.0) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = run_progress(cfg, iteration, total_iters, elapsed)
    if cfg.lr_schedule == "cosine":  # to 10% of the initial rate at the end of the run
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    if cfg.lr_schedule == "wsd":  # constant, then linearly to 0 over the last decay_frac of the run
        return cfg.learning_rate * min(1.0, (1.0 - progress) / cfg.decay_frac)
    # char-rnn: after each epoch from learning_rate_decay_after on, multiply by learning_rate_decay
    epochs_done = iteration // iters_per_epoch
    decays = max(0, epochs_done - max(1, math.ceil(cfg.learning_rate_decay_after)) + 1)
    return cfg.learning_rate * cfg.learning_rate_decay ** decays


def ss_probability(cfg: TrainConfig, iteration: int) -> float:
    """Scheduled sampling: the probability of feeding the true previous character, decaying linearly."""
    return max(cfg.min_ss, cfg.start_ss - cfg.decay_ss * iteration)


def forward_scheduled_sampling(model: CharRNN, x: torch.Tensor, state: State, p_true: float,
                               generator: torch.Generator | None = None) -> tuple[torch.Tensor, State]:
    """Bengio et al. 2015: step through the chunk; the input at step t>0 is the true character x[:, t]
    with probability p_true, else a character sampled from the model's own prediction at step t-1.
    Gradients flow through the model as it ran (the sampled id itself is not differentiated).
    With p_true = 1 this computes exactly what the teacher-forced forward computes, one step at a time."""
    batch, steps = x.shape
    outputs = []
    inp = x[:, :1]
    for t in range(steps):
        logits, state = model(inp, state)
        outputs.append(logits)
        if t + 1 < steps:
            with torch.no_grad():
                probs = F.softmax(logits[:, 0].float(), dim=-1)
                sampled = torch.multinomial(probs, 1, generator=generator)
                keep = torch.rand(batch, 1, device=x.device, generator=generator) < p_true
                inp = torch.where(keep, x[:, t + 1:t + 2], sampled)
    return torch.cat(outputs, dim=1), state


# ---------------------------------------------------------------------------------------------
# the run


def make_optimizer(cfg: TrainConfig, model: CharRNN, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.RMSprop(params, lr=cfg.learning_rate, alpha=cfg.decay_rate, weight_decay=cfg.weight_decay)


def _checkpoint_name(cfg: TrainConfig, epoch: float, val: float) -> str:
    return f"{cfg.checkpoint_prefix}_epoch{epoch:.2f}_{val:.4f}.pt"


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _state_to_cpu(state: State):
    if state is None:
        return None
    return [s.detach().float().cpu() for s in (state if isinstance(state, tuple) else (state,))]


def _state_from_cpu(saved, device: torch.device, model: str) -> State:
    if saved is None:
        return None
    tensors = [s.to(device, torch.float32) for s in saved]
    return tuple(tensors) if model == "lstm" else tensors[0]


# a checkpoint's training state (Run.payload writes it): each field and the types it may hold
STATE_FIELDS = {"optimizer": (dict,), "iteration": (int,), "best_val_loss": (float, int), "initial_loss": (float, int, type(None)),
                "evals_since_best": (int,), "history": (list,), "best_checkpoint": (str, type(None)), "rng": (dict,),
                "hidden": (list, type(None)), "batch_size": (int,), "grad_scaler": (dict, type(None))}


def state_problem(loop: dict) -> str | None:
    """What is wrong with a checkpoint's training state, or None."""
    for key, kinds in STATE_FIELDS.items():
        v = loop.get(key)
        if key not in loop or not isinstance(v, kinds) or isinstance(v, bool):
            return f"state {key} is {excerpt(v) if key in loop else 'missing'}"
    optimizer = loop["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        return "state optimizer lacks its state and parameter groups"
    if not isinstance(loop["rng"].get("cpu"), torch.Tensor):
        return "state rng lacks the CPU generator's state"
    if loop["hidden"] is not None and not all(isinstance(t, torch.Tensor) for t in loop["hidden"]):
        return "state hidden is not a list of tensors"
    if loop["iteration"] < 0:
        return f"state iteration is {loop['iteration']}"
    return None


class Progress:
    """A live progress bar on a terminal; one line per evaluation otherwise (logs, CI)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        self.enabled = enabled
        self.at = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def update_to(self, n: int, **fields) -> None:
        if self.bar is not None:
            self.bar.update(n - self.at)
            self.at = n
            if fields:
                self.bar.set_postfix_str(" ".join(f"{k} {v}" for k, v in fields.items()), refresh=False)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Run:
    """One training run as named steps: set up, restore, step, evaluate and checkpoint, the stop rules.
    `train()` below drives them; a resume is "set up, then restore"."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus | None, on_eval: OnEval | None, progress: bool,
                 summary_extra: dict | None, deadline: float | None = None, eval_every_s: float | None = None,
                 thread_rates: tuple[float | None, float | None] | None = (None, None)):
        cfg = replace(cfg.validate())  # the caller's config stays as it was
        self.cfg, self.on_eval = cfg, on_eval
        self.device = device = resolve_device(cfg.device)
        resume = self.read_resume()
        self.corpus = corpus = corpus or load_corpus(cfg.data, cfg.min_freq)
        train_ids, val_ids = self.check_data(resume)
        # Mixed precision is opt-in: PyTorch's autocast runs cuDNN RNNs in fp16 whatever dtype it is given
        # (bf16 would still be fp16 there), so it needs loss scaling, and one char-RNN trial is bound by
        # kernel latency rather than arithmetic. fp32 lets cuDNN use TF32 tensor cores where the GPU has them.
        self.use_fp16 = cfg.precision == "fp16"
        if self.use_fp16 and device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device; use auto or fp32 on CPU")
        self.ckpt_dir = _checkpoint_dir(cfg)
        self.build(train_ids, val_ids)
        if resume is not None:
            self.restore(resume)
        # a resumed run goes on pruning the folder it resumed in: its best and the checkpoint it started from
        self.written: list[Path] = []
        for p in (self.best_path, Path(cfg.init_from) if resume is not None else None):
            if p is not None and p.is_file() and p.parent.resolve() == self.ckpt_dir.resolve() and p not in self.written:
                self.written.append(p)
        self.summary_base = self.describe(summary_extra)
        self.bar = Progress(progress, self.total_iters, self.iteration)
        if progress:
            self.bar.line(f"{label_of(cfg)}: {self.model.num_params():,} parameters; "
                          f"train {len(train_ids):,} chars ({self.iters_per_epoch} iterations/epoch), val "
                          f"{len(val_ids):,} chars; vocab {len(corpus.vocab)}; {device}{' fp16' if self.use_fp16 else ''}")
        # a deadline (time.time()) is the run's time budget counted from now, its set-up done, and the
        # last evaluation ends before it: training stops that evaluation's length (the longest so far) early
        self.deadline, self.eval_s = deadline, 0.0
        if deadline is not None:
            cfg.max_time = max(1.0, deadline - time.time())
        # clocks: the whole run (budget, schedule) and training only (throughput; evaluations excluded)
        self.start = time.monotonic()
        self.it_at_start = self.iteration
        self.train_time, self.window_start = 0.0, self.start
        self.eval_every_s, self.last_eval = eval_every_s, self.start
        self.loss_sum = torch.zeros((), device=device)
        self.window_iters, self.window_loss = 0, math.nan
        # on a CPU with several threads: the faster of all and one, watched each window (core/threads.py)
        self.threads = None
        if device.type == "cpu" and thread_rates is not None:
            self.threads = Threads(torch.get_num_threads(), thread_rates[0], self.timed_steps, thread_rates[1])
        self.thread_notes: list[str] = []
        self.threads_watched = 0.0  # training seconds at the last window's end

    def read_resume(self) -> dict | None:
        """The checkpoint of --init-from, checked; its architecture becomes the run's, as char-rnn's."""
        cfg = self.cfg
        if not cfg.init_from:
            return None
        resume = artifact.safe_load(cfg.init_from, "charsearch checkpoint")
        if resume["format"] != artifact.CHECKPOINT_FORMAT:
            raise UsageError(f"--init-from {cfg.init_from}: a model file, not a training checkpoint (it has no "
                             f"optimizer state); pass a checkpoint from the checkpoint folder")
        arch = artifact.load(cfg.init_from, resume).config  # checked against the weights it carries
        for key in ("model", "rnn_size", "num_layers", "embed_size", "dropout"):
            setattr(cfg, key, arch[key])
        cfg.softmax = "adaptive" if arch["cutoffs"] else "full"
        cfg.tie_weights = arch["tie"]
        return resume

    def check_data(self, resume: dict | None):
        cfg, corpus = self.cfg, self.corpus
        train_ids, val_ids, _ = corpus.split(cfg.train_frac, cfg.val_frac)
        check_fits(len(train_ids), cfg.batch_size, cfg.seq_length, corpus.path)
        check_val(len(val_ids), cfg.val_frac, corpus.path)
        if resume is not None and tuple(resume["model"]["vocab"]) != corpus.vocab.chars:
            raise UsageError(f"--init-from {cfg.init_from}: the checkpoint's vocabulary ({len(resume['model']['vocab'])} "
                             f"characters) differs from {corpus.path}'s ({len(corpus.vocab)}); resume on the same "
                             f"corpus and min_freq")
        return train_ids, val_ids

    def build(self, train_ids, val_ids) -> None:
        """The model, its optimizer, the batches and the evaluator; the loop's counters at their start."""
        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        vocab = len(self.corpus.vocab)
        cutoffs = cutoffs_for(vocab, cfg.softmax)
        if cfg.tie_weights and cutoffs:
            raise UsageError(f"--tie-weights needs a full softmax; {vocab:,} distinct characters get an adaptive one: "
                             f"add --softmax full, or leave the weights untied")
        self.model = CharRNN(vocab, cfg.model, cfg.rnn_size, cfg.num_layers, cfg.embed_size, cfg.dropout, cutoffs,
                             cfg.tie_weights).to(device)
        self.model.regularizers = Regularizers(cfg.embed_dropout, cfg.input_dropout, cfg.weight_drop)
        self.model.rank_by(torch.from_numpy(char_counts(train_ids, vocab)))
        self.optimizer = make_optimizer(cfg, self.model, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_fp16)
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.batches = Batches(train_ids, cfg.batch_size, cfg.seq_length, device)
        self.evaluate = Evaluator(val_ids, device, limit=cfg.eval_chars)
        self.iters_per_epoch = len(self.batches)
        self.total_iters = max(1, math.ceil(cfg.max_epochs * self.iters_per_epoch))
        self.chars_per_iter = cfg.batch_size * cfg.seq_length
        self.iteration, self.best_val, self.initial_loss, self.evals_since_best = 0, math.inf, None, 0
        self.state: State = None
        self.history: list[dict] = []
        self.best_path: Path | None = None

    def describe(self, extra: dict | None) -> dict:
        """The summary every checkpoint of the run carries: its data, where it ran, and `extra`."""
        cfg, corpus, device = self.cfg, self.corpus, self.device
        return {
            "data_path": str(corpus.path), "data_sha256": corpus.sha256, "data_chars": int(len(corpus.ids)),
            "train_frac": cfg.train_frac, "val_frac": cfg.val_frac, "eval_chars": cfg.eval_chars,
            "min_freq": cfg.min_freq, "host": socket.gethostname(),
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch": str(torch.__version__), "python": platform.python_version(), "params": self.model.num_params(),
            **(extra or {}),
        }

    # --- the checkpoint payload and its reader, side by side -----------------------------------

    def payload(self, val: float) -> dict:
        cfg, epoch = self.cfg, self.epoch
        return {
            "format": artifact.CHECKPOINT_FORMAT, "version": artifact.CHECKPOINT_VERSION,
            "model": artifact.model_part(self.model, self.corpus.vocab),
            "summary": {**self.summary_base, "val_loss": val, "val_bpc": bits(val), "epoch": epoch,
                        "iteration": self.iteration, "chars_trained": self.iteration * self.chars_per_iter,
                        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "train_config": cfg.to_dict(),
            "state": {
                "optimizer": self.optimizer.state_dict(), "iteration": self.iteration, "best_val_loss": self.best_val,
                "initial_loss": self.initial_loss, "evals_since_best": self.evals_since_best, "history": self.history,
                "best_checkpoint": str(self.best_path) if self.best_path else None, "rng": _rng_state(self.device),
                "hidden": _state_to_cpu(self.state), "batch_size": cfg.batch_size,
                "grad_scaler": self.scaler.state_dict() if self.use_fp16 else None,
            },
        }

    def restore(self, ckpt: dict) -> None:
        loop = ckpt["state"]
        problem = state_problem(loop)
        if problem is None:
            try:
                self.model.load_state_dict(ckpt["model"]["state_dict"])
                self.optimizer.load_state_dict(loop["optimizer"])
                if self.use_fp16 and loop.get("grad_scaler"):
                    self.scaler.load_state_dict(loop["grad_scaler"])
                _set_rng_state(loop["rng"], self.device)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                problem = f"its optimizer or RNG state does not fit the model ({type(e).__name__}: " \
                          f"{excerpt(str(e).splitlines()[0] if str(e) else '')})"
        if problem:
            raise UsageError(f"--init-from {self.cfg.init_from}: damaged charsearch checkpoint ({problem})")
        self.iteration, self.best_val, self.initial_loss = loop["iteration"], loop["best_val_loss"], loop["initial_loss"]
        self.evals_since_best, self.history = loop["evals_since_best"], list(loop["history"])
        self.best_path = Path(loop["best_checkpoint"]) if loop.get("best_checkpoint") else None
        if loop["hidden"] is not None and loop["batch_size"] == self.cfg.batch_size and self.iteration % self.iters_per_epoch:
            self.state = _state_from_cpu(loop["hidden"], self.device, self.cfg.model)

    # --- the steps ------------------------------------------------------------------------------

    @property
    def epoch(self) -> float:
        return self.iteration / self.iters_per_epoch

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def lr(self, iteration: int) -> float:
        return learning_rate(self.cfg, iteration, self.iters_per_epoch, self.total_iters, self.elapsed)

    def step(self) -> None:
        """One iteration of truncated BPTT: the next chunk of every stream, forward, backward, update."""
        cfg = self.cfg
        i = self.iteration % self.iters_per_epoch
        if i == 0:
            self.state = None  # each epoch starts the streams afresh, as char-rnn
        x, y = self.batches.get(i)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.iteration)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_fp16):
            if cfg.use_ss:
                logits, state = forward_scheduled_sampling(self.step_model, x, self.state,
                                                           ss_probability(cfg, self.iteration))
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            else:
                loss, state = self.step_model(x, self.state, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler is a pass-through unless fp16
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state = detach_state(state)
        self.loss_sum += loss.detach()
        self.iteration += 1
        self.window_iters += 1
        if self.initial_loss is None:
            self.initial_loss = loss.item()
            if not math.isfinite(self.initial_loss):
                raise Diverged(f"training diverged: the first loss is {self.initial_loss}; check the data and "
                               f"--learning-rate ({cfg.learning_rate})")

    def read_loss(self) -> None:
        """The mean training loss since the last read-out: the only regular host sync."""
        cfg = self.cfg
        self.window_loss = (self.loss_sum / self.window_iters).item()
        self.loss_sum.zero_()
        self.window_iters = 0
        if not math.isfinite(self.window_loss) or self.window_loss > EXPLODE_FACTOR * self.initial_loss:
            raise Diverged(f"training diverged at iteration {self.iteration}: loss {self.window_loss:.4g} (initial "
                           f"{self.initial_loss:.4g}); lower --learning-rate ({cfg.learning_rate:g}) or "
                           f"--grad-clip ({cfg.grad_clip:g})")
        now = time.monotonic()
        self.train_time += now - self.window_start
        self.window_start = now
        self.bar.update_to(self.iteration, loss=f"{self.window_loss:.3f}",
                           val=f"{self.best_val:.3f}" if self.history else "-", chars_s=f"{self.chars_per_sec:,.0f}")

    @property
    def chars_this_process(self) -> int:
        """Characters trained since this process started the run (a resumed run's earlier ones not counted)."""
        return (self.iteration - self.it_at_start) * self.chars_per_iter

    @property
    def chars_per_sec(self) -> float:
        return self.chars_this_process / max(self.train_time, 1e-9)

    def trained_s(self) -> float:
        """Training seconds so far, the current stretch since the last read-out included."""
        return self.train_time + (time.monotonic() - self.window_start)

    def timed_steps(self, seconds: float) -> float:
        """Chars/s of the run's own next training steps on torch's threads now: one untimed (a new number of
        threads warms up), then about `seconds` of them: half the steps left before the next evaluation at most
        (the other setting is timed next), none past an evaluation its seconds make due, leaving the time budget
        its last evaluation; nan where that leaves no step to time."""
        left = min(self.total_iters, (self.iteration // self.cfg.eval_every + 1) * self.cfg.eval_every) - self.iteration
        stop = self.iteration + left // 2
        near_end = self.cfg.max_time > 0 and self.elapsed + self.eval_s + 4 * seconds >= self.cfg.max_time
        if self.iteration + 2 > stop or near_end or self.eval_overdue:
            return math.nan
        self.step()
        t, n = time.perf_counter(), 0
        while self.iteration < stop and not self.eval_overdue and (n == 0 or time.perf_counter() - t < seconds):
            self.step()
            n += 1
        return n * self.chars_per_iter / (time.perf_counter() - t) if n else math.nan

    def watch_threads(self, at_eval: bool) -> None:
        """After an evaluation MIN_WINDOW_S or more of training since the last window, or once WINDOW_S have
        passed: the window's rate sets the threads of the next (core/threads.py)."""
        if self.threads is None or self.trained_s() - self.threads_watched < (MIN_WINDOW_S if at_eval else WINDOW_S):
            return
        self.note_threads(self.threads.after_window(self.chars_this_process, self.trained_s()))
        self.threads_watched = self.trained_s()  # steps its timing trained belong to no window
        self.threads.start_window(self.chars_this_process, self.threads_watched)

    def start_threads(self) -> None:
        """Before training: the faster of all threads and one, timed on its first steps."""
        if self.threads is not None and self.iteration < self.total_iters:
            self.note_threads(self.threads.probe())
            self.threads_watched = self.trained_s()
            self.threads.start_window(self.chars_this_process, self.threads_watched)

    def note_threads(self, said: str) -> None:
        """A line about the threads: shown with the progress, and given with the next evaluation's metrics."""
        if said:
            self.thread_notes.append(said)
            self.bar.line(said)

    def evaluate_and_checkpoint(self, final: bool) -> bool:
        """Score the val split, write a checkpoint (keeping the best and the latest), report through
        on_eval; returns whether the caller asked to stop."""
        t0 = time.monotonic()
        val = self.evaluate(self.model)
        self.eval_s = max(self.eval_s, time.monotonic() - t0)
        is_best = val < self.best_val
        if is_best:
            self.best_val, self.evals_since_best = val, 0
        else:
            self.evals_since_best += 1
        # the run's own last evaluation (epochs, time budget or patience reached), as opposed to a stop
        # requested from outside (a scheduler); a sweep tells finished trials from stopped ones by it
        final = final or self.patience_reached
        metrics = {
            "iteration": self.iteration, "epoch": self.epoch, "chars_trained": self.iteration * self.chars_per_iter,
            "train_loss": self.window_loss, "val_loss": val, "val_bpc": bits(val), "best_val_loss": self.best_val,
            "learning_rate": self.lr(max(0, self.iteration - 1)), "chars_per_sec": self.chars_per_sec,
            "elapsed_s": self.elapsed, "train_s": self.train_time, "final": final,
        }
        if self.cfg.use_ss:
            metrics["ss_prob"] = ss_probability(self.cfg, self.iteration)
        if self.threads is not None:
            metrics["threads"] = self.threads.current  # those it trained on last
            if self.thread_notes:
                metrics["note"] = "; ".join(self.thread_notes)
                self.thread_notes.clear()
        self.history.append(metrics)
        path = self.ckpt_dir / _checkpoint_name(self.cfg, self.epoch, val)
        if is_best:
            self.best_path = path
        artifact.save(path, self.payload(val))
        if path not in self.written:
            self.written.append(path)
        for old in self.written[:-1]:  # keep the best and the latest only
            if old != self.best_path and old != path:
                old.unlink(missing_ok=True)
                self.written.remove(old)
        self.bar.line(f"iter {self.iteration}/{self.total_iters} (epoch {self.epoch:.2f}): train {self.window_loss:.4f}, "
                      f"val {loss_text(val)}{' *best*' if is_best else ''}, "
                      f"{self.chars_per_sec:,.0f} chars/s")
        stop = self.on_eval(metrics, path, is_best) if self.on_eval else False
        self.window_start = self.last_eval = time.monotonic()  # evaluation time is not training time
        if not (final or stop):
            self.watch_threads(at_eval=True)
        return bool(stop)

    # --- the stop rules -------------------------------------------------------------------------

    @property
    def out_of_time(self) -> bool:
        reserve = self.eval_s if self.deadline is not None else 0.0
        return self.cfg.max_time > 0 and self.elapsed + reserve >= self.cfg.max_time

    @property
    def eval_overdue(self) -> bool:
        return self.eval_every_s is not None and time.monotonic() - self.last_eval >= self.eval_every_s

    @property
    def patience_reached(self) -> bool:
        return bool(self.cfg.patience and self.evals_since_best >= self.cfg.patience)

    def result(self, stop_reason: str) -> TrainResult:
        return TrainResult(self.best_val, self.best_path, self.written[-1] if self.written else None, self.iteration,
                           self.epoch, self.iteration * self.chars_per_iter, self.chars_per_sec, stop_reason,
                           self.model.num_params(), self.history)


def train(cfg: TrainConfig, corpus: Corpus | None = None, on_eval: OnEval | None = None,
          progress: bool = True, summary_extra: dict | None = None, deadline: float | None = None,
          eval_every_s: float | None = None,
          thread_rates: tuple[float | None, float | None] | None = (None, None)) -> TrainResult:
    """Train one model as configured. `on_eval(metrics, checkpoint, is_best)` is called after every
    evaluation; returning True stops the run (as ASHA or a budget would). With `deadline` (time.time())
    the run ends by then, its last evaluation included, whatever its set-up took: its max_time is the
    time left once it is set up. With `eval_every_s` it also evaluates once that many seconds have passed
    since the last evaluation (or the start), however few iterations that was. On a CPU with several
    threads it trains on the faster of all and one (core/threads.py); `thread_rates` (chars/s of its shape on
    one thread, and alone on all, where a sweep measured them) save timing them; None keeps torch's threads as
    they are (a seeded run then repeats exactly: the threads change the last bits of its arithmetic)."""
    run = Run(cfg, corpus, on_eval, progress, summary_extra, deadline, eval_every_s, thread_rates)
    stop_reason = "max_epochs"
    if on_eval is not None and run.history and run.iteration >= run.total_iters:
        # resumed from its own last evaluation (a sweep killed as this trial ended): nothing is left to train,
        # and the caller may never have heard of that evaluation, so it is reported again
        on_eval(dict(run.history[-1]), Path(cfg.init_from), False)
    run.model.train()
    threads = torch.get_num_threads()
    try:
        run.start_threads()
        while run.iteration < run.total_iters:
            run.step()
            at_eval = run.iteration % cfg.eval_every == 0 or run.iteration == run.total_iters or run.eval_overdue
            if not at_eval:
                run.watch_threads(at_eval=False)
            out_of_time = run.out_of_time
            if run.iteration % cfg.print_every == 0 or at_eval or out_of_time:
                run.read_loss()
            if at_eval or out_of_time:
                stopped = run.evaluate_and_checkpoint(final=run.iteration >= run.total_iters or out_of_time)
                if out_of_time:
                    stop_reason = "max_time"
                elif run.patience_reached:
                    stop_reason = "patience"
                elif stopped:
                    stop_reason = "stopped"
                else:
                    continue
                break
    except torch.cuda.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(run.device)
        raise UsageError(f"CUDA out of memory on {run.device} ({human_bytes(free)} of {human_bytes(total)} free) "
                         f"for {label_of(cfg)} at batch_size {cfg.batch_size} x "
                         f"seq_length {cfg.seq_length}: lower them, or give the run more of the GPU") from None
    finally:
        run.bar.close()
        torch.set_num_threads(threads)  # the caller's, whatever the run chose
    return run.result(stop_reason)


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    ckpt_dir = Path(cfg.checkpoint_dir)
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise UsageError(f"--checkpoint-dir {ckpt_dir}: a file, not a folder; name a folder (created if missing)")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(ckpt_dir, os.W_OK):  # found now rather than after the first stretch of training
        raise UsageError(f"--checkpoint-dir {ckpt_dir}: not writable; name a folder you can write to")
    return ckpt_dir
