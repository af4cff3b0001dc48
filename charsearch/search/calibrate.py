"""Measuring the machine for an automatically sized sweep: how fast each candidate shape trains when the
sweep's trials share the devices the way the sweep will pack them.

On CPU: every candidate shape's chars/s with one one-thread trial per core running at once (the
families spread over the processes, so every core is busy while measuring); where a sweep without a
search could train its prior as several trials at once, also the prior's shape as those trials at once
(`paired`) and as one trial alone on every thread (`whole`): whether a second thread speeds a trial up
depends on the shape and the vocabulary (a large vocabulary's output layer gains from it, a small GRU's
recurrent core does not).

On a GPU (in a process that sees one): each candidate's chars/s as a single trial and the GPU memory
one trial takes (peak reserved by PyTorch plus the CUDA context), then the packing curve of the
reference shape: the aggregate chars/s of K trials, each in its own process, sharing the GPU, for
K = 1, 2, 4, ... while the aggregate still grows and the trials fit in memory. A shape's rate with K
trials packed is its single-trial rate times the reference's packing efficiency, agg(K) / (K agg(1)).

A calibration is plain data (`to_dict`, `from_file`): one measured on a kind of GPU can be given to
later sweeps (`charsearch sweep --calibration FILE`), and every auto sweep logs its own to MLflow.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from charsearch.core.config import shape_label
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.model import CharRNN, core_params, cutoffs_for

PROBE_BATCH, PROBE_SEQ = 32, 64  # CPU: the step the auto sweep's prior trains with (autosize.STEPS)
GPU_PROBE_BATCH, GPU_PROBE_SEQ = 128, 128
PACKING = (1, 2, 4, 8, 16)  # trials per GPU tried, while the aggregate grows by GROWTH
GROWTH = 1.1
REFERENCE = "lstm 2x128"  # the packing curve's shape: char-rnn's default
MEMORY_SHARE = 0.9  # of a GPU's memory, what its packed trials may take together
CONTEXT_BYTES = 500 * 2 ** 20  # the CUDA context each trial's process holds beside what PyTorch reserves
TOKENS_PER_PARAM = 20  # by default, a shape is not probed once a smaller one of its family cannot train this long
WHOLE_SECONDS = 1.5  # each turn of measure_members: a decision rests on it, so longer than the shapes' probes
WHOLE_ROUNDS = 2  # and each side twice: two threads sometimes run little faster than one while other work runs
SETTLED = 0.1  # but once only where the first turn's share is this far from the share the decision turns on


MAX_FILE = 1_000_000
# bounds of what a calibration may say (integers: inclusive ranges): anything outside is damage, not a machine
BOUNDS = {"parallel": (1, 1024), "threads": (1, 1024), "gpus": (0, 1024), "per_gpu": (0, 64),
          "gpu_memory": (0, 10 ** 13)}
MAX_RATE = 1e10  # chars/s of one trial, or of K on one GPU
MAX_PARAMS, MAX_BYTES = 10 ** 12, 10 ** 13
MAX_SECONDS = 10 ** 6


def calibration_problem(d: dict) -> str | None:
    """What is wrong with a calibration's fields (a dict read back from JSON), or None. Bounded so that no
    value can make the plan, or the trials it starts, take more than a real machine would."""
    if not isinstance(d.get("device"), str) or len(d["device"]) > 200:
        return f"device must be a short string; got {excerpt(d.get('device'))}"
    for key, (lo, hi) in BOUNDS.items():
        v = d.get(key, 0 if key in ("gpus", "per_gpu", "gpu_memory") else None)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"{key} must be a whole number in [{lo}, {hi:,}]; got {excerpt(v)}"
    seconds = d.get("seconds", 0.0)
    if not _number(seconds) or not 0 <= seconds <= MAX_SECONDS:
        return f"seconds must be a number in [0, {MAX_SECONDS:,}]; got {excerpt(seconds)}"
    gpus = d.get("gpus", 0)
    cpu = d.get("cpu_per_trial", 1.0)
    low = 1 / 16 if gpus else 1  # a CPU trial takes at least one CPU; GPU trials may share one, 16 at most
    if not _number(cpu) or not low <= cpu <= 1024:
        return f"cpu_per_trial must be a number in [{low:g}, 1024]; got {excerpt(cpu)}"
    tables = {"rates": MAX_RATE, "params": MAX_PARAMS, "memory": MAX_BYTES, "single": MAX_RATE, "packing": MAX_RATE,
              "whole": MAX_RATE, "paired": MAX_RATE}
    for key, hi in tables.items():
        table = d.get(key, {})
        if not isinstance(table, dict) or len(table) > 1000:
            return f"{key} must be a mapping of at most 1,000 entries; got {excerpt(table)}"
        bad = [v for v in table.values() if not _number(v) or not 0 < v <= hi]
        if bad:
            return f"every value of {key} must be a positive number up to {hi:g}; got {excerpt(bad[0])}"
    if not d["rates"] or set(d["rates"]) != set(d["params"]):
        return "needs a rate and a parameter count for each shape"
    ks = [k for k in d.get("packing", {}) if not (isinstance(k, str) and k.isdigit() and 1 <= int(k) <= 64)]
    if ks:
        return f"packing's keys must be trial counts 1 to 64; got {excerpt(ks[0])}"
    if gpus and (d.get("per_gpu", 0) < 1 or "1" not in d.get("packing", {}) or not d.get("gpu_memory")
                 or set(d.get("single", {})) != set(d["rates"])):
        return "a GPU calibration needs per_gpu >= 1, the packing curve from K=1, gpu_memory and single rates"
    from charsearch.search.sweepfile import parse_shape
    try:
        for name in d["rates"]:
            parse_shape(name)
    except UsageError as e:
        return str(e)
    return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Calibration:
    device: str  # "cpu", or the GPU's name
    parallel: int  # trials at once, on all devices
    threads: int  # CPU threads per trial
    rates: dict = field(default_factory=dict)  # "lstm 2x128" -> chars/s per trial, all `parallel` running
    params: dict = field(default_factory=dict)  # shape -> its recurrent core's parameters (model.core_params)
    seconds: float = 0.0
    gpus: int = 0  # GPUs the trials share (0: CPU trials)
    per_gpu: int = 0  # trials packed on each GPU
    gpu_memory: int = 0  # bytes of one GPU
    memory: dict = field(default_factory=dict)  # shape -> bytes one trial takes on the GPU
    packing: dict = field(default_factory=dict)  # K -> aggregate chars/s of REFERENCE with K trials on one GPU
    single: dict = field(default_factory=dict)  # shape -> chars/s of one trial alone on a GPU
    cpu_per_trial: float = 1.0  # CPUs each trial asks Ray for (a share of one where GPU trials outnumber them)
    whole: dict = field(default_factory=dict)  # CPU: shape -> chars/s of one trial alone on every thread
    paired: dict = field(default_factory=dict)  # CPU: shape -> chars/s of the slower of its members at once

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path) -> "Calibration":
        """A calibration saved as JSON (to_dict), checked field by field before anything is sized from it."""
        where = f"--calibration {path}"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE + 1)
        except OSError as e:
            raise UsageError(f"{where}: {(e.strerror or str(e)).lower()}") from None
        if len(raw) > MAX_FILE:
            raise UsageError(f"{where}: over {MAX_FILE:,} bytes; a calibration file is a few kilobytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise UsageError(f"{where}: not a calibration file (not JSON: {str(e)[:80] or type(e).__name__})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"device", "parallel", "threads", "rates", "params"} <= set(data) \
                or set(data) - names:
            raise UsageError(f"{where}: expected a JSON object with the fields {', '.join(sorted(names))}")
        problem = calibration_problem(data)
        if problem:
            raise UsageError(f"{where}: {problem}; write one with an auto sweep (its calibration.json artifact) "
                             f"or leave --calibration out to measure this machine")
        data["packing"] = {int(k): v for k, v in data.get("packing", {}).items()}
        return cls(**data)

    def packed_rate(self, shape: str, k: int) -> float:
        """A shape's chars/s per trial with k trials on one GPU."""
        return self.single[shape] * self.packing[k] / (k * self.packing[1])


