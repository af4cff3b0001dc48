"""An automatically sized sweep: measure the machine, then choose a search space, ASHA's rungs and the
time split between searching and finishing, for one corpus and one wall-clock budget.

Measuring comes first because the best shape depends on the machine: on 2 CPU cores, one thread per
trial, a 2x96 LSTM trains ~60,000 chars/s and a 2x192 ~23,000, so in 10 minutes the first sees 36 M
characters and the second 14 M. The sizing rules, with N the characters of the train split, S the
search window, r a shape's measured rate (chars/s per trial while `parallel` trials share the machine)
and params its recurrent core's parameters (model.core_params: not the input embedding nor the output
layer, whose size follows the vocabulary; their cost shows in r, where it is paid):

- a shape is kept if, as the winner, it can train TOKENS_PER_PARAM to MAX_TOKENS_PER_PARAM characters
  per parameter in the budget (20 * params <= r * budget <= 400 * params: enough to train it, not so
  few parameters that it plateaus long before the end; for English prose, and for a corpus whose
  characters carry more, in proportion to REFERENCE_NATS / its information per character: a parameter
  absorbs information, not characters), and has at most PARAMS_PER_CHAR * N parameters (char-rnn's advice: parameters in the
  order of the training characters);
- trials report every max(r_median * S / 40, 2 * V) characters, V the val characters an evaluation
  scores: it reads them forward only, about three times as fast as training, so it costs about a sixth
  of the training between two reports. V is the whole val split unless that exceeds r_median * S / 20
  (a large corpus: reports would be too sparse to compare trials, or come after the window); then
  every trial and the finish score the same evenly spread r_median * S / 20 characters of it
  (train's eval_chars; at least MIN_EVAL_SAMPLE), and `charsearch eval` scores the whole split;
- ASHA's grace period is r_median * S / 20 to the nearest whole number of reports (at least one): the
  median shape could run 20 trials to their first rung in the window, so many configurations are compared
  cheaply, and each rung falls on a report (ASHA reads a rung at the first report at or past it); its maximum is
  MAX_RUNGS grace periods: rungs already rank configurations as their ends do, so a longer one only
  holds a slot that later trials could use (see MAX_RUNGS);
- the search gets SEARCH_FRACTION of what the budget leaves after calibration and start-up; the best
  trial then continues from its checkpoint on the whole machine for the rest (sweep.finish_best), its
  learning rate decaying linearly to 0;
- the first trial is a prior: the kept GRU (else LSTM) nearest PRIOR_TOKENS_PER_PARAM characters per
  parameter at a learning rate that suits it, with dropout where it would memorise the train split
  (prior_dropout: by its passes over the split times all its parameters per train character), stepping
  on 2,048 characters on a CPU (STEPS: a short run learns per optimizer step, and on a CPU smaller steps
  cost little throughput), on 8,192 where it would read the split fewer than FRESH_PASSES times in
  MIN_FRESH_STEPS or more such steps, every trial then taking that step; every trial warms up over
  WARMUP_ITERS iterations (its rate rising linearly from 0). The finish, not the rungs, decides the final
  loss, and rungs at equal characters trained are short: on its own the search favours shapes that learn
  fastest early, while a larger model trained to the end does better (in a single hand-run pilot of 740 s
  on one thread with the rate decaying, a GRU 2x192 ended lower than a GRU 2x128).

- no search where it cannot pay: the plan estimates how many configurations besides the prior the
  search can bring to ASHA's first rung in its window (`comparisons`: the slots' time left beside the
  prior, which ranks first at every rung it reaches first and so holds its slot up to the longest rung,
  over what one such trial costs: its start, its grace period and its expected promotions). Below
  MIN_COMPARED there is no search, nor, on a CPU, where the prior's memorising pressure is above
  MAX_SEARCH_PRESSURE (the rungs cannot see memorising, which then decides the end): the prior trains
  for the whole budget on the sweep's schedule (constant, then decaying to 0 over the last
  1 - SEARCH_FRACTION), as the search's winner would, once on the whole machine or, on a CPU with two slots,
  as MEMBERS trials at once, seeds apart (members_of), and where it would memorise, at two dropouts
  (member_dropout): the one choice left to the end; `--search always` (or `never`) overrides.

Single hand-run pilots (2 cores, tiny-shakespeare, 10 minutes) did worse with 40% of the budget
searching and longer rungs (4 trials compared) and with each trial capped at S / 6 (short rungs sit at
the unigram plateau); bench_search.py measures the rules above (BENCHMARKS.md).

This module knows the sweep config, not Ray; the measuring is calibrate.py's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from charsearch.core.config import DEFAULT_SEED
from charsearch.core.errors import UsageError
from charsearch.core.model import cutoffs_for, param_count
from charsearch.core.units import human_bytes
from charsearch.search.calibrate import (MEMORY_SHARE, REFERENCE, Calibration, calibrate_cpu, calibrate_gpu,
                                         measure_members)
from charsearch.search.sweepfile import SearchParam, SweepConfig, parse_shape

SEARCH_FRACTION = 0.3  # of the budget; the rest trains the winner to the end
TOKENS_PER_PARAM = 20
MAX_TOKENS_PER_PARAM = 400  # a shape that could see more characters per parameter is too small for the budget
PARAMS_PER_CHAR = 2.0
FIXED_COST_S = 25.0  # Ray start and shutdown, the first trial's start, MLflow writes (measured: ~20 s)
# of the budget less the calibration, what the prior of a sweep without a search does not train: the sweep's start
# before its trial trains (imports, Ray and the tracking store, Tune's first actor: ~9 s on 2 cores) and
# trial.END_MARGIN_S (6 s) before the budget's end
NO_SEARCH_COST_S = 15.0
CALIBRATION_FRACTION = 0.04
# candidate shapes, each family from small to large: a family stops at its first shape too slow to keep
FAMILIES = {("lstm", 1): (64, 128, 256, 512, 768), ("lstm", 2): (32, 64, 96, 128, 192, 256, 384, 512),
            ("lstm", 3): (128, 192, 256, 384), ("gru", 2): (128, 192, 256, 384, 512)}
# on a GPU, wider and deeper: its throughput per trial is bound by kernel latency, not arithmetic
GPU_FAMILIES = {("lstm", 2): (128, 256, 512, 768, 1024), ("lstm", 3): (256, 512, 768, 1024),
                ("gru", 2): (256, 512, 768, 1024)}
# The learning rate of every trial (the larger step's FRESH_STEP has its own), not searched: ASHA's rungs, a few
# hundred steps into a run at a constant rate, rank rates by how fast they start, not where they end. One shape at
# six rates 0.002-0.01 (BENCHMARKS.md, rungs-rate-cpu, rungs-cjk-rate-cpu; one seed each) ranked at Spearman
# 0.71/0.71 (tiny-shakespeare) and 0.49/0.20 (CJK news) at the two rungs, 0.31-0.83 after a 5% or 25% cooldown;
# the ends of 0.003-0.0068 lay within 0.019 and 0.047, the lowest at 0.0046 on one and 0.0068 on the other,
# and 0.0078 failed on both. Searched on 25 MB of Python at 30 minutes, the first rung (224 steps, 100 of
# them warmup) chose a gru 2x192 at 0.0084, whose export ended 0.27 above the prior alone (search-aligned-cpu).
PRIOR_LR = 3e-3
# the first trial, so the search starts from a configuration that trains well in a short budget; the
# sampler's own draws follow, TPE modelling from the STARTUP_TRIALS-th finished trial on (a 10-minute
# CPU sweep runs about 6 trials: Optuna's default of 10 random ones would leave TPE nothing to do)
# Characters per optimizer step. A run of minutes is far below its critical batch size: its loss falls
# per step, almost whatever the characters in it (hand-run pilots at 150 s on 2 cores, one run each,
# GRU 2x128, lr 3e-3 decaying: tiny-shakespeare 1.547 at 32x64 against 1.720 at 64x128, a
# 4,046-character CJK corpus 4.805 against 5.541), while on a CPU a step of 2,048 characters costs only
# 11-15% more per character than one of 8,192. A GPU's throughput falls faster with smaller steps: it
# keeps larger ones.
STEPS = {"cpu": {"batch_size": ([16, 32, 64], 32), "seq_length": ([64, 128], 64)},
         "gpu": {"batch_size": ([64, 128, 256], 64), "seq_length": ([64, 128], 128)}}
# Except in a long run where the prior reads its train split fewer than FRESH_PASSES times: there every character
# is nearly fresh, nothing memorises, and the larger step (and a slightly higher rate), warming up over
# WARMUP_ITERS, ended lower, the prior trained alone on the sweep's schedule on 2 cores (BENCHMARKS.md,
# prior-step-cpu, warmup-cpu, search-always-cpu): on 25 MB of Python source at 1800 s (no warmup) -0.058 over 2
# seeds (1.6459 +- 0.009 against 1.7036 +- 0.001; ~4,300 such steps planned); at 600 s (~0.6 passes, 1,580-1,680
# steps planned) 1.6604 +- 0.016 against 1.7211 +- 0.007 (-0.061); on a 10 MB slice at 600 s (~1.7 passes,
# 1,710-2,030 steps planned) 1.1826 +- 0.001 against 1.1821 +- 0.004, level. It did not gain where the split is
# read many times: +0.040 on tiny-shakespeare and +0.031 on 1.1 MB of Python source at 15-20 passes (no warmup); a
# 5 MB slice at 4.3 passes ended level. Up to about 4 passes a repeated character is worth nearly a fresh one
# (Muennighoff et al. 2023).
# MIN_FRESH_STEPS: the fewest such steps measured (in short runs, more, smaller steps learn more per character:
# hand-run pilots at 150 s above).
# And every trial of the search takes the larger step (its learning rate searched): ASHA ranks trials a few hundred
# steps in, where a smaller step learns more per character, and it stopped the rule's prior at its first rung
# (167 steps) in the one sweep made to search with the step in its space, trials in 32 x 64 steps standing lower
# there (BENCHMARKS.md, search-fresh-cpu). At one step the rungs compare shapes, rates and dropouts; made to
# search so (25 MB at 1800 s, 2 seeds, search-step-cpu), the export ended level with the prior alone (1.5923 +-
# 0.029 against 1.5898 +- 0.005): in one seed the first rung ranked by rate and stopped the prior behind faster
# starters. MIN_COMPARED stands.
FRESH_PASSES = 4.0
FRESH_STEP = {"batch_size": 64, "seq_length": 128, "learning_rate": 3.5e-3}
MIN_FRESH_STEPS = 1_500
# Every trial warms up (train's warmup_iters), at either step: at the full rate from the first step a fresh model
# can fall into a slow start it never makes up, with the same data order, by its initial weights alone. At the
# larger step one seed of two threw a gru 2x192 into one on 25 MB of Python at 600 s (a gradient norm of 11 and the
# loss rising around iteration 30) and ended 0.12-0.15 above the other; warming up over 100 iterations, the two
# ended 0.022 apart: 1.6604 +- 0.016 against 1.7315 +- 0.106 (warmup-cpu). At the smaller step, one seed of three of
# a gru 2x128 at 0.003 on a 10 MB slice at 300 s sat near the unigram loss for hundreds of iterations (2.58 at
# iteration 500 against 1.76) and ended at 1.8279 against 1.3305 and 1.4133; warming up, the three ended at
# 1.3528 +- 0.022 against 1.5239 +- 0.267. Where no seed stalled (tiny-shakespeare at 300 s, 2 seeds) it ended
# lower too: 1.5194 +- 0.006 against 1.5268 +- 0.007 (warmup-cpu).
WARMUP_ITERS = 100
PRIOR_TOKENS_PER_PARAM = 40
# The characters-per-parameter constants are for English prose. What a parameter absorbs is information,
# not characters: a CJK character carries about three times an English one's (as a subword token does),
# so as many parameters train on a third of the characters. Where a corpus's characters carry more than
# REFERENCE_NATS (data.compressed_nats: lzma's compressed size of 200,000 characters spread over its train
# split; a trained char-rnn ends 10-25% below it), the constants are scaled by REFERENCE_NATS / its figure:
# 2.03 nats/char on tiny-shakespeare (x0.99: prose sits at the reference), 5.79 on a 4,046-character CJK
# corpus. Below it they stand: they were measured on prose and on Python source (1.21), and scaled up there
# (one run at 300 s) the band admitted shapes so small and fast that ASHA's longest rung (then a third of the
# window at the fastest rate) let 2 trials run, and the sweep ended at 1.314 against 1.247 unscaled.
REFERENCE_NATS = 2.0
STARTUP_TRIALS = 3
# Memorising: a run that passes over the train split many times with many parameters per character of it
# learns the split rather than the text. Up to about 4 passes a repeated character is worth nearly a fresh
# one (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"); with parameters a fraction of
# the characters, as char-rnn advises, that is a pressure of about 1. The pressure counts all parameters:
# with thousands of distinct characters, the rows of the rare ones are fitted to their few contexts.
FREE_PRESSURE = 3.0  # passes x (all parameters / train characters) that trains without dropout
# the prior's dropout above it (prior alone, 300 s, 2 cores, one run each: 0.2 did better than 0 and 0.1 on
# the suite's CJK corpus, pressure 7.5, and better than 0 and 0.3 on 180 kB of licences whose val split was a
# copy of train text, pressure 85; 0.1 did worse than 0 on tiny-shakespeare, pressure 2). The pressure does not say how much more helps: at 600 s on the
# sweep's schedule, 0.4 instead of 0.2 ended 0.084 lower on the CJK corpus (pressure 27, which memorised at 0.2)
# and 0.088 higher on the licences, each text once (pressure 235, still improving at 0.2: a third of their val
# split's text is also in train), one seed each (bench_dropout). So the cap stays, and where the prior would
# memorise, its members try it and twice it (member_dropout)
MAX_DROPOUT = 0.2
MIN_EVAL_SAMPLE = 20_000  # val characters: a sample smaller than this ranks close trials by its noise
# Configurations besides the prior that the search must bring to its first rung to be worth its cost. The
# search costs its winner about a quarter to a third of the characters it would train alone (its rungs on one
# thread, the rest of the window spent on other trials); on tiny-shakespeare at 600 s a quarter is ~0.006
# nats/char, what a constant-then-decay schedule earns (BENCHMARKS.md, suite). One draw of the auto space
# in seven ended below the prior there (bench_rungs: by 0.013), and the rungs rank configurations as their
# ends do (Spearman 0.95-0.98): ten draws hold one such with probability 1 - (6/7)^10 = 0.79. Made to search
# below it (25 MB of Python at 1800 s on 2 cores, estimate ~6, `--search always`), 8 configurations besides the
# prior reached the first rung and the prior's won; in a second seed 4 did and a smaller, faster shape won, 0.125
# below the prior alone (BENCHMARKS.md, search-always-cpu): two seeds do not move the bound yet
MIN_COMPARED = 10
# The memorising pressure of the prior (see FREE_PRESSURE) above which the search cannot pay however much it
# compares: its rungs see the first few percent of a run, and where the budget reads the split many times over
# with many parameters per character, what decides the end comes long after them: memorising (a CJK corpus at
# 600 s, pressure 27: the prior's best val at pass 9.9 of 17) or the gains of many more passes over a repetitive
# corpus (180 kB of licences whose val split repeats train text, pressure 254: still improving at pass 221;
# bench_dropout). On 2 cores at 600 s the
# searching sweep ended above its prior alone on the sweep's schedule by +0.006 on the CJK corpus (pressure 22;
# its winner an lstm 1x256 at lr 0.0097, fast at the rungs) and by +0.049 on the licences (pressure 279), one
# seed each, while at pressure 4.5 (Python source, 2 seeds) it ended +0.0043 above and at 6-7
# (tiny-shakespeare, 2 seeds) +0.0015 (BENCHMARKS.md, suite-long-cpu). The bound lies between those, near their
# geometric middle. CPU plans only (memorises).
MAX_SEARCH_PRESSURE = 12.0
# ASHA's longest rung, in grace periods: one promotion at reduction factor 3. On tiny-shakespeare at 600 s, 8
# configurations of the auto space trained to the end ranked at 0.35, 1.06, 3.2 and 9.6 epochs as their ends did
# with Spearman 0.95, 0.95, 0.98 and 0.96 (bench_rungs), so rungs past the second cost the search's slots without
# ranking better. A longest rung of a third of the window at the fastest rate lets the prior and the first other
# trial hold both slots through most of a 600-1800 s window on 2 cores (~3-5 configurations compared, against ~13-17).
MAX_RUNGS = 3.0
TRIAL_START_S = 3.0  # a trial's start in a running sweep (actors reused): the corpus, the model, the first step
# a slot's first trial also waits for Ray to start its worker process, which imports torch. With these two
# starts and a longest rung of a third of the window, the estimate for tiny-shakespeare, 600 s, 2 cores was
# ~4 configurations; in the sweep that searched there anyway 2 reported besides the prior (BENCHMARKS.md,
# rule-cpu): an estimate on the high side
SLOT_START_S = 15.0
SEARCH_MODES = ("auto", "always", "never")
# a trial whose worker dies (a killed process, a lost node) reruns from its last checkpoint, in the same MLflow
# run, this many times before it counts as failed: an auto sweep's trials are few, each one matters
AUTO_MAX_FAILURES = 2
NO_SEARCH_REPORTS = 16  # evaluations of a prior trained alone: its best kept, its checkpoints to resume from
# Without a search, a CPU with two slots trains the prior twice at once, one slot each, seeds apart, rather than
# once on both, where each trains nearly as many characters as one alone: two one-thread trials on 2 cores train
# 26-39% more characters together than one two-thread trial (S2 in BENCHMARKS.md), and on tiny-shakespeare the
# better member ends about as low as the prior alone, their mixture (weights fitted on val) lower still
# (BENCHMARKS.md, pair-cpu: 1.5199 +- 0.012 alone, 1.5198 +- 0.007 the better member, 1.4697 +- 0.005 mixed,
# 300 s). More members would each get fewer threads than measured there, and cost their mixture more at sampling.
MEMBERS = 2
# Where a second thread speeds a trial up, a member trains fewer characters than the prior alone and the better
# member falls behind it: on CJK news (4,046 characters, whose output layer gains from the second thread) it
# ended 0.054 above the prior alone at 300 s, its mixture 0.041 below, while on Python source it ended 0.025
# below (BENCHMARKS.md, suite-pair-cpu). So members train only where each, beside the others, trains at least
# this share of the rate of one trial alone on every thread (calibrate.measure_members; what it measured on
# those corpora is in BENCHMARKS.md, suite-share-cpu): else the prior trains once, on the whole machine. Not
# where the prior would memorise (memorises): its passes are many, a member's fewer characters cost it little, and
# members at two dropouts leave the one choice that matters there to the end. On CJK news at 600 s (pressure
# 18-20, each member at ~62% of one alone's rate) the export, the member lower on val, ended at 4.4167 +- 0.005
# against 4.4629 +- 0.001 for the prior alone on both cores, the two mixed at 4.2950 +- 0.003 (2 seeds;
# BENCHMARKS.md, suite-members-cpu)
PAIR_SHARE = 0.75


@dataclass
class Plan:
    """What the sizing chose and why: printed by --dry-run, logged with the sweep."""
    shapes: list
    search_s: float
    finish_s: float
    grace_chars: float
    max_chars: float
    report_chars: float
    eval_chars: int  # val characters each evaluation scores when not the whole split; 0: the whole split
    first_report_s: float
    train_chars: int
    vocab_size: int
    nats_per_char: float  # the train split's information per character (data.compressed_nats)
    calibration: Calibration
    fixed: dict = field(default_factory=dict)  # the sweep's fixed embed_size and softmax (calibrate.candidate)
    compared: float = 0.0  # configurations besides the prior the search can bring to its first rung
    searching: bool = True  # False: the prior trains alone for the budget (no_search)
    # what the sweep file's train section sets: neither searched, nor in the first point, nor varied by members
    train_fixed: frozenset = frozenset()
    search_mode: str = "auto"

    def search_line(self) -> str:
        """Whether the sweep searches, and why, in one line."""
        could = (f"the search could bring ~{self.compared:.0f} configurations besides the prior to its first "
                 f"rung in {self.search_s:.0f} s")
        if self.searching:
            forced = self.compared < MIN_COMPARED or memorises(self)
            return f"# {could}" + (" (searching: --search always)" if forced else "")
        press = pressure(self)[1]
        why = ("--search never" if self.search_mode == "never" else
               f"fewer than {MIN_COMPARED}: too few to pay for it" if self.compared < MIN_COMPARED else
               f"but its prior would memorise the split, pressure {beside(press, MAX_SEARCH_PRESSURE)} > "
               f"{MAX_SEARCH_PRESSURE:g}: the end is "
               f"decided by memorising, which rungs a few percent into a run cannot see")
        members, cal = members_of(self), self.calibration
        shape = prior_shape(self)
        share = (f" (each of {MEMBERS} at once would train at {as_share(cal.paired[shape] / cal.whole[shape])} the "
                 f"rate of one alone)") if shape in cal.whole and shape in cal.paired else ""
        varied = members > 1 and memorises(self) and prior_dropout(self) and "dropout" not in self.train_fixed
        dropouts = "" if not varied else (
            f", at dropout {prior_dropout(self):g} and {2 * prior_dropout(self):g} (`best --export` takes the "
            f"lower on val)")
        how = ("trains alone on the whole machine" if members == 1 else
               f"trains {members} times at once, seeds apart{dropouts}, {cal.parallel // members} slot(s) each") + share
        mix = "" if members == 1 else f" (`charsearch best --export FILE --ensemble {members}` mixes them)"
        return (f"# no search: {could} ({why}); the prior {how} for ~{self.prior_s:.0f} s, "
                f"constant, then decaying to 0 over the last {1 - SEARCH_FRACTION:.0%}, as the search's winner "
                f"would{mix}")

    @property
    def prior_s(self) -> float:
        """Seconds the prior of a sweep without a search trains: until the budget's end, from the sweep's start."""
        return self.search_s + self.finish_s + FIXED_COST_S - NO_SEARCH_COST_S

    @property
    def per_param(self) -> float:
        """The factor on every characters-per-parameter constant: 1 up to English prose's information."""
        return scale_for(self.nats_per_char)

    def describe(self) -> str:
        c = self.calibration
        lines = [f"# calibration: {len(c.rates)} shapes measured in {c.seconds:.0f} s on {c.device}, "
                 f"{c.parallel} trial(s) at once, {c.threads} thread(s) each"
                 + (f"; each with the sweep's {', '.join(f'{k} {v}' for k, v in sorted(self.fixed.items()))}"
                    if self.fixed else "")]
        if c.gpus:
            curve = ", ".join(f"K={k}: {v:,}" for k, v in sorted(c.packing.items()))
            lines.append(f"# packing on one GPU ({REFERENCE}, aggregate chars/s): {curve} -> {c.per_gpu} trials per "
                         f"GPU x {c.gpus} GPU(s), {1 / c.per_gpu:g} of a GPU and {c.cpu_per_trial:g} CPU each; the "
                         f"best trial finishes on a whole GPU")
        for name in sorted(c.rates, key=lambda n: -c.rates[n]):
            kept = "kept" if name in self.shapes else "dropped"
            mem = f" {human_bytes(c.memory[name]):>9}/trial" if name in c.memory else ""
            lines.append(f"#   {name:<12} {c.params[name]:>10,} params {c.rates[name]:>9,} chars/s{mem}  {kept}")
        lines.append(f"# search {self.search_s:.0f} s, then the best trial trains on for {self.finish_s:.0f} s; "
                     f"ASHA grace {self.grace_chars / self.train_chars:.3g} epochs, max "
                     f"{self.max_chars / self.train_chars:.3g} epochs; a new trial needs ~{self.first_report_s:.0f} s "
                     f"to report once")
        lines.append(self.search_line())
        lines.append(f"# the train split carries {self.nats_per_char:.3g} nats/char (lzma; English prose "
                     f"~{REFERENCE_NATS:g}): characters per parameter x{self.per_param:.2g}")
        passes, press = pressure(self)
        lines.append(f"# the first trial, {prior_shape(self)}, would pass over the train split {passes:.3g} times "
                     f"in the budget; times its parameters per train character: {beside(press, FREE_PRESSURE)} (above "
                     f"{FREE_PRESSURE:g} it memorises the split): dropout {prior_dropout(self):g}")
        fresh = {k: v for k, v in prior_step(self).items() if k not in self.train_fixed}
        if fresh:
            step = ", ".join(f"{k} {v:g}" for k, v in fresh.items() if k != "learning_rate")
            rate = fresh.get("learning_rate")
            notes = ([f"at learning_rate {rate:g}"] if step and rate else []) + (
                ["the sweep file sets the rest"] if len(fresh) < len(FRESH_STEP) else [])
            lines.append(f"# fewer than {FRESH_PASSES:g} passes: every character nearly fresh, so "
                         + (f"every trial takes {step}" if step else f"every trial takes learning_rate {rate:g}")
                         + (f" ({'; '.join(notes)})" if notes else ""))
        if "warmup_iters" not in self.train_fixed:
            lines.append(f"# every trial warms up over {WARMUP_ITERS} iterations, its rate rising linearly from 0 "
                         f"(at the full rate from the first step, a fresh model can stall for good)")
        if self.eval_chars:
            lines.append(f"# each evaluation scores {self.eval_chars:,} val characters spread evenly over the split "
                         f"(reading all of it at every report would leave too little time to train; `charsearch eval` "
                         f"scores the whole split)")
        return "\n".join(lines)


