"""Devices: which one a run uses, the memory it has, and the memory a training run needs (by arithmetic,
before anything is built).

A run is admitted against the memory available now (free RAM, or free GPU memory), with headroom for
what the estimate leaves out (the allocator's slack, the corpus, Python itself), not against the
machine's total: a run admitted against the total ends in an allocator failure once it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from charsearch.core.config import DEVICE_NAME, label_of
from charsearch.core.errors import UsageError
from charsearch.core.model import GATES, input_size_of, param_count
from charsearch.core.units import human_bytes

HEADROOM = 0.8  # of the memory available now, what one run may be admitted to use


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


def total_bytes(device: torch.device) -> int:
    """All the memory of `device`: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_bytes(device: torch.device) -> int:
    """Memory `device` can give a new allocation now: free GPU memory, or the kernel's MemAvailable
    (free plus reclaimable caches), within this process's cgroup limit where one is set."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = _meminfo_available()
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """cgroup v2: the limit less what the group uses; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def admissible_bytes(device: torch.device) -> int:
    return int(HEADROOM * available_bytes(device))


EVAL_BYTES = 256 * 2 ** 20  # scores held at once while a split is scored (train.Evaluator), whatever the vocabulary


def training_size(cfg, vocab_size: int) -> tuple[int, int]:
    """(trained parameters, bytes a training run of `cfg` needs).

    In float32 (4 bytes a number), with P trained parameters, V the vocabulary, I the input width,
    L layers of H units with G gate blocks (LSTM 4, GRU 3, RNN 1), B streams of T characters:
        weights, gradients and Adam's two moments       16 P
        the fixed one-hot input table (when one-hot)     4 V I
        the larger of
          activations kept for backward                  4 B T (L (G + 2) H + I + 2 V)
          an evaluation's scores                         at most EVAL_BYTES
    (per character of a batch: each layer's gates, h and c; the input vector; the logits and their
    gradient). RMSprop keeps one moment, so this is an upper bound for it.
    """
    arch = {"vocab_size": vocab_size, "model": cfg.model, "rnn_size": cfg.rnn_size, "num_layers": cfg.num_layers,
            "embed_size": cfg.embed_size}
    params = param_count(arch)
    width, fixed = input_size_of(arch)
    per_char = cfg.num_layers * (GATES[cfg.model] + 2) * cfg.rnn_size + width + 2 * vocab_size
    state = 16 * params + (4 * vocab_size * width if fixed else 0)
    return params, state + max(4 * cfg.batch_size * cfg.seq_length * per_char, EVAL_BYTES)


def check_training_size(cfg, vocab_size: int, limit: int, where: str = "", limit_words: str = "available") -> None:
    """Refuse a run whose training memory (see training_size) exceeds `limit` bytes, naming what it needs."""
    params, need = training_size(cfg, vocab_size)
    if need > limit:
        raise UsageError(f"{where}{label_of(cfg)}"
                         f"{f', embedding {cfg.embed_size}' if cfg.embed_size else ''}, vocabulary {vocab_size:,}, "
                         f"batch {cfg.batch_size} x seq {cfg.seq_length}: {params:,} parameters, about "
                         f"{human_bytes(need)} to train, more than the {human_bytes(limit)} {limit_words}; make "
                         f"rnn_size, num_layers, batch_size or seq_length smaller")
