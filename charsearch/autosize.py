"""An automatically sized sweep: measure the machine, then choose a search space, ASHA's rungs and the
time split between searching and finishing, for one corpus and one wall-clock budget.

Measuring comes first because the best shape depends on the machine: on 2 CPU cores, one thread per
trial, a 2x96 LSTM trains ~60,000 chars/s and a 2x192 ~23,000, so in 10 minutes the first sees 36 M
characters and the second 14 M. The sizing rules, with N the characters of the train split, S the
search window and r a shape's measured rate (chars/s per trial while `parallel` trials share the
machine):

- a shape is kept if, as the winner, it can train TOKENS_PER_PARAM to MAX_TOKENS_PER_PARAM characters
  per parameter in the budget (20 * params <= r * budget <= 400 * params: enough to train it, not so
  few parameters that it plateaus long before the end), and has at most PARAMS_PER_CHAR * N
  parameters (char-rnn's advice: parameters in the order of the training characters);
- trials report every max(r_median * S / 40, 2 * val characters) characters: an evaluation reads the
  val split forward only, so it costs about a sixth of the training between two reports;
- ASHA's grace period is max(r_median * S / 20, one report): the median shape could run 20 trials to
  their first rung in the window, so many configurations are compared cheaply; its maximum is
  max(r_fastest * S / 3, 3 * grace): no trial holds a slot for more than a third of the window;
- the search gets SEARCH_FRACTION of what the budget leaves after calibration and start-up; the best
  trial then continues from its checkpoint on the whole machine for the rest (sweep.finish_best), its
  learning rate decaying linearly to 0;
- the first trial is a prior: the kept GRU (else LSTM) nearest PRIOR_TOKENS_PER_PARAM characters per
  parameter at a learning rate that suits it. The finish, not the rungs, decides the final loss, and
  rungs at equal characters trained are short: on its own the search favours shapes that learn
  fastest early, while a larger model trained to the end does better (in a single hand-run pilot of
  740 s on one thread with the rate decaying, a GRU 2x192 ended lower than a GRU 2x128).

Single hand-run pilots (2 cores, tiny-shakespeare, 10 minutes) did worse with 40% of the budget
searching and longer rungs (4 trials compared) and with each trial capped at S / 6 (short rungs sit at
the unigram plateau); bench_search.py measures the rules above (BENCHMARKS.md).

This module knows torch and the sweep config, not Ray: the calibration runs in plain processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field

from .sweepfile import SearchParam, SweepConfig
from .config import shape_label
from .errors import UsageError

SEARCH_FRACTION = 0.3  # of the budget; the rest trains the winner to the end
TOKENS_PER_PARAM = 20
MAX_TOKENS_PER_PARAM = 400  # a shape that could see more characters per parameter is too small for the budget
PARAMS_PER_CHAR = 2.0
FIXED_COST_S = 25.0  # Ray start and shutdown, the first trial's start, MLflow writes (measured: ~20 s)
CALIBRATION_FRACTION = 0.04
# candidate shapes, each family from small to large: a family stops at its first shape too slow to keep
FAMILIES = {("lstm", 1): (64, 128, 256, 512, 768), ("lstm", 2): (32, 64, 96, 128, 192, 256, 384, 512),
            ("lstm", 3): (128, 192, 256, 384), ("gru", 2): (128, 192, 256, 384, 512)}
PROBE_BATCH, PROBE_SEQ = 64, 64
LR_RANGE = (2e-3, 1e-2)  # Adam with clipping; slower rates are still far from their end when a CPU budget ends
# the first trial, so the search starts from a configuration that trains well in a short budget; the
# sampler's own draws follow, TPE modelling from the STARTUP_TRIALS-th finished trial on (a 10-minute
# CPU sweep runs about 6 trials: Optuna's default of 10 random ones would leave TPE nothing to do)
PRIOR = {"learning_rate": 3e-3, "dropout": 0.0, "batch_size": 64, "seq_length": 128}
PRIOR_TOKENS_PER_PARAM = 40
STARTUP_TRIALS = 3


@dataclass
class Calibration:
    device: str
    parallel: int  # trials at once
    threads: int  # CPU threads per trial
    rates: dict = field(default_factory=dict)  # "lstm 2x128" -> chars/s per trial, all `parallel` running
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _probe_family(args) -> list[tuple[str, int, float]]:
    """Runs in a calibration process: the shapes of each family, ascending, until one is too slow to
    keep (or is predicted to be, from the last one's rate per parameter), or the time is up."""
    families, vocab, threads, seconds_each, budget_s, max_params, seconds = args
    import torch
    import torch.nn.functional as F

    from .model import CharRNN
    torch.set_num_threads(threads)
    deadline = time.time() + seconds  # from here: the import above is not the probes' time
    out = []
    for (model, layers), sizes in families:
        last = None  # (params, rate) of the family's previous shape
        for size in sizes:
            torch.manual_seed(0)
            net = CharRNN(vocab, model, size, layers)
            params = net.num_params()
            # cost per character grows at least with the parameters: predict before paying for a probe
            if params > max_params or (last and time.time() > deadline) or (
                    last and last[1] * last[0] / params * budget_s < TOKENS_PER_PARAM * params):
                break
            opt = torch.optim.Adam(net.parameters(), 2e-3)
            x = torch.randint(0, vocab, (PROBE_BATCH, PROBE_SEQ))

            def step():
                logits, _ = net(x)
                loss = F.cross_entropy(logits.reshape(-1, vocab), x.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            step()  # the first step allocates
            t, n = time.perf_counter(), 0
            while n < 1 or time.perf_counter() - t < seconds_each:
                step()
                n += 1
            rate = n * PROBE_BATCH * PROBE_SEQ / (time.perf_counter() - t)
            out.append((shape_label(model, layers, size), params, rate))
            last = (params, rate)
            if rate * budget_s < TOKENS_PER_PARAM * params:  # the larger ones are slower still
                break
    return out


def calibrate(vocab: int, budget_s: float, cpus: int, max_params: float) -> Calibration:
    """Chars/s of every candidate shape with `cpus` one-thread trials running at once (the way the
    sweep packs them), the families spread over the processes so every core is busy while measuring."""
    start = time.monotonic()
    families = sorted(FAMILIES.items())
    parallel = max(1, cpus)
    seconds_each = max(0.1, min(1.0, CALIBRATION_FRACTION * budget_s * parallel / sum(map(len, FAMILIES.values()))))
    groups = [families[i::parallel] for i in range(parallel)]
    seconds = max(1.0, CALIBRATION_FRACTION * budget_s - 1)
    # fork: the children start without importing torch again (~3 s each); the parent has imported torch
    # but run nothing on it, so no thread pool is copied half-initialised
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(parallel) as pool:
        found = pool.map(_probe_family, [(g, vocab, 1, seconds_each, budget_s, max_params, seconds) for g in groups if g])
    cal = Calibration("cpu", parallel, 1, seconds=0.0)
    if not any(found):
        raise UsageError(f"the corpus is too small for any candidate model (at most {max_params:,.0f} parameters "
                         f"for its train split); use a larger corpus or a sweep file with search_space of your own")
    for name, params, rate in sorted(x for part in found for x in part):
        cal.rates[name], cal.params[name] = round(rate), params
    cal.seconds = round(time.monotonic() - start, 1)
    return cal


@dataclass
class Plan:
    """What the sizing chose and why: printed by --dry-run, logged with the sweep."""
    shapes: list
    search_s: float
    finish_s: float
    grace_chars: float
    max_chars: float
    report_chars: float
    first_report_s: float
    train_chars: int
    calibration: Calibration

    def describe(self) -> str:
        c = self.calibration
        lines = [f"# calibration: {len(c.rates)} shapes measured in {c.seconds:.0f} s on {c.device}, "
                 f"{c.parallel} trial(s) at once, {c.threads} thread(s) each"]
        for name in sorted(c.rates, key=lambda n: -c.rates[n]):
            kept = "kept" if name in self.shapes else "dropped"
            lines.append(f"#   {name:<12} {c.params[name]:>10,} params {c.rates[name]:>9,} chars/s  {kept}")
        lines.append(f"# search {self.search_s:.0f} s, then the best trial trains on for {self.finish_s:.0f} s; "
                     f"ASHA grace {self.grace_chars / self.train_chars:.3g} epochs, max "
                     f"{self.max_chars / self.train_chars:.3g} epochs; a new trial needs ~{self.first_report_s:.0f} s "
                     f"to report once")
        return "\n".join(lines)


def plan(cal: Calibration, budget_s: float, train_chars: int, val_chars: int) -> Plan:
    usable = budget_s - cal.seconds - FIXED_COST_S
    if usable < 10:
        raise UsageError(f"a {budget_s:g} s budget leaves {usable:.0f} s to train after calibration "
                         f"({cal.seconds:.0f} s) and start-up (~{FIXED_COST_S:.0f} s); give at least "
                         f"{math.ceil(cal.seconds + FIXED_COST_S + 30)} s")
    search_s = SEARCH_FRACTION * usable
    finish_s = usable - search_s
    kept = [n for n in cal.rates if TOKENS_PER_PARAM <= cal.rates[n] * usable / cal.params[n] <= MAX_TOKENS_PER_PARAM
            and cal.params[n] <= PARAMS_PER_CHAR * train_chars]
    if not kept:  # the shape nearest the band, whatever the budget: something must train
        kept = [min(cal.rates, key=lambda n: abs(math.log(cal.rates[n] * usable / cal.params[n] / 60)))]
    rates = sorted(cal.rates[n] for n in kept)
    median, fastest, slowest = rates[len(rates) // 2], rates[-1], rates[0]
    report = max(median * search_s / 40, 2 * val_chars)
    grace = max(median * search_s / 20, report)
    max_chars = max(fastest * search_s / 3, grace * 3)
    first_report = 3.0 + report / slowest
    return Plan(sorted(kept, key=lambda n: cal.params[n]), search_s, finish_s, grace, max_chars, report,
                first_report, train_chars, cal)


def apply(sweep: SweepConfig, p: Plan) -> SweepConfig:
    """Fill a sweep config with the planned search: the shapes, the optimiser ranges, ASHA, budgets."""
    n = p.train_chars
    big = max(p.calibration.params[s] for s in p.shapes) > n  # more parameters than characters: room to overfit
    space = {
        "shape": SearchParam("choice", list(p.shapes)),
        "learning_rate": SearchParam("log_float", [LR_RANGE[0], LR_RANGE[1]]),
        "dropout": SearchParam("float", [0.0, 0.3 if big else 0.1]),
        "batch_size": SearchParam("choice", [64, 128]),  # smaller batches waste a CPU's matrix units
        "seq_length": SearchParam("choice", [64, 128]),
    }
    first = {"shape": prior_shape(p), **PRIOR}
    for key in list(space):
        if key in sweep.train:  # a value the user fixed is not searched
            del space[key]
    sweep.space = space
    sweep.points_to_evaluate = [{k: v for k, v in first.items() if k in space}]
    if sweep.startup_trials is None:  # a value from the sweep file stands
        sweep.startup_trials = STARTUP_TRIALS
    sweep.train = {"optimizer": "adam", "lr_schedule": "constant", "grad_clip": 5.0, **sweep.train}
    sweep.scheduler, sweep.time_attr, sweep.reduction_factor = "asha", "chars_trained", 3.0
    sweep.grace_epochs = _round(p.grace_chars / n)
    sweep.trial_max_epochs = _round(p.max_chars / n)
    sweep.report_every_epochs = _round(p.report_chars / n)
    sweep.num_samples = max(sweep.num_samples, 1000)  # the budget and the deadline end the search, not a count
    sweep.max_concurrent = p.calibration.parallel
    sweep.cpu, sweep.gpu = float(p.calibration.threads), 0.0
    sweep.trial_max_time = 0.0
    sweep.finish_time = round(p.finish_s, 1)
    sweep.first_report_s = round(p.first_report_s, 1)
    return sweep


def prior_shape(p: Plan) -> str:
    """The first trial's shape: the kept shape that would see nearest PRIOR_TOKENS_PER_PARAM characters per
    parameter in the budget, a GRU where one is kept (at equal width it has 3/4 of an LSTM's parameters)."""
    usable = p.search_s + p.finish_s
    shapes = [s for s in p.shapes if s.startswith("gru")] or p.shapes
    rates, params = p.calibration.rates, p.calibration.params
    return min(shapes, key=lambda s: abs(math.log(rates[s] * usable / params[s] / PRIOR_TOKENS_PER_PARAM)))


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def auto_sweep(sweep: SweepConfig, budget_s: float, cpus: int | None = None) -> tuple[SweepConfig, Plan]:
    """Calibrate on this machine and size `sweep` (its corpus, split and fixed train options) to it."""
    from .data import load_corpus
    corpus = load_corpus(sweep.corpus, sweep.min_freq)
    train_ids, val_ids, _ = corpus.split(sweep.train_frac, sweep.val_frac)
    cpus = cpus or len(os.sched_getaffinity(0))
    cal = calibrate(len(corpus.vocab), budget_s, cpus, max_params=PARAMS_PER_CHAR * len(train_ids))
    p = plan(cal, budget_s, len(train_ids), len(val_ids))
    sweep.sweep_time = budget_s
    return apply(sweep, p), p


def default_sweep(corpus: str, budget_s: float) -> SweepConfig:
    """The sweep `charsearch sweep --data CORPUS --time T` runs (no sweep file)."""
    from .data import resolve_path
    path = resolve_path(corpus)
    name = f"auto-{(path.absolute().parent.name if path.name == 'input.txt' else path.stem)}"
    return SweepConfig(path="", name=name, corpus=str(path), sweep_time=budget_s)


def parse_duration(text: str) -> float:
    """'600', '600s', '10m', '1.5h' -> seconds."""
    t = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise UsageError(f"--time {text!r}: expected seconds or a number with s, m or h (e.g. 600, 10m, 1h)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--time {text!r}: must be a positive duration (e.g. 600, 10m, 1h)")
    return value

