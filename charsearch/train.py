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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import artifact
from .config import DEVICE_NAME, TrainConfig
from .data import Batches, Corpus, check_fits, check_val, load_corpus
from .errors import UsageError
from .model import CharRNN, State, detach_state

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


def resolve_device(name: str) -> torch.device:
    if not DEVICE_NAME.fullmatch(name):
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# fair validation


class Evaluator:
    """Scores a split the same way for every model: VAL_STREAMS contiguous streams read in order with
    the hidden state carried, every character predicted exactly once, dropout off, float32. The
    number therefore depends only on the weights and the split, not on the batch size or sequence
    length the model was trained with."""

    def __init__(self, ids: np.ndarray, device: torch.device, streams: int = VAL_STREAMS):
        data = torch.from_numpy(np.array(ids)).to(device)  # compact dtype; chunks are widened as read
        self.n = len(data) - 1  # predictions: character t+1 from characters 0..t
        if self.n < 1:
            raise UsageError("the evaluation split needs at least 2 characters")
        k = min(streams, self.n)
        self.length = -(-self.n // k)
        x = torch.zeros(k * self.length, dtype=data.dtype, device=device)
        y = torch.zeros_like(x)
        mask = torch.zeros(k * self.length, dtype=torch.bool, device=device)
        x[: self.n], y[: self.n], mask[: self.n] = data[:-1], data[1:], True
        self.x, self.y, self.mask = x.view(k, -1), y.view(k, -1), mask.view(k, -1)

    @torch.no_grad()
    def __call__(self, model: CharRNN) -> float:
        """Mean negative log-likelihood in nats per character."""
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        state = None
        for s in range(0, self.length, VAL_CHUNK):
            cols = slice(s, s + VAL_CHUNK)
            logits, state = model(self.x[:, cols].long(), state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), self.y[:, cols].long(), reduction="none")
            total += (nll * self.mask[:, cols]).sum(dtype=torch.float64)
        model.train(was_training)
        return total.item() / self.n


# ---------------------------------------------------------------------------------------------
# schedules