def candidate(vocab: int, model: str, layers: int, size: int, fixed: dict | None = None) -> CharRNN:
    """A shape as the sweep's trials will build it: its input and output layers follow the options the
    sweep fixed (`fixed`: embed_size, softmax; by default the vocabulary's own), which can change its cost
    several times over where the vocabulary is large."""
    fixed = fixed or {}
    return CharRNN(vocab, model, size, layers, fixed.get("embed_size", 0),
                   cutoffs=cutoffs_for(vocab, fixed.get("softmax", "auto")))


# ---------------------------------------------------------------------------------------------
# CPU


def _probe_family(args) -> list[tuple[str, int, float]]:
    """Runs in a calibration process: the shapes of each family, ascending, until one is too slow to
    keep (or is predicted to be, from the last one's rate per parameter), or the time is up."""
    families, vocab, threads, seconds_each, budget_s, max_params, seconds, least, fixed = args
    import torch
    torch.set_num_threads(threads)
    deadline = time.time() + seconds  # from here: the import above is not the probes' time
    out = []
    for (model, layers), sizes in families:
        last = None  # (all parameters, rate) of the family's previous shape
        for size in sizes:
            torch.manual_seed(0)
            net = candidate(vocab, model, layers, size, fixed)
            total, core = net.num_params(), core_params(net.config)
            # the cost of a character grows at least with all the parameters (the vocabulary's included): the
            # rate is predicted from the last shape's before paying for a probe; what it must train is the core
            if core > max_params or (last and time.time() > deadline) or (
                    last and last[1] * last[0] / total * budget_s < least * core):
                break
            rate, _ = step_rate(net, vocab, PROBE_BATCH, PROBE_SEQ, seconds_each, "cpu")
            out.append((shape_label(model, layers, size), core, rate))
            last = (total, rate)
            if rate * budget_s < least * core:  # the larger ones are slower still
                break
    return out