def plan(cal: Calibration, budget_s: float, train_chars: int, val_chars: int, vocab_size: int,
         nats_per_char: float = REFERENCE_NATS, may_sample: bool = True, fixed: dict | None = None,
         search: str = "auto") -> Plan:
    """The sizing for `val_chars` scored per evaluation: the whole val split, of which the plan may score a
    sample instead (`may_sample`), or a sample the user fixed; `fixed` as calibrate.candidate's. `search`:
    auto (search where it can pay), always, or never (SEARCH_MODES)."""
    usable = budget_s - cal.seconds - FIXED_COST_S
    if usable < 10:
        raise UsageError(f"a {budget_s:g} s budget leaves {usable:.0f} s to train after calibration "
                         f"({cal.seconds:.0f} s) and start-up (~{FIXED_COST_S:.0f} s); give at least "
                         f"{math.ceil(cal.seconds + FIXED_COST_S + 30)} s")
    search_s = SEARCH_FRACTION * usable
    finish_s = usable - search_s
    scale = scale_for(nats_per_char)
    kept = [n for n in cal.rates if TOKENS_PER_PARAM * scale <= cal.rates[n] * usable / cal.params[n]
            <= MAX_TOKENS_PER_PARAM * scale and cal.params[n] <= PARAMS_PER_CHAR * train_chars and fits(cal, n)]
    if not kept:  # the shape nearest the band that fits, whatever the budget: something must train
        kept = [min((n for n in cal.rates if fits(cal, n)) or cal.rates,
                    key=lambda n: abs(math.log(cal.rates[n] * usable / cal.params[n] / (60 * scale))))]
    rates = sorted(cal.rates[n] for n in kept)
    median, slowest = rates[len(rates) // 2], rates[0]
    affordable = max(MIN_EVAL_SAMPLE, round(median * search_s / 20))
    eval_chars = affordable if may_sample and val_chars > affordable else 0
    report = max(median * search_s / 40, 2 * (eval_chars or val_chars))
    # a whole number of reports: ASHA reads a rung at the first report at or past it, so a rung a hair past a
    # report would be read a report later (at twice the grace where the grace is one report)
    grace = report * max(1, round(median * search_s / 20 / report))
    max_chars = MAX_RUNGS * grace
    first_report = TRIAL_START_S + report / slowest
    p = Plan(sorted(kept, key=lambda n: cal.params[n]), search_s, finish_s, grace, max_chars, report, eval_chars,
             first_report, train_chars, vocab_size, nats_per_char, cal, dict(fixed or {}), search_mode=search)
    p.compared = comparisons(p)
    p.searching = search == "always" or (search == "auto" and p.compared >= MIN_COMPARED and not memorises(p))
    return p


def comparisons(p: Plan) -> float:
    """Configurations besides the prior that the search can bring to ASHA's first rung in its window.

    While no trial has reached a rung, the first to reach it goes on (ASHA compares with the values
    recorded there): the first trial of each slot, the prior's included, runs to the longest rung and
    holds its slot that long. The slots' time left goes to later trials, each costing its start, its grace
    period and its expected promotions (at reduction factor 3, a third of a rung's trials go on, three
    times as far: 2/3 of a grace period more per rung above the first), at the median kept shape's rate."""
    cal = p.calibration
    rates = sorted(cal.rates[n] for n in p.shapes)
    median = rates[len(rates) // 2]
    window = max(0.0, p.search_s - SLOT_START_S - p.first_report_s)  # no trial starts too late to report

    def hold(rate: float) -> float:
        return min(window, TRIAL_START_S + p.max_chars / rate)

    left = cal.parallel * window - hold(cal.rates[prior_shape(p)]) - (cal.parallel - 1) * hold(median)
    rungs = max(0.0, math.log(p.max_chars / p.grace_chars, 3))
    trial_s = TRIAL_START_S + p.grace_chars / median * (1 + 2 / 3 * rungs)
    return cal.parallel - 1 + max(0.0, left) / trial_s


def scale_for(nats_per_char: float) -> float:
    """The factor on the characters-per-parameter constants for a corpus of this information per character."""
    return min(1.0, REFERENCE_NATS / nats_per_char)


def fits(cal: Calibration, shape: str) -> bool:
    """Whether calibration.per_gpu trials of a shape fit in one GPU's memory together (always on CPU)."""
    if not cal.gpus or shape not in cal.memory:
        return True
    return cal.per_gpu * cal.memory[shape] <= MEMORY_SHARE * cal.gpu_memory


def apply(sweep: SweepConfig, p: Plan) -> SweepConfig:
    """Fill a sweep config with the planned search: the shapes, the optimiser ranges, ASHA, budgets."""
    n = p.train_chars
    dropout = prior_dropout(p)
    steps = STEPS["gpu" if p.calibration.gpus else "cpu"]
    space = {
        "shape": SearchParam("choice", list(p.shapes)),
        # around the prior's: ASHA's short rungs favour little dropout, which pays only later, when memorising starts
        "dropout": SearchParam("float", [dropout / 2, 2 * dropout] if dropout else [0.0, 0.1]),
        **{key: SearchParam("choice", values) for key, (values, _) in steps.items()},
    }
    fresh = prior_step(p)
    first = {"shape": prior_shape(p), "learning_rate": PRIOR_LR, "dropout": dropout,
             **{key: prior for key, (_, prior) in steps.items()}, **fresh}
    # where the prior takes the larger step, every trial does (see FRESH_STEP)
    step = {key: value for key, value in fresh.items() if key in steps}
    for key in list(space):
        if key in sweep.train or key in step:  # a value the user fixed, or the rule's step, is not searched
            del space[key]
    sweep.space = space
    sweep.points_to_evaluate = [{k: v for k, v in first.items() if k in space}]
    if sweep.startup_trials is None:  # a value from the sweep file stands
        sweep.startup_trials = STARTUP_TRIALS
    sample = {"eval_chars": p.eval_chars} if p.eval_chars else {}
    sweep.train = {"optimizer": "adam", "lr_schedule": "constant", "grad_clip": 5.0, **sample,
                   "warmup_iters": WARMUP_ITERS, **step,
                   "learning_rate": first["learning_rate"], **sweep.train}  # the rate is not searched (PRIOR_LR)
    sweep.scheduler, sweep.time_attr, sweep.reduction_factor = "asha", "chars_trained", 3.0
    sweep.report_every_epochs = _round(p.report_chars / n)
    # rungs on reports (see plan), the rounding included: each report trains at least report_every_epochs
    sweep.grace_epochs = round(p.grace_chars / p.report_chars) * sweep.report_every_epochs
    sweep.trial_max_epochs = MAX_RUNGS * sweep.grace_epochs
    sweep.num_samples = max(sweep.num_samples, 1000)  # the budget and the deadline end the search, not a count
    if sweep.max_failures is None:  # a value from the sweep file stands
        sweep.max_failures = AUTO_MAX_FAILURES
    sweep.max_concurrent = p.calibration.parallel
    cal = p.calibration
    sweep.cpu, sweep.gpu = cal.cpu_per_trial, (1 / cal.per_gpu if cal.gpus else 0.0)
    sweep.trial_max_time = 0.0
    sweep.finish_time = round(p.finish_s, 1)
    sweep.first_report_s = round(p.first_report_s, 1)
    return sweep if p.searching else no_search(sweep, p)


def no_search(sweep: SweepConfig, p: Plan) -> SweepConfig:
    """The sweep without a search: the prior (or a warm start's best) for the whole budget, its rate constant,
    then decaying to 0 over the last 1 - SEARCH_FRACTION (the schedule the search's winner gets). On a CPU
    with two slots or more, where each would train at PAIR_SHARE or more of one trial alone's rate or the prior
    would memorise (members_of), it trains as MEMBERS trials at once, seeds apart (and dropouts: member_dropout),
    the slots shared between them: `best --export` takes the better, `--ensemble` mixes them.
    The space stays in the file: more samples would search it."""
    cal, usable = p.calibration, p.prior_s
    members = members_of(p)
    sweep.num_samples, sweep.max_concurrent, sweep.scheduler = members, members, "none"
    sweep.startup_trials = None
    sweep.train = {**sweep.train, "lr_schedule": "wsd", "decay_frac": round(1 - SEARCH_FRACTION, 2)}
    if cal.gpus:
        sweep.gpu = 1.0
    else:
        sweep.cpu = cal.cpu_per_trial * (cal.parallel // members)
    if members > 1:
        seed = int(sweep.train.get("seed", DEFAULT_SEED))
        sweep.space["seed"] = SearchParam("choice", [seed + i for i in range(members)])
        first = sweep.points_to_evaluate[0]
        sweep.points_to_evaluate = [{**first, "seed": seed + i, **(member_dropout(first, i) if memorises(p) else {})}
                                    for i in range(members)]
    # a member trains at its rate beside the others, one trial alone at its rate on every thread (where measured)
    shape = prior_shape(p)
    rate = (cal.whole if members == 1 else cal.paired).get(shape, cal.rates[shape])
    report = max(rate * usable / NO_SEARCH_REPORTS, 2 * (p.eval_chars or 0), 1.0)
    sweep.report_every_epochs = _round(report / p.train_chars)
    sweep.trial_max_epochs = _round(max(10.0, 3 * cal.parallel * rate * usable / p.train_chars))  # the clock ends it
    # the clock, not the plan's estimate of the sweep's start: the prior trains until the budget's end less
    # trial.END_MARGIN_S, whenever it started
    sweep.trial_max_time, sweep.finish_time = float(sweep.sweep_time or round(usable, 1)), 0.0
    return sweep


def member_dropout(first: dict, i: int) -> dict:
    """The i-th member's dropout where the prior would memorise and has some dropout (the sweep searching it): the
    prior's for the first, twice it for the others. There how much does best depends on the corpus in ways the
    pressure does not tell (see MAX_DROPOUT) and shows only at the end, where `best --export` takes the member
    lower on val. Against two members at the prior's dropout (bench_members, 600 s, 2 cores) the export ended
    0.019 lower on CJK news at gru 2x256 and level on the licences, whose mixture ended 0.031 higher (2 seeds
    each): the default export gains where the prior's dropout is too low, the mixture pays where it was not."""
    return {"dropout": round(first["dropout"] * (2 if i else 1), 3)} if first.get("dropout") else {}


def members_of(p: Plan) -> int:
    """Trials of the prior a sweep without a search trains at once: MEMBERS on a CPU with the slots for them where
    each on its slots trains at PAIR_SHARE or more of the prior's rate alone on every thread (measured: see
    needs_members), or where the prior would memorise the split (memorises: its passes are many, so a member's
    fewer characters cost it little, and its members try two dropouts), else one (on a GPU, one trial per GPU
    is what the packing measured for a finish)."""
    cal = p.calibration
    if cal.gpus or cal.parallel < MEMBERS:
        return 1
    if memorises(p):
        return MEMBERS
    shape = prior_shape(p)
    whole, paired = cal.whole.get(shape), cal.paired.get(shape)
    return MEMBERS if whole and paired and paired >= PAIR_SHARE * whole else 1


def needs_members(p: Plan) -> str | None:
    """The prior's shape, where whether it trains as members depends on rates not yet measured: as MEMBERS trials
    at once, and as one alone on every thread."""
    cal = p.calibration
    shape = prior_shape(p)
    if p.searching or cal.gpus or cal.parallel < MEMBERS or memorises(p) or (shape in cal.whole and shape in cal.paired):
        return None
    return shape


def prior_shape(p: Plan) -> str:
    """The first trial's shape: the kept shape that would see nearest PRIOR_TOKENS_PER_PARAM characters per
    parameter in the budget, a GRU where one is kept (at equal width it has 3/4 of an LSTM's parameters)."""
    usable = p.search_s + p.finish_s
    shapes = [s for s in p.shapes if s.startswith("gru")] or p.shapes
    rates, params = p.calibration.rates, p.calibration.params
    target = PRIOR_TOKENS_PER_PARAM * p.per_param
    return min(shapes, key=lambda s: abs(math.log(rates[s] * usable / params[s] / target)))


def pressure(p: Plan) -> tuple[float, float]:
    """(passes over the train split, memorising pressure) of the prior trained for the whole budget: its
    passes times all its parameters (the vocabulary's included) per train character."""
    shape = prior_shape(p)
    passes = p.calibration.rates[shape] * (p.search_s + p.finish_s) / p.train_chars
    cfg = {**parse_shape(shape), "vocab_size": p.vocab_size, "embed_size": p.fixed.get("embed_size", 0),
           "cutoffs": cutoffs_for(p.vocab_size, p.fixed.get("softmax", "auto"))}
    return passes, passes * param_count(cfg) / p.train_chars


def prior_step(p: Plan) -> dict:
    """FRESH_STEP where the prior on a CPU would read its train split fewer than FRESH_PASSES times in
    MIN_FRESH_STEPS or more of that step, else nothing (STEPS' prior and PRIOR_LR stand)."""
    passes = pressure(p)[0]
    steps = passes * p.train_chars / (FRESH_STEP["batch_size"] * FRESH_STEP["seq_length"])
    return dict(FRESH_STEP) if not p.calibration.gpus and passes < FRESH_PASSES and steps >= MIN_FRESH_STEPS else {}


def memorises(p: Plan) -> bool:
    """Whether the prior's pressure is above MAX_SEARCH_PRESSURE on a CPU: the bound was measured on 2 CPU cores;
    on a GPU, where a search packs many trials and one prior alone would leave most of the GPU idle, it is not
    applied until measured there."""
    return not p.calibration.gpus and pressure(p)[1] > MAX_SEARCH_PRESSURE


def prior_dropout(p: Plan) -> float:
    """None up to FREE_PRESSURE; then 0.1, rising with the pressure's logarithm to MAX_DROPOUT at twice it."""
    excess = pressure(p)[1] / FREE_PRESSURE
    return 0.0 if excess <= 1 else round(min(MAX_DROPOUT, 0.1 * (1 + math.log2(excess))), 2)


def as_share(ratio: float) -> str:
    """A rate against another: '62% of'; where other work starves a run on several threads (their barriers wait
    on a thread the machine is not running), one on one thread can train far faster: '259 times'."""
    return f"{ratio:.0%} of" if ratio < 2 else f"{ratio:.0f} times"


def beside(x: float, bound: float) -> str:
    """x to 3 digits, or to as many more as tell it from `bound` (a line saying "3 (above 3 ...)" reads wrong)."""
    for digits in range(3, 10):
        shown = f"{x:.{digits}g}"
        if float(shown) != bound or x == bound:
            return shown
    return shown


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def auto_sweep(sweep: SweepConfig, budget_s: float, cpus: int | None = None, gpus: int = 0,
               calibration: Calibration | None = None, measure_gpu=None, search: str = "auto") -> tuple[SweepConfig, Plan]:
    """Size `sweep` (its corpus, split and fixed train options) to the machine: to `calibration` where
    one is given, else measured on the CPUs here or, with `gpus`, on a GPU (`measure_gpu`: a function
    with calibrate_gpu's arguments that runs it where a GPU is; by default, in this process). `search`:
    as plan's."""
    from charsearch.core.data import compressed_nats, load_corpus
    corpus = load_corpus(sweep.corpus, sweep.min_freq)
    train_ids, val_ids, _ = corpus.split(sweep.train_frac, sweep.val_frac)
    cpus = cpus or len(os.sched_getaffinity(0))
    max_params = PARAMS_PER_CHAR * len(train_ids)
    nats = compressed_nats(corpus, sweep.train_frac, sweep.val_frac)
    least = TOKENS_PER_PARAM * scale_for(nats)
    # an input or output layer the user fixed is what the trials will pay for, and what may memorise
    fixed = {key: sweep.train[key] for key in ("embed_size", "softmax") if key in sweep.train}
    if calibration is not None:
        cal = calibration
    elif gpus:
        cal = (measure_gpu or calibrate_gpu)(len(corpus.vocab), budget_s, gpus, cpus, max_params, GPU_FAMILIES,
                                             CALIBRATION_FRACTION, fixed)
    else:
        cal = calibrate_cpu(len(corpus.vocab), budget_s, cpus, max_params, FAMILIES, CALIBRATION_FRACTION, least,
                            fixed)
    if not cal.rates:
        raise UsageError(f"the corpus is too small for any candidate model (at most {max_params:,.0f} parameters "
                         f"for its train split); use a larger corpus or a sweep file with search_space of your own")
    sample = sweep.train.get("eval_chars") or 0  # a sample the user fixed stands

    def sized() -> Plan:
        return plan(cal, budget_s, len(train_ids), min(len(val_ids), sample or len(val_ids)), len(corpus.vocab), nats,
                    may_sample=not sample, fixed=fixed, search=search)
    p = sized()
    for _ in range(2):  # whether the prior trains as members: measured, then planned again with the time it took,
        shape = needs_members(p)  # which can move the prior to the next shape where two are nearly as near
        if not shape:
            break
        measure_members(cal, shape, MEMBERS, len(corpus.vocab), fixed, share=PAIR_SHARE)
        p = sized()
    sweep.sweep_time = budget_s
    p.train_fixed = frozenset(sweep.train)
    return apply(sweep, p), p


def default_sweep(corpus: str, budget_s: float) -> SweepConfig:
    """The sweep `charsearch sweep --data CORPUS --time T` runs (no sweep file)."""
    from charsearch.core.data import resolve_path
    path = resolve_path(corpus)
    name = f"auto-{(path.absolute().parent.name if path.name == 'input.txt' else path.stem)}"
    return SweepConfig(path="", name=name, corpus=str(path), sweep_time=budget_s)


def search_mode(text: str) -> str:
    """--search's value, checked: auto, always or never."""
    if text not in SEARCH_MODES:
        raise UsageError(f"--search {text!r}: expected one of {', '.join(SEARCH_MODES)} (auto: search where the "
                         f"plan says the search can compare enough configurations to pay for itself)")
    return text


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