def learning_rate(cfg: TrainConfig, iteration: int, iters_per_epoch: int, total_iters: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if cfg.lr_schedule == "cosine":  # to 10% of the initial rate at the last iteration
        progress = min(1.0, iteration / max(1, total_iters))
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
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


def train(cfg: TrainConfig, corpus: Corpus | None = None, on_eval: OnEval | None = None,
          progress: bool = True, summary_extra: dict | None = None) -> TrainResult:
    """Train one model as configured. `on_eval(metrics, checkpoint, is_best)` is called after every
    evaluation; returning True stops the run (as ASHA or a budget would)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    resume = artifact.safe_load(cfg.init_from, "charsearch checkpoint") if cfg.init_from else None
    if resume is not None and resume["format"] != artifact.CHECKPOINT_FORMAT:
        raise UsageError(f"--init-from {cfg.init_from}: a model file, not a training checkpoint (it has no optimizer "
                         f"state); pass a checkpoint from the checkpoint folder")
    if resume is not None:  # the architecture is the checkpoint's, as char-rnn's init_from
        for key in ("model", "rnn_size", "num_layers", "embed_size", "dropout"):
            setattr(cfg, key, resume["model"]["config"][key])
    corpus = corpus or load_corpus(cfg.data, cfg.min_freq)
    train_ids, val_ids, _ = corpus.split(cfg.train_frac, cfg.val_frac)
    check_fits(len(train_ids), cfg.batch_size, cfg.seq_length, corpus.path)
    check_val(len(val_ids), cfg.val_frac, corpus.path)
    if resume is not None and tuple(resume["model"]["vocab"]) != corpus.vocab.chars:
        raise UsageError(f"--init-from {cfg.init_from}: the checkpoint's vocabulary ({len(resume['model']['vocab'])} "
                         f"characters) differs from {corpus.path}'s ({len(corpus.vocab)}); resume on the same corpus "
                         f"and min_freq")

    torch.manual_seed(cfg.seed)
    model = CharRNN(len(corpus.vocab), cfg.model, cfg.rnn_size, cfg.num_layers, cfg.embed_size, cfg.dropout).to(device)
    optimizer = make_optimizer(cfg, model, device)
    batches = Batches(train_ids, cfg.batch_size, cfg.seq_length, device)
    evaluate = Evaluator(val_ids, device)
    # Mixed precision is opt-in: PyTorch's autocast runs cuDNN RNNs in fp16 whatever dtype it is given
    # (bf16 would still be fp16 there), so it needs loss scaling, and one char-RNN trial is bound by
    # kernel latency rather than arithmetic. fp32 lets cuDNN use TF32 tensor cores where the GPU has them.
    use_fp16 = cfg.precision == "fp16"
    if use_fp16 and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; use auto or fp32 on CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
    step_model = torch.compile(model) if cfg.compile else model

    iters_per_epoch = len(batches)
    total_iters = max(1, math.ceil(cfg.max_epochs * iters_per_epoch))
    chars_per_iter = cfg.batch_size * cfg.seq_length
    iteration, best_val, initial_loss, evals_since_best = 0, math.inf, None, 0
    state: State = None
    history: list[dict] = []
    best_path: Path | None = None
    if resume is not None:
        model.load_state_dict(resume["model"]["state_dict"])
        optimizer.load_state_dict(resume["state"]["optimizer"])
        if use_fp16 and resume["state"].get("grad_scaler"):
            scaler.load_state_dict(resume["state"]["grad_scaler"])
        loop = resume["state"]
        iteration, best_val, initial_loss = loop["iteration"], loop["best_val_loss"], loop["initial_loss"]
        evals_since_best, history = loop["evals_since_best"], list(loop["history"])
        best_path = Path(loop["best_checkpoint"]) if loop.get("best_checkpoint") else None
        _set_rng_state(loop["rng"], device)
        if loop["hidden"] is not None and loop["batch_size"] == cfg.batch_size and iteration % iters_per_epoch:
            state = _state_from_cpu(loop["hidden"], device, cfg.model)

    ckpt_dir = Path(cfg.checkpoint_dir)
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise UsageError(f"--checkpoint-dir {ckpt_dir}: a file, not a folder; name a folder (created if missing)")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(ckpt_dir, os.W_OK):  # found now rather than after the first stretch of training
        raise UsageError(f"--checkpoint-dir {ckpt_dir}: not writable; name a folder you can write to")
    # a resumed run goes on pruning the folder it resumed in: its best and the checkpoint it started from
    written: list[Path] = []
    for p in (best_path, Path(cfg.init_from) if resume is not None else None):
        if p is not None and p.is_file() and p.parent.resolve() == ckpt_dir.resolve() and p not in written:
            written.append(p)
    summary_base = {
        "data_path": str(corpus.path), "data_sha256": corpus.sha256, "data_chars": int(len(corpus.ids)),
        "train_frac": cfg.train_frac, "val_frac": cfg.val_frac, "min_freq": cfg.min_freq,
        "host": socket.gethostname(), "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": str(torch.__version__), "python": platform.python_version(), "params": model.num_params(),
        **(summary_extra or {}),
    }

    bar = Progress(progress, total_iters, iteration)
    if progress:
        bar.line(f"{cfg.model} {cfg.num_layers}x{cfg.rnn_size}: {model.num_params():,} parameters; train "
                 f"{len(train_ids):,} chars ({iters_per_epoch} iterations/epoch), val {len(val_ids):,} chars; "
                 f"vocab {len(corpus.vocab)}; {device}{' fp16' if use_fp16 else ''}")

    start = time.monotonic()
    train_time, window_start = 0.0, time.monotonic()
    loss_sum = torch.zeros((), device=device)
    window_iters, window_loss = 0, math.nan
    stop_reason = "max_epochs"
    model.train()

    def checkpoint_and_report(out_of_time: bool) -> bool:
        nonlocal best_val, best_path, evals_since_best
        epoch = iteration / iters_per_epoch
        val = evaluate(model)
        is_best = val < best_val
        if is_best:
            best_val, evals_since_best = val, 0
        else:
            evals_since_best += 1
        # the run's own last evaluation (epochs, time budget or patience reached), as opposed to a stop
        # requested from outside (a scheduler); a sweep tells finished trials from stopped ones by it
        final = iteration >= total_iters or out_of_time or bool(cfg.patience and evals_since_best >= cfg.patience)
        metrics = {
            "iteration": iteration, "epoch": epoch, "chars_trained": iteration * chars_per_iter,
            "train_loss": window_loss, "val_loss": val, "val_bpc": val / math.log(2), "best_val_loss": best_val,
            "learning_rate": learning_rate(cfg, max(0, iteration - 1), iters_per_epoch, total_iters),
            "chars_per_sec": (iteration - it_at_start) * chars_per_iter / max(train_time, 1e-9),
            "elapsed_s": time.monotonic() - start, "final": final,
        }
        if cfg.use_ss:
            metrics["ss_prob"] = ss_probability(cfg, iteration)
        history.append(metrics)
        path = ckpt_dir / _checkpoint_name(cfg, epoch, val)
        if is_best:
            best_path = path
        payload = {
            "format": artifact.CHECKPOINT_FORMAT, "version": artifact.CHECKPOINT_VERSION,
            "model": artifact.model_part(model, corpus.vocab),
            "summary": {**summary_base, "val_loss": val, "val_bpc": val / math.log(2), "epoch": epoch,
                        "iteration": iteration, "chars_trained": iteration * chars_per_iter,
                        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "train_config": cfg.to_dict(),
            "state": {
                "optimizer": optimizer.state_dict(), "iteration": iteration, "best_val_loss": best_val,
                "initial_loss": initial_loss, "evals_since_best": evals_since_best, "history": history,
                "best_checkpoint": str(best_path) if best_path else None, "rng": _rng_state(device),
                "hidden": _state_to_cpu(state), "batch_size": cfg.batch_size,
                "grad_scaler": scaler.state_dict() if use_fp16 else None,
            },
        }
        artifact.save(path, payload)
        if path not in written:
            written.append(path)
        for old in written[:-1]:  # keep the best and the latest only
            if old != best_path and old != path:
                old.unlink(missing_ok=True)
                written.remove(old)
        bar.line(f"iter {iteration}/{total_iters} (epoch {epoch:.2f}): train {window_loss:.4f}, val {val:.4f} nats/char "
                 f"({val / math.log(2):.3f} bits){' *best*' if is_best else ''}, {metrics['chars_per_sec']:,.0f} chars/s")
        stop = on_eval(metrics, path, is_best) if on_eval else False
        return bool(stop)

    it_at_start = iteration
    try:
        while iteration < total_iters:
            i = iteration % iters_per_epoch
            if i == 0:
                state = None  # each epoch starts the streams afresh, as char-rnn
            x, y = batches.get(i)
            lr = learning_rate(cfg, iteration, iters_per_epoch, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
                if cfg.use_ss:
                    logits, state = forward_scheduled_sampling(step_model, x, state, ss_probability(cfg, iteration))
                else:
                    logits, state = step_model(x, state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # the scaler is a pass-through unless fp16
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            state = detach_state(state)
            loss_sum += loss.detach()
            iteration += 1
            window_iters += 1

            if initial_loss is None:
                initial_loss = loss.item()
                if not math.isfinite(initial_loss):
                    raise Diverged(f"training diverged: the first loss is {initial_loss}; check the data and "
                                   f"--learning-rate ({cfg.learning_rate})")
            at_eval = iteration % cfg.eval_every == 0 or iteration == total_iters
            out_of_time = cfg.max_time > 0 and time.monotonic() - start >= cfg.max_time
            if iteration % cfg.print_every == 0 or at_eval or out_of_time:
                window_loss = (loss_sum / window_iters).item()  # the only regular host sync
                loss_sum.zero_()
                window_iters = 0
                if not math.isfinite(window_loss) or window_loss > EXPLODE_FACTOR * initial_loss:
                    raise Diverged(f"training diverged at iteration {iteration}: loss {window_loss:.4g} (initial "
                                   f"{initial_loss:.4g}); lower --learning-rate ({cfg.learning_rate:g}) or "
                                   f"--grad-clip ({cfg.grad_clip:g})")
                now = time.monotonic()
                train_time += now - window_start
                window_start = now
                bar.update_to(iteration, loss=f"{window_loss:.3f}", val=f"{best_val:.3f}" if history else "-",
                              chars_s=f"{(iteration - it_at_start) * chars_per_iter / max(train_time, 1e-9):,.0f}")
            if at_eval or out_of_time:
                stop = checkpoint_and_report(out_of_time)
                window_start = time.monotonic()  # evaluation time is not training time
                if out_of_time:
                    stop_reason = "max_time"
                    break
                if cfg.patience and evals_since_best >= cfg.patience:
                    stop_reason = "patience"
                    break
                if stop:
                    stop_reason = "stopped"
                    break
    except torch.cuda.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(device)
        raise UsageError(f"CUDA out of memory on {device} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free) for "
                         f"{cfg.model} {cfg.num_layers}x{cfg.rnn_size} at batch_size {cfg.batch_size} x seq_length "
                         f"{cfg.seq_length}: lower them, or give the run more of the GPU") from None
    finally:
        bar.close()
    return TrainResult(best_val, best_path, written[-1] if written else None, iteration,
                       iteration / iters_per_epoch, iteration * chars_per_iter,
                       (iteration - it_at_start) * chars_per_iter / max(train_time, 1e-9), stop_reason,
                       model.num_params(), history)