def step_rate(net, vocab: int, batch: int, seq: int, seconds: float, device: str,
              least_steps: int = 3) -> tuple[float, int]:
    """(chars/s, peak bytes reserved) of Adam steps on random ids for about `seconds` (at least `least_steps`),
    the first step (which allocates) not counted."""
    import torch
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x = torch.randint(0, vocab, (batch, seq), device=device)

    def step():
        loss, _ = net(x, None, x)  # the training step's own path (an adaptive softmax's too)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t, n = time.perf_counter(), 0
    while n < least_steps or time.perf_counter() - t < seconds:
        step()
        n += 1
        if n % 10 == 0:
            sync()
    sync()
    peak = torch.cuda.max_memory_reserved() if device == "cuda" else 0
    return n * batch * seq / (time.perf_counter() - t), peak


def calibrate_cpu(vocab: int, budget_s: float, cpus: int, max_params: float, families: dict,
                  fraction: float, least: float = TOKENS_PER_PARAM, fixed: dict | None = None) -> Calibration:
    """Each family's shapes, smallest first, until one could not train `least` characters per parameter
    in the budget (as many one-thread trials at once as there are `cpus`); `fixed` as candidate's."""
    start = time.monotonic()
    families = sorted(families.items())
    parallel = max(1, cpus)
    seconds_each = max(0.1, min(1.0, fraction * budget_s * parallel / sum(len(s) for _, s in families)))
    groups = [families[i::parallel] for i in range(parallel)]
    seconds = max(1.0, fraction * budget_s - 1)
    # fork: the children start without importing torch again (~3 s each); the parent has imported torch
    # but run nothing on it, so no thread pool is copied half-initialised
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(parallel) as pool:
        found = pool.map(_probe_family, [(g, vocab, 1, seconds_each, budget_s, max_params, seconds, least, fixed)
                                         for g in groups if g])
    cal = Calibration("cpu", parallel, 1)
    for name, params, rate in sorted(x for part in found for x in part):
        cal.rates[name], cal.params[name] = round(rate), params
    cal.seconds = round(time.monotonic() - start, 1)
    return cal


def _probe_alone(args) -> float:
    """One shape's chars/s on `threads` threads, from `start_at` (a wall-clock time, so that processes probing side
    by side start together). Runs in a calibration process, or in this one (its thread count put back after)."""
    vocab, model, layers, size, threads, seconds, fixed, start_at = args
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = candidate(vocab, model, layers, size, fixed)
        time.sleep(max(0.0, start_at - time.time()))
        return step_rate(net, vocab, PROBE_BATCH, PROBE_SEQ, seconds, "cpu")[0]
    finally:
        torch.set_num_threads(before)


def measure_members(cal: Calibration, shape: str, members: int, vocab: int, fixed: dict | None = None,
                    share: float | None = None, seconds: float = WHOLE_SECONDS, rounds: int = WHOLE_ROUNDS) -> int:
    """`shape` as `members` trials at once, the threads split between them, and as one trial alone on all of
    them, in turns: each member's chars/s into cal.paired, the one's into cal.whole (each the best of its
    `rounds`: a turn that shared the machine with other work says less about it), the time it took into
    cal.seconds. The same shape, steps and duration on both sides, so that the two compare. With `share` (the
    member's share of the one's rate a decision turns on), the turns stop once a member's share is SETTLED
    away from it: another turn would not change the decision, and its seconds are the sweep's. Returns the turns
    taken."""
    from charsearch.search.sweepfile import parse_shape
    start = time.monotonic()
    s = parse_shape(shape)
    threads = cal.parallel * cal.threads
    each = max(1, threads // members)
    args = (vocab, s["model"], s["num_layers"], s["rnn_size"])
    # the one alone runs in this process. Members of one thread each are forked: a child never enters a parallel
    # region, so it cannot hang on a thread pool copied from a parent whose torch ran on several threads (this
    # one's, a Python API caller's), and it starts without importing torch again (~3 s); members of several
    # threads are spawned, their imports waited for so that the first turn's members start together
    ctx = multiprocessing.get_context("fork" if each == 1 and "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    paired, alone, turns = 0.0, 0.0, 0
    with ctx.Pool(members) as pool:
        if ctx.get_start_method() == "spawn":
            pool.map(_ready, range(members), chunksize=1)
        while turns < rounds:
            turns += 1
            at = time.time() + 0.5  # every member's model built: they step together
            paired = max(paired, min(pool.map(_probe_alone, [(*args, each, seconds, fixed, at)] * members,
                                              chunksize=1)))
            alone = max(alone, _probe_alone((*args, threads, seconds, fixed, 0.0)))
            if share is not None and alone > 0 and abs(paired / alone - share) >= SETTLED:
                break
    cal.paired[shape], cal.whole[shape] = round(paired), round(alone)
    cal.seconds = round(cal.seconds + time.monotonic() - start, 1)
    return turns


def _ready(_) -> None:
    """Runs in a spawned calibration process: torch imported, and long enough that each process takes one call."""
    import torch  # noqa: F401
    time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# GPU (run in a process that sees the GPU: locally, or in a Ray task that asked for one)


def _gpu_shape(args) -> tuple[float, int]:
    """In a fresh process on the GPU: (chars/s, bytes one trial of a shape takes)."""
    vocab, model, layers, size, seconds, start_at, fixed = args
    import torch
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = candidate(vocab, model, layers, size, fixed)
    if start_at:  # packed trials start measuring together
        time.sleep(max(0.0, start_at - time.time()))
    rate, peak = step_rate(net, vocab, GPU_PROBE_BATCH, GPU_PROBE_SEQ, seconds, "cuda")
    return rate, peak + CONTEXT_BYTES


def calibrate_gpu(vocab: int, budget_s: float, gpus: int, cpus: int, max_params: float, families: dict,
                  fraction: float, fixed: dict | None = None) -> Calibration:
    """On the GPU this process sees; `gpus` is how many the sweep's trials will share; `fixed` as
    candidate's."""
    import torch
    if not torch.cuda.is_available():
        raise UsageError("Ray declares GPUs, but the process it gave one to sees no CUDA device; run where the "
                         "GPUs are, or give a calibration measured on such a GPU (--calibration FILE)")
    start = time.monotonic()
    seconds = max(0.3, min(2.0, fraction * budget_s / (sum(len(s) for s in families.values()) + 2 * len(PACKING))))
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    cal = Calibration(torch.cuda.get_device_name(), 1, 1, gpus=gpus,
                      gpu_memory=torch.cuda.get_device_properties(0).total_memory)
    with ctx.Pool(1) as pool:  # one process for the shapes: each measured alone on the GPU
        for (model, layers), sizes in sorted(families.items()):
            for size in sizes:
                params = core_params(candidate(vocab, model, layers, size, fixed).config)
                if params > max_params:
                    break
                rate, mem = pool.apply(_gpu_shape, ((vocab, model, layers, size, seconds, 0.0, fixed),))
                name = shape_label(model, layers, size)
                cal.single[name], cal.memory[name], cal.params[name] = round(rate), mem, params
    cal.packing = measure_packing(ctx, vocab, seconds, cal.gpu_memory, cal.memory.get(REFERENCE), fixed)
    cal.per_gpu = max(cal.packing)
    cal.parallel = cal.per_gpu * gpus
    cal.threads = max(1, cpus // cal.parallel)
    cal.cpu_per_trial = round(min(1.0, cpus / cal.parallel), 3)
    cal.rates = {s: round(cal.packed_rate(s, cal.per_gpu)) for s in cal.single}
    cal.seconds = round(time.monotonic() - start, 1)
    return cal


def measure_packing(ctx, vocab: int, seconds: float, gpu_memory: int, reference_memory: int | None,
                    fixed: dict | None = None) -> dict:
    """Aggregate chars/s of REFERENCE with K trials on the GPU, for K in PACKING while it grows by GROWTH
    and K trials fit in MEMORY_SHARE of the GPU."""
    model, layers, size = REFERENCE.split()[0], *map(int, REFERENCE.split()[1].split("x"))
    packing: dict = {}
    for k in PACKING:
        if reference_memory and k * reference_memory > MEMORY_SHARE * gpu_memory:
            break
        with ctx.Pool(k) as pool:
            start_at = time.time() + 5.0 + 0.5 * k  # every process up and its model built
            found = pool.map(_gpu_shape, [(vocab, model, layers, size, seconds, start_at, fixed)] * k)
        packing[k] = round(sum(rate for rate, _ in found))
        if k > 1 and packing[k] < GROWTH * packing[k // 2]:
            del packing[k]  # no gain: the previous K stands
            break
    return packing
