"""Sizing an automatic sweep: the rules applied to a calibration, the sweep file it resolves to, and
the command line that asks for it."""

import json
import math
import re

import pytest
import yaml

from charsearch.cli import main
from charsearch.search import autosize
from charsearch.search.autosize import Calibration, parse_duration, plan
from charsearch.search.calibrate import WHOLE_ROUNDS, WHOLE_SECONDS, measure_members
from charsearch.search.sweepfile import SweepConfig, load_sweep

from .conftest import make_text, one_line_error

# a made-up machine: rates (chars/s per trial, 2 at once) of shapes small to large
RATES = {"lstm 1x64": (41_665, 140_000), "lstm 2x128": (240_321, 40_000), "lstm 2x256": (873_793, 36_000),
         "lstm 2x512": (3_000_000, 1_500)}


def calibration(seconds=10.0) -> Calibration:
    return Calibration("cpu", 2, 1, rates={n: r for n, (_, r) in RATES.items()},
                       params={n: p for n, (p, _) in RATES.items()}, seconds=seconds)


def test_shapes_are_kept_by_characters_per_parameter_and_corpus_size():
    p = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    usable = 600 - 10 - autosize.FIXED_COST_S
    for name, (params, rate) in RATES.items():
        per_param = rate * usable / params
        expected = autosize.TOKENS_PER_PARAM <= per_param <= autosize.MAX_TOKENS_PER_PARAM
        assert (name in p.shapes) == expected, (name, per_param)
    assert p.shapes == ["lstm 2x128", "lstm 2x256"]  # 1x64 would plateau, 2x512 cannot train enough
    # a small corpus caps the parameters: 2x256 has more than twice its characters
    small = plan(calibration(), budget_s=600, train_chars=300_000, val_chars=30_000, vocab_size=65)
    assert small.shapes == ["lstm 2x128"]


def test_the_budget_splits_into_search_and_finish_and_asha_compares_many_cheaply():
    p = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    usable = 600 - 10 - autosize.FIXED_COST_S
    assert p.search_s + p.finish_s == pytest.approx(usable)
    assert p.search_s == pytest.approx(autosize.SEARCH_FRACTION * usable)
    # every trial reports at least once before the first rung; evaluations cost a small share
    assert p.report_chars >= 2 * 110_000 and p.grace_chars >= p.report_chars
    # one promotion at reduction factor 3, no more: later rungs rank as the first two do, and would hold the slots
    assert p.max_chars == pytest.approx(autosize.MAX_RUNGS * p.grace_chars) and autosize.MAX_RUNGS == 3
    assert p.first_report_s == pytest.approx(3.0 + p.report_chars / 36_000)  # by the slowest kept shape


@pytest.mark.parametrize("train_chars,val_chars,reports", [(1_003_854, 200_000, 1), (22_500_000, 50_000, 2)])
def test_asha_reads_its_first_rung_at_the_report_the_plan_counts_it_at(train_chars, val_chars, reports):
    """ASHA decides at the first report at or past a rung. The grace period is a whole number of reports
    (one where the val split sizes the reports, two where the rate does), and every trial's reports train at
    least the planned characters whatever its step, so the first decision comes at that report, not one
    later: a report a hair short (batches whole, the interval rounded) would have ASHA decide a report late,
    at twice the grace where it is one report, every losing trial training two thirds of its maximum."""
    from charsearch.core.config import TrainConfig
    from charsearch.search.space import make_scheduler
    from charsearch.search.trial import report_iterations
    p = plan(calibration(), budget_s=600, train_chars=train_chars, val_chars=val_chars, vocab_size=65,
             may_sample=False, search="always")
    sweep = autosize.apply(SweepConfig(path="", name="s", corpus="c.txt"), p)
    assert sweep.grace_epochs == reports * sweep.report_every_epochs
    assert sweep.trial_max_epochs == pytest.approx(autosize.MAX_RUNGS * sweep.grace_epochs)
    first_rung = min(milestone for milestone, _ in make_scheduler(sweep, train_chars)._brackets[0]._rungs)
    assert first_rung == pytest.approx(sweep.grace_epochs * train_chars)
    for batch_size in (16, 32, 64):
        for seq_length in (64, 128):
            step = batch_size * seq_length
            every = report_iterations(sweep.report_every_epochs * train_chars,
                                      TrainConfig(batch_size=batch_size, seq_length=seq_length))
            assert reports * every * step >= first_rung  # decided at the planned report
            assert (reports - 1) * every * step < first_rung and every * step < p.report_chars + step  # not before


def test_a_large_val_split_is_scored_by_an_evenly_spread_sample():
    """Reading 2.5 M val characters at every report would leave no trial time to report in the window:
    every evaluation of the sweep (search and finish) scores the same median * S / 20 characters."""
    p = plan(calibration(), budget_s=600, train_chars=22_500_000, val_chars=2_500_000, vocab_size=65)
    median = 40_000  # of the kept shapes, 2x128 and 2x256
    assert p.eval_chars == round(median * p.search_s / 20)
    assert p.report_chars == pytest.approx(2 * p.eval_chars)
    assert p.first_report_s < p.search_s / 5  # every shape reports early in the window
    whole = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    assert whole.eval_chars == 0 and whole.report_chars == pytest.approx(2 * 110_000)
    sweep = autosize.apply(SweepConfig(path="", name="s", corpus="c.txt"), p)
    assert sweep.train["eval_chars"] == p.eval_chars
    assert "eval_chars" not in autosize.apply(SweepConfig(path="", name="s", corpus="c.txt"), whole).train
    # a sample the user fixed stands, and sizes the reports
    fixed = plan(calibration(), budget_s=600, train_chars=22_500_000, val_chars=50_000, vocab_size=65, may_sample=False)
    assert fixed.eval_chars == 0 and fixed.report_chars == pytest.approx(max(median * fixed.search_s / 40, 100_000))
    slow = Calibration("cpu", 2, 1, rates={"lstm 2x128": 10_000}, params={"lstm 2x128": 240_321}, seconds=10.0)
    tiny = plan(slow, budget_s=60, train_chars=22_500_000, val_chars=2_500_000, vocab_size=65)
    assert tiny.eval_chars == autosize.MIN_EVAL_SAMPLE  # too small a sample would rank trials by its noise


def test_a_budget_too_small_to_train_is_refused_with_the_least_that_works():
    with pytest.raises(Exception, match=r"leaves -?\d+ s to train.*give at least \d+ s"):
        plan(calibration(seconds=20), budget_s=40, train_chars=1_000_000, val_chars=100_000, vocab_size=65)


def test_the_plan_fills_a_sweep_that_loads_back_from_its_file(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(50_000))
    p = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65,
             search="always")
    sweep = autosize.apply(SweepConfig(path="", name="auto-c", corpus=str(corpus), sweep_time=600,
                                       train={"weight_decay": 0.01}), p)
    assert sweep.space["shape"].values == p.shapes and sweep.train["weight_decay"] == 0.01
    assert sweep.finish_time == pytest.approx(p.finish_s, abs=0.1) and sweep.max_concurrent == 2
    f = tmp_path / "resolved.yaml"
    f.write_text(yaml.safe_dump(sweep.to_file(), sort_keys=False))
    again = load_sweep(f)
    assert again.space == sweep.space and again.finish_time == sweep.finish_time
    assert again.grace_epochs == sweep.grace_epochs and again.trial_max_epochs == sweep.trial_max_epochs
    cfg = again.trial_config({"shape": "gru 3x64", "learning_rate": 0.003})
    assert (cfg.model, cfg.num_layers, cfg.rnn_size, cfg.learning_rate) == ("gru", 3, 64, 0.003)


def test_the_learning_rate_is_not_searched_every_trial_takes_the_priors():
    """ASHA's rungs rank rates by how fast they start (see PRIOR_LR): every trial takes the prior's rate, and
    the search compares shapes, dropout and steps at it; a rate the sweep file fixes stands."""
    p = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65, search="always")
    sweep = autosize.apply(SweepConfig(path="", name="s", corpus="c.txt", sweep_time=600), p)
    assert "learning_rate" not in sweep.space and {"shape", "dropout", "batch_size"} <= set(sweep.space)
    assert "learning_rate" not in sweep.points_to_evaluate[0]
    for point in (sweep.points_to_evaluate[0], {"shape": "lstm 2x256", "dropout": 0.0, "batch_size": 16}):
        assert sweep.trial_config(point).learning_rate == autosize.PRIOR_LR
    fixed = autosize.apply(SweepConfig(path="", name="s", corpus="c.txt", sweep_time=600,
                                       train={"learning_rate": 0.001}), p)
    assert fixed.trial_config(fixed.points_to_evaluate[0]).learning_rate == 0.001


def test_the_search_starts_from_a_prior_inside_its_space():
    p = plan(calibration(), budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65,
             search="always")
    usable = p.search_s + p.finish_s
    sweep = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=600), p)
    (first,) = sweep.points_to_evaluate
    assert all(sweep.space[k].allows(v) for k, v in first.items()) and set(first) == set(sweep.space)
    # of the kept shapes (2x128 would see ~94 chars per parameter, 2x256 ~23), the one nearest the prior's
    assert first["shape"] == min(p.shapes, key=lambda s: abs(math.log(
        RATES[s][1] * usable / RATES[s][0] / autosize.PRIOR_TOKENS_PER_PARAM)))
    assert sweep.startup_trials == autosize.STARTUP_TRIALS < 10
    # on a CPU it steps on 2,048 characters, inside a space that reaches 1,024 and 8,192
    assert first["batch_size"] * first["seq_length"] == 2_048
    steps = [b * s for b in sweep.space["batch_size"].values for s in sweep.space["seq_length"].values]
    assert min(steps) == 1_024 and max(steps) == 8_192
    # a value the sweep file set stands
    own = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=600, startup_trials=6,
                                     max_failures=0), p)
    assert own.startup_trials == 6 and own.max_failures == 0
    # a trial whose worker dies is retried from its last checkpoint, unless the file says otherwise
    assert sweep.max_failures == autosize.AUTO_MAX_FAILURES == 2
    # a GRU is preferred where one is kept, even if an LSTM is nearer the ratio
    gru = calibration()
    gru.rates["gru 2x256"], gru.params["gru 2x256"] = 30_000, 650_000
    p = plan(gru, budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=65,
             search="always")
    assert "gru 2x256" in p.shapes and autosize.prior_shape(p) == "gru 2x256"
    # an option the user fixed is neither searched nor in the first point
    fixed = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=600,
                                       train={"learning_rate": 0.001}), p)
    assert "learning_rate" not in fixed.points_to_evaluate[0] and fixed.points_to_evaluate[0]["shape"] == "gru 2x256"


def two_cores(parallel=2) -> Calibration:
    """Figures in the shape of tiny-shakespeare's on 2 cores: the prior (a GRU, preferred) is the slowest
    kept shape, so it holds its slot through most of the window."""
    rates = {"lstm 2x96": 60_000, "lstm 2x128": 50_000, "gru 2x128": 26_000}
    params = {"lstm 2x96": 137_088, "lstm 2x128": 231_936, "gru 2x128": 173_952}
    return Calibration("cpu", parallel, 1, rates=rates, params=params, seconds=10.0)


def test_no_search_where_the_window_can_compare_too_few_configurations(tmp_path):
    cal = two_cores()
    cal.whole["gru 2x128"], cal.paired["gru 2x128"] = 27_000, 26_000  # a second thread barely speeds it up
    p = plan(cal, budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    assert autosize.prior_shape(p) == "gru 2x128" and autosize.needs_members(p) is None
    # the prior and the first other trial each run to the longest rung: the window has room for few more
    assert p.compared < autosize.MIN_COMPARED and not p.searching
    line = p.search_line()
    assert line == next(x for x in p.describe().splitlines() if x.startswith("# no search:"))
    assert f"~{p.compared:.0f} configurations besides the prior" in line and "fewer than 10" in line
    # it trains from the sweep's start until just before the budget's end: the line says for how long
    usable = 300 - cal.seconds - autosize.NO_SEARCH_COST_S
    assert p.prior_s == pytest.approx(usable) and f" for ~{usable:.0f} s, constant, then decaying" in line, line
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(50_000))
    sweep = autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300), p)
    # the prior twice at once, one core each, seeds apart, for the whole budget, on the schedule the search's
    # winner gets; the line says how to mix them
    assert (sweep.num_samples, sweep.max_concurrent, sweep.scheduler, sweep.cpu) == (2, 2, "none", 1)
    assert "the prior trains 2 times at once, seeds apart, 1 slot(s) each (each of 2 at once would train at 96% " \
           "of the rate of one alone)" in line and "--ensemble 2" in line
    first, second = sweep.points_to_evaluate
    assert first["shape"] == "gru 2x128" and {**first, "seed": 0} == {**second, "seed": 0}
    assert {first["seed"], second["seed"]} == {123, 124} and sweep.space["seed"].values == [123, 124]
    assert sweep.trial_max_time == 300 and sweep.finish_time == 0  # its clock ends it: the budget's end
    assert sweep.train["lr_schedule"] == "wsd" and sweep.train["decay_frac"] == pytest.approx(0.7)
    assert sweep.trial_max_epochs * 1_000_000 > 2 * 26_000 * usable  # the clock ends it, not its epochs
    assert sweep.report_every_epochs * 1_000_000 == pytest.approx(26_000 * usable / autosize.NO_SEARCH_REPORTS, rel=0.01)
    # the printed file runs as it was planned
    f = tmp_path / "resolved.yaml"
    f.write_text(yaml.safe_dump(sweep.to_file(), sort_keys=False))
    again = load_sweep(f)
    assert (again.num_samples, again.scheduler, again.trial_max_time) == (2, "none", sweep.trial_max_time)
    assert again.points_to_evaluate == sweep.points_to_evaluate
    # a seed the sweep file fixed is where the members' seeds start; with one slot, one trial on it
    seeded = autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300, train={"seed": 7}), p)
    assert [point["seed"] for point in seeded.points_to_evaluate] == [7, 8]
    one = plan(two_cores(parallel=1), budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    alone = autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300), one)
    assert (alone.num_samples, alone.cpu, "seed" in alone.space) == (1, 1, False)
    assert "the prior trains alone on the whole machine" in one.search_line() and "--ensemble" not in one.search_line()
    # asked for, the search runs all the same; asked not to, it does not
    forced = plan(two_cores(), budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65, search="always")
    assert forced.searching and "searching: --search always" in forced.search_line()
    searched = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=300), forced)
    assert searched.num_samples >= 1000 and searched.scheduler == "asha" and searched.finish_time > 0
    never = plan(calibration(), budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65, search="never")
    assert not never.searching and "--search never" in never.search_line()


def test_without_a_search_the_prior_trains_as_members_only_where_one_on_its_slot_is_nearly_as_fast_as_alone(tmp_path):
    """On a large vocabulary the output layer gains from a second thread: a member on one slot would train at a
    fraction of the prior alone on every thread, and the single model a sweep exports would fall behind it."""
    cal = two_cores()
    p = plan(cal, budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    # not measured yet: the sweep measures it before deciding (a plan from a file without it trains one)
    assert autosize.needs_members(p) == "gru 2x128" and autosize.members_of(p) == 1
    cal.whole["gru 2x128"], cal.paired["gru 2x128"] = 42_000, 26_000  # each of two at once: 62%
    assert autosize.needs_members(p) is None and autosize.members_of(p) == 1
    line = p.search_line()
    assert "the prior trains alone on the whole machine (each of 2 at once would train at 62% of the rate of one " \
           "alone)" in line and "--ensemble" not in line
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(50_000))
    sweep = autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300), p)
    assert (sweep.num_samples, sweep.max_concurrent, sweep.cpu, "seed" in sweep.space) == (1, 1, 2, False)
    usable = p.prior_s  # its reports spaced by its own rate on the whole machine
    assert sweep.report_every_epochs * 1_000_000 == pytest.approx(42_000 * usable / autosize.NO_SEARCH_REPORTS, rel=0.01)
    cal.whole["gru 2x128"] = 26_000 / autosize.PAIR_SHARE  # at the share exactly: members
    assert autosize.members_of(p) == 2
    member = autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300), p)
    assert member.report_every_epochs * 1_000_000 == pytest.approx(26_000 * usable / autosize.NO_SEARCH_REPORTS,
                                                                   rel=0.01)
    # searching, on one slot, or on a GPU, nothing to measure
    assert autosize.needs_members(plan(two_cores(), budget_s=300, train_chars=1_000_000, val_chars=110_000,
                                     vocab_size=65, search="always")) is None
    assert autosize.needs_members(plan(two_cores(parallel=1), budget_s=300, train_chars=1_000_000, val_chars=110_000,
                                     vocab_size=65)) is None


def test_an_auto_sweep_without_a_search_measures_its_prior_as_members_and_alone(tmp_path):
    import torch
    torch.set_num_threads(2)  # as a Python API caller's process may have: the measuring must not hang after it
    torch.ones(512, 512) @ torch.ones(512, 512)
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(200_000))
    # two shapes equally near the prior's characters per parameter when 93 s are usable: the time measuring
    # takes moves the prior from the larger to the smaller, which is then measured too
    cal = Calibration("cpu", 2, 1, rates={"gru 1x32": 5_591, "gru 2x32": 6_617},
                      params={"gru 1x32": 10_000, "gru 2x32": 20_000}, seconds=1.0)
    sweep, p = autosize.auto_sweep(SweepConfig(path="", name="a", corpus=str(corpus)), 120, cpus=2, calibration=cal,
                                   search="never")
    # measured here, on this machine's threads, and the time it took counted in the calibration
    assert set(cal.whole) == set(cal.paired) == {"gru 1x32", "gru 2x32"}, cal
    assert all(rate > 0 for rate in (*cal.whole.values(), *cal.paired.values()))
    assert cal.seconds > 1.0 + 2 * 2 * 0.9 * WHOLE_SECONDS  # each shape: a turn on each side, at least
    assert p.calibration is cal and autosize.prior_shape(p) == "gru 1x32" and sweep.num_samples == autosize.members_of(p)
    assert (sweep.num_samples == 2) == (cal.paired["gru 1x32"] >= autosize.PAIR_SHARE * cal.whole["gru 1x32"])
    ratio = cal.paired["gru 1x32"] / cal.whole["gru 1x32"]
    assert f"each of 2 at once would train at {autosize.as_share(ratio)} the rate of one alone" in p.search_line()
    # where other work starves a trial on both threads, one on one thread trains many times as fast: said so
    assert (autosize.as_share(0.62), autosize.as_share(1.5), autosize.as_share(258.97)) == ("62% of", "150% of",
                                                                                         "259 times")


def test_where_the_prior_would_memorise_it_trains_as_members_at_two_dropouts_whatever_their_share(tmp_path):
    """How much dropout does best there depends on the corpus, and shows only at the end: the members try the
    rule's and twice it, and a member's fewer characters cost little where the budget reads the split many
    times over."""
    cal = two_cores()
    cal.whole["gru 2x128"], cal.paired["gru 2x128"] = 42_000, 26_000  # each of two at once: 62%, below the share
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(50_000))

    def planned(train_chars):
        p = plan(cal, budget_s=300, train_chars=train_chars, val_chars=train_chars // 9, vocab_size=65)
        return p, autosize.apply(SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300), p)

    p, sweep = planned(100_000)  # a tenth of tiny-shakespeare: read ~80 times
    d = autosize.prior_dropout(p)
    assert autosize.memorises(p) and not p.searching and d > 0
    assert autosize.needs_members(p) is None and autosize.members_of(p) == 2 == sweep.num_samples
    assert [(pt["seed"], pt["dropout"]) for pt in sweep.points_to_evaluate] == [(123, d), (124, 2 * d)]
    assert all({k: v for k, v in pt.items() if k not in ("seed", "dropout")} ==
               {k: v for k, v in sweep.points_to_evaluate[0].items() if k not in ("seed", "dropout")}
               for pt in sweep.points_to_evaluate)
    space = sweep.space["dropout"].values
    assert space[0] <= d and 2 * d <= space[1]  # every point is a draw of the space
    assert f"seeds apart, at dropout {d:g} and {2 * d:g}" in p.search_line(), p.search_line()
    # a dropout the user fixed is neither searched nor varied, and the plan does not say it is
    fixed = SweepConfig(path="", name="a", corpus=str(corpus), sweep_time=300, train={"dropout": 0.5})
    fixed_sweep, fixed_plan = autosize.auto_sweep(fixed, 300, calibration=p.calibration)
    assert autosize.memorises(fixed_plan) and fixed_sweep.num_samples == 2 and "dropout" not in fixed_sweep.space
    assert all("dropout" not in pt for pt in fixed_sweep.points_to_evaluate), fixed_sweep.points_to_evaluate
    assert "at dropout" not in fixed_plan.search_line() and "seeds apart" in fixed_plan.search_line()
    # below the bound the share decides, as before, and members differ by seed alone, with or without dropout
    p, sweep = planned(500_000)
    assert not autosize.memorises(p) and autosize.members_of(p) == 1
    cal.whole["gru 2x128"] = 26_000
    for chars in (500_000, 1_000_000):
        p, sweep = planned(chars)
        d = autosize.prior_dropout(p)
        assert not autosize.memorises(p) and [pt["dropout"] for pt in sweep.points_to_evaluate] == [d, d]
        assert "at dropout" not in p.search_line()
    assert d == 0 < autosize.prior_dropout(planned(500_000)[0])
    # on a GPU one trial per GPU, however high the pressure
    gpu = Calibration("cuda", 8, 1, rates=cal.rates, params=cal.params, seconds=10.0, gpus=1, per_gpu=8)
    assert autosize.members_of(plan(gpu, budget_s=300, train_chars=100_000, val_chars=11_000, vocab_size=65)) == 1


def test_the_members_measuring_takes_a_second_turn_only_where_it_could_change_the_decision():
    cal = Calibration("cpu", 2, 1)
    # a share no measurement comes near (members cannot train at 10x, or -10x, the rate of one alone): settled
    assert measure_members(cal, "gru 1x32", 2, 65, share=10.0) == 1
    assert measure_members(cal, "gru 2x32", 2, 65, share=-10.0) == 1
    assert measure_members(cal, "gru 2x48", 2, 65) == WHOLE_ROUNDS  # no decision given: every turn
    assert set(cal.whole) == set(cal.paired) == {"gru 1x32", "gru 2x32", "gru 2x48"}, cal
    assert all(rate > 0 for rate in (*cal.whole.values(), *cal.paired.values()))


def test_the_search_runs_where_many_slots_compare_many_configurations():
    two = plan(two_cores(), budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    eight = plan(two_cores(parallel=8), budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65)
    assert eight.compared >= autosize.MIN_COMPARED > two.compared and eight.searching
    assert "# the search could bring" in eight.describe()
    # the same machine on a corpus it would memorise: a tenth of the characters, read ten times as often by
    # the same prior, so short rungs would rank configurations by how fast they start, not how they end
    small = plan(two_cores(parallel=8), budget_s=300, train_chars=100_000, val_chars=11_000, vocab_size=65)
    assert small.compared >= autosize.MIN_COMPARED and autosize.pressure(small)[1] > autosize.MAX_SEARCH_PRESSURE
    assert not small.searching
    line = small.search_line()
    assert line.startswith("# no search:") and "but its prior would memorise the split, pressure" in line, line
    assert plan(two_cores(parallel=8), budget_s=300, train_chars=100_000, val_chars=11_000, vocab_size=65,
                search="always").searching
    # a prior as fast as the others holds its slot a third of the window, not most of it: more compared
    fast = two_cores()
    fast.rates["gru 2x128"] = 50_000
    assert plan(fast, budget_s=300, train_chars=1_000_000, val_chars=110_000, vocab_size=65).compared > two.compared


def test_dropout_follows_the_pressure_to_memorise_the_train_split():
    """Passes over the train split times all parameters per train character: an English corpus of 1 M
    characters is read ~10 times by a 182 k-parameter prior (pressure ~2: no dropout); the same corpus at
    a tenth of its size, or with thousands of distinct characters whose rows the model also fits, is
    memorised without it."""
    cal = Calibration("cpu", 2, 1, rates={"gru 2x128": 40_000}, params={"gru 2x128": 173_952}, seconds=10.0)

    def planned(train_chars, vocab_size):
        p = plan(cal, budget_s=300, train_chars=train_chars, val_chars=train_chars // 9, vocab_size=vocab_size)
        sweep = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=300), p)
        return p, sweep.points_to_evaluate[0]["dropout"], sweep.space["dropout"].values

    p, dropout, space = planned(1_000_000, 65)
    passes, pressure = autosize.pressure(p)
    assert passes == pytest.approx(40_000 * (300 - 10 - autosize.FIXED_COST_S) / 1_000_000)
    assert pressure == pytest.approx(passes * 182_337 / 1_000_000)  # GRU core + output layer (one-hot input)
    assert pressure < autosize.FREE_PRESSURE and dropout == 0.0 and space == [0.0, 0.1]
    # the vocabulary's rows count: 4,000 distinct characters add a trained embedding and an adaptive softmax
    p, cjk, space = planned(1_000_000, 4_000)
    assert autosize.pressure(p)[1] > 2 * autosize.FREE_PRESSURE and cjk == autosize.MAX_DROPOUT
    assert space == [cjk / 2, 2 * cjk]  # searched around the prior's: ASHA's short rungs favour the least
    # a tenth of the corpus: ten times the passes and ten times the parameters per character
    p, small, space = planned(100_000, 65)
    assert autosize.pressure(p)[1] == pytest.approx(100 * pressure, rel=0.01)
    assert small == autosize.MAX_DROPOUT and space == [small / 2, 2 * small]
    # between the threshold and twice it, dropout rises from 0.1 with the pressure's logarithm
    p, some, _ = planned(800_000, 65)
    p2, more, _ = planned(700_000, 65)
    assert autosize.FREE_PRESSURE < autosize.pressure(p)[1] < autosize.pressure(p2)[1] < 2 * autosize.FREE_PRESSURE
    assert 0.1 <= some < more < autosize.MAX_DROPOUT
    # a dropout the user fixed is neither searched nor in the first point
    fixed = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=300, train={"dropout": 0.0}), p)
    assert "dropout" not in fixed.space and "dropout" not in fixed.points_to_evaluate[0]


def test_where_the_prior_reads_its_split_few_times_it_steps_on_more_characters():
    """A CPU prior that would pass over its train split fewer than FRESH_PASSES times (every character nearly
    fresh), in MIN_FRESH_STEPS or more of the larger step, steps on FRESH_STEP; one that reads it more often, or
    would take too few such steps, keeps STEPS' 2,048 characters and PRIOR_LR."""
    cal = Calibration("cpu", 2, 1, rates={"gru 2x128": 40_000}, params={"gru 2x128": 173_952}, seconds=10.0)

    def planned(train_chars, budget_s=1800, train=None, gpus=0, search="always"):
        c = Calibration("cuda", 2, 1, rates=cal.rates, params=cal.params, seconds=10.0, gpus=1, per_gpu=2) if gpus \
            else cal
        p = plan(c, budget_s=budget_s, train_chars=train_chars, val_chars=train_chars // 9, vocab_size=65,
                 search=search)
        sweep = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=budget_s, train=train or {}),
                               p)
        return p, {**sweep.train, **sweep.points_to_evaluate[0]}  # what the first trial trains with

    def small(first):
        return (first["batch_size"], first["seq_length"], first["learning_rate"]) == (32, 64, autosize.PRIOR_LR)

    p, first = planned(1_000_000)  # ~70 passes
    assert autosize.pressure(p)[0] > autosize.FRESH_PASSES and small(first)
    searched = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=1800), p)
    assert "batch_size" in searched.space and "batch_size" not in searched.train  # the step is searched
    assert "fewer than" not in p.describe()
    # at either step every trial warms up (WARMUP_ITERS)
    assert autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=1800),
                          p).train["warmup_iters"] == autosize.WARMUP_ITERS
    assert "# every trial warms up over 100 iterations" in p.describe()
    p, first = planned(25_000_000)  # ~2.8 passes in ~8,600 steps of 8,192 characters
    assert autosize.pressure(p)[0] < autosize.FRESH_PASSES
    assert {k: first[k] for k in autosize.FRESH_STEP} == autosize.FRESH_STEP
    assert "so every trial takes batch_size 64, seq_length 128 (at learning_rate 0.0035)\n" in p.describe()
    sweep = autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=1800), p)
    # every trial takes the step and its rate, so the rungs compare configurations at one step and rate
    assert {k: sweep.train[k] for k in ("batch_size", "seq_length")} == {"batch_size": 64, "seq_length": 128}
    assert "batch_size" not in sweep.space and "seq_length" not in sweep.space
    assert "learning_rate" not in sweep.space and sweep.train["learning_rate"] == 0.0035 and "shape" in sweep.space
    assert sweep.train["warmup_iters"] == autosize.WARMUP_ITERS  # every trial, the prior's members too
    assert autosize.apply(SweepConfig(path="", name="a", corpus="c.txt", sweep_time=1800, train={"warmup_iters": 0}),
                          p).train["warmup_iters"] == 0  # a warmup the sweep file sets stands
    p.train_fixed = frozenset({"warmup_iters"})
    assert "every trial warms up" not in p.describe()
    # a short budget reads a 5 M corpus ~2 times, but in ~1,300 such steps: a short run learns per step
    p, first = planned(5_000_000, budget_s=300)
    assert autosize.pressure(p)[0] < autosize.FRESH_PASSES and small(first)
    # but in ~2,600 (10 minutes on a 10 M corpus, ~2 passes: where, warming up, it ended level over 2 seeds) it does
    p, first = planned(10_000_000, budget_s=600)
    steps = autosize.pressure(p)[0] * 10_000_000 / 8_192
    assert autosize.MIN_FRESH_STEPS < steps < 3_000 and first["batch_size"] * first["seq_length"] == 8_192, steps
    # without a search the prior trains in the larger step as well
    p, first = planned(25_000_000, search="never")
    assert not p.searching and first["batch_size"] * first["seq_length"] == 8_192
    # a step the user fixed stands; the rest of the rule still applies
    p, first = planned(25_000_000, train={"batch_size": 16})
    assert first["batch_size"] == 16 and first["seq_length"] == 128 and first["learning_rate"] == 0.0035
    p.train_fixed = frozenset({"batch_size"})  # as plan_for gives it
    assert ("every trial takes seq_length 128 (at learning_rate 0.0035; the sweep file sets the rest)"
            in p.describe())
    p.train_fixed = frozenset({"batch_size", "seq_length"})
    assert "so every trial takes learning_rate 0.0035 (the sweep file sets the rest)" in p.describe()
    p.train_fixed = frozenset(autosize.FRESH_STEP)  # the dry run still says what apply() sets: the warmup
    assert "fewer than" not in p.describe() and "every trial warms up over 100 iterations" in p.describe()
    # a GPU keeps its own prior step (STEPS["gpu"])
    p, first = planned(25_000_000, gpus=1)
    assert first["batch_size"] == autosize.STEPS["gpu"]["batch_size"][1] and first["learning_rate"] == autosize.PRIOR_LR


def test_the_dry_run_prints_a_pressure_beside_its_bound_with_the_digits_that_tell_them_apart():
    assert autosize.beside(235.31, autosize.FREE_PRESSURE) == "235"
    assert autosize.beside(3.0004, 3.0) == "3.0004" and autosize.beside(2.99996, 3.0) == "2.99996"
    assert autosize.beside(3.0, 3.0) == "3"
    # a plan whose pressure lies just above the bound says so, with dropout
    cal = Calibration("cpu", 2, 1, rates={"gru 2x128": 40_000}, params={"gru 2x128": 173_952}, seconds=10.0)
    base = plan(cal, budget_s=300, train_chars=1_000_000, val_chars=111_111, vocab_size=65)
    chars = round(1_000_000 * (autosize.pressure(base)[1] / autosize.FREE_PRESSURE) ** 0.5 / 1.0001)
    p = plan(cal, budget_s=300, train_chars=chars, val_chars=chars // 9, vocab_size=65)
    press = autosize.pressure(p)[1]
    assert autosize.FREE_PRESSURE < press < 1.001 * autosize.FREE_PRESSURE and autosize.prior_dropout(p) == 0.1
    line = next(ln for ln in p.describe().splitlines() if "per train character" in ln)
    shown = float(re.search(r"per train character: ([0-9.]+) \(above", line)[1])
    assert shown > autosize.FREE_PRESSURE and line.endswith("dropout 0.1"), line


@pytest.mark.parametrize("text, seconds", [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400), (" 2M ", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("argv, match", [
    (["sweep", "--data", "c.txt", "--time", "ten"], "--time 'ten': expected seconds or a number with s, m or h"),
    (["sweep", "--data", "c.txt", "--time=-5m"], "must be a positive duration"),
    (["sweep", "--data", "c.txt", "--time", "nanm"], "must be a positive duration"),
    (["sweep", "--data", "c.txt"], "--data CORPUS --time DURATION"),
    (["sweep"], "give a sweep file"),
    (["sweep", "--data", "missing.txt", "--time", "5m"], "missing.txt"),
    (["sweep", "s.yaml", "--data", "c.txt"], "--data goes with no sweep file"),
    (["sweep", "--data", "c.txt", "--time", "5m", "--search", "sometimes"],
     "--search 'sometimes': expected one of auto, always, never"),
    (["sweep", "fixed.yaml", "--search", "never"], "a sweep file's search is its own"),
])
def test_bad_auto_sweep_requests(capsys, workdir, argv, match):
    (workdir / "c.txt").write_text(make_text(20_000))
    (workdir / "s.yaml").write_text("name: s\ndata: {corpus: c.txt}\nsearch_space: auto\nbudget: {sweep_time: 60}\n")
    (workdir / "fixed.yaml").write_text("name: f\ndata: {corpus: c.txt}\nsearch_space: {dropout: {float: [0, 0.3]}}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("text, match", [
    ("search_space: auto\n", "budget.sweep_time: required with search_space: auto"),
    ("search_space:\n  shape: {choice: ['lstm 2x']}\n", "must read MODEL LAYERSxSIZE"),
    ("search_space:\n  shape: {int: [1, 2]}\n", "must be {choice:"),
    ("train: {rnn_size: 64}\nsearch_space:\n  shape: {choice: ['lstm 2x32']}\n", "also fixed in train: (rnn_size)"),
])
def test_bad_auto_and_shape_entries_in_sweep_files(capsys, workdir, text, match):
    (workdir / "c.txt").write_text(make_text(20_000))
    (workdir / "s.yaml").write_text("name: s\ndata: {corpus: c.txt}\n" + text)
    assert main(["sweep", "s.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_dry_run_measures_this_machine_and_prints_an_editable_sweep_file(capsys, workdir, shakespeare_slice):
    assert main(["sweep", "--data", str(shakespeare_slice), "--time", "90", "--search", "always", "--dry-run"]) == 0
    out = capsys.readouterr().out
    resolved, comments = out.split("# calibration:", 1)
    comments = "# calibration:" + comments
    m = re.search(r"(\d+) shapes measured in (\d+) s on cpu, (\d+) trial\(s\) at once", comments)
    assert m and int(m[1]) >= 1 and int(m[3]) >= 1  # (its cost is measured in benchmarks/bench_search.py)
    kept = re.findall(r"#\s+(\w+ \d+x\d+)\s+([\d,]+) params\s+([\d,]+) chars/s\s+kept", comments)
    assert kept
    f = workdir / "resolved.yaml"
    f.write_text(resolved)
    sweep = load_sweep(f)  # the printed sweep is a file one can edit and run
    assert sorted(sweep.space["shape"].values) == sorted(k[0] for k in kept)
    assert sweep.sweep_time == 90 and 0 < sweep.finish_time < 90 and sweep.grace_epochs < sweep.trial_max_epochs
    assert not any(math.isnan(v) for v in (sweep.grace_epochs, sweep.report_every_epochs))



def test_an_auto_sweep_is_named_after_its_corpus(tmp_path, monkeypatch):
    (tmp_path / "pysrc").mkdir()
    (tmp_path / "pysrc" / "input.txt").write_text("def f():\n    return 1\n" * 100)
    (tmp_path / "pysrc" / "notes.txt").write_text("a note\n" * 100)
    monkeypatch.chdir(tmp_path / "pysrc")
    assert autosize.default_sweep("input.txt", 60).name == "auto-pysrc"  # a relative path, too
    assert autosize.default_sweep("notes.txt", 60).name == "auto-notes"


def test_a_large_vocabulary_is_sized_by_the_recurrent_core(tmp_path):
    """3,000 distinct characters: a shape's parameter count is its recurrent core's (the same as over 65
    characters), not its embedding and output layer's, and it is measured as the trials build it (an
    adaptive softmax over so many characters)."""
    import random

    from charsearch.core.model import core_params
    from charsearch.search.calibrate import calibrate_cpu
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    corpus = tmp_path / "cjk.txt"
    corpus.write_text("".join(rng.choices(chars, [1 / (i + 1) for i in range(3000)], k=60_000)) + "".join(chars),
                      encoding="utf-8")
    families = {("lstm", 2): (32, 64), ("gru", 2): (64,)}
    cal = calibrate_cpu(3000, budget_s=1200, cpus=1, max_params=1e7, families=families, fraction=0.05)
    for name, params in cal.params.items():
        model, shape = name.split()
        layers, size = map(int, shape.split("x"))
        core = core_params({"vocab_size": 3000, "model": model, "rnn_size": size, "num_layers": layers,
                            "embed_size": 0})
        assert params == core == core_params({"vocab_size": 65, "model": model, "rnn_size": size,
                                              "num_layers": layers, "embed_size": 0}), name
    # a whole-model count would put the 2x32 LSTM (252 k in all) above the 2x64's core (66 k)
    assert cal.params["lstm 2x32"] < 20_000 < cal.params["lstm 2x64"] < 100_000
    sweep, p = autosize.auto_sweep(SweepConfig(path="", name="cjk", corpus=str(corpus)), 120, cpus=1, calibration=cal)
    assert p.shapes and all(s in cal.rates for s in p.shapes)
    # each of these characters carries several times an English one's information: fewer per parameter
    assert p.nats_per_char > 2 * autosize.REFERENCE_NATS and p.per_param < 0.5


def test_characters_per_parameter_follow_the_information_a_character_carries(tmp_path, shakespeare):
    """lzma's measure of the train split: English prose near the reference, text over thousands of
    characters several times it, a repetitive text a fraction; the sizing's characters-per-parameter
    constants scale inversely."""
    import random

    from charsearch.core.data import compressed_nats, load_corpus

    def nats(text):
        (tmp_path / "c.txt").write_text(text, encoding="utf-8")
        return compressed_nats(load_corpus(tmp_path / "c.txt"), 0.9, 0.1)

    assert 0.85 < nats(shakespeare.read_text(encoding="utf-8")[:250_000]) / autosize.REFERENCE_NATS < 1.15
    rng = random.Random(0)
    cjk = "".join(rng.choices([chr(0x4E00 + i) for i in range(3000)], [1 / (i + 1) for i in range(3000)], k=100_000))
    assert nats(cjk) > 2.5 * autosize.REFERENCE_NATS
    assert nats("the same licence clause again. " * 5_000) < 0.1 * autosize.REFERENCE_NATS
    # a large corpus is read across its train split, not at its start: a repetitive preface of 300,000
    # characters before 1.5 M of random letters (~3.26 nats/char) counts for a part, not for all
    letters = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=1_500_000))
    assert 2.0 < nats("the same licence clause again. " * 10_000 + letters) < 3.26
    # one shape at 15 characters per parameter in the budget: below the band for English prose, inside it
    # for a corpus whose characters carry three times as much; a shape at 300 leaves the band there
    usable = 600 - 10 - autosize.FIXED_COST_S
    params = {"gru 2x128": 174_000, "lstm 1x64": 33_000}
    rates = {"gru 2x128": round(15 * 174_000 / usable), "lstm 1x64": round(300 * 33_000 / usable)}
    cal = Calibration("cpu", 2, 1, rates=rates, params=params, seconds=10.0)

    def planned(nats_per_char):
        return plan(cal, budget_s=600, train_chars=1_000_000, val_chars=110_000, vocab_size=4_000,
                    nats_per_char=nats_per_char)
    assert planned(autosize.REFERENCE_NATS).shapes == ["lstm 1x64"] and planned(6.0).shapes == ["gru 2x128"]
    assert planned(6.0).per_param == pytest.approx(1 / 3)
    # below English prose's information the constants stand (measured there; scaled up, they kept shapes so
    # fast that ASHA's longest rung let two trials run)
    assert planned(1.0).per_param == 1.0 and planned(1.0).shapes == ["lstm 1x64"]


def test_an_input_or_output_layer_the_sweep_fixes_is_what_the_sizing_measures(tmp_path):
    """A sweep that fixes embed_size or softmax trains shapes with that input and output layer: they are
    calibrated as such (a full softmax over thousands of characters costs several times an adaptive one),
    counted by their core with that input, and their memorising pressure counts that output layer."""
    import random

    from charsearch.core.model import core_params, param_count
    from charsearch.search.calibrate import candidate
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    corpus = tmp_path / "cjk.txt"
    corpus.write_text("".join(rng.choices(chars, [1 / (i + 1) for i in range(3000)], k=60_000)) + "".join(chars),
                      encoding="utf-8")
    fixed = {"embed_size": 16, "softmax": "full"}
    assert not candidate(3000, "lstm", 2, 64, fixed).adaptive and candidate(3000, "lstm", 2, 64).adaptive
    sweep = SweepConfig(path="", name="cjk", corpus=str(corpus), train=dict(fixed))
    sweep, p = autosize.auto_sweep(sweep, 120, cpus=1)
    assert p.fixed == fixed and sweep.train["softmax"] == "full" and sweep.train["embed_size"] == 16
    for name, params in p.calibration.params.items():
        model, shape = name.split()
        layers, size = map(int, shape.split("x"))
        assert params == core_params(candidate(3000, model, layers, size, fixed).config), name
    assert p.calibration.params["lstm 2x32"] < core_params(candidate(3000, "lstm", 2, 32).config)
    # the pressure counts the output layer the trials will have
    cal = Calibration("cpu", 2, 1, rates={"gru 2x128": 40_000}, params={"gru 2x128": 173_952}, seconds=10.0)
    own = plan(cal, budget_s=300, train_chars=1_000_000, val_chars=100_000, vocab_size=4000)
    full = plan(cal, budget_s=300, train_chars=1_000_000, val_chars=100_000, vocab_size=4000, fixed={"softmax": "full"})
    ratio = param_count(candidate(4000, "gru", 2, 128, {"softmax": "full"}).config) / \
        param_count(candidate(4000, "gru", 2, 128).config)
    assert ratio > 1.3 and autosize.pressure(full)[1] == pytest.approx(ratio * autosize.pressure(own)[1])


def hostile(change):
    def write(path):
        d = calibration().to_dict()
        change(d)
        path.write_text(json.dumps(d) if not isinstance(d, str) else d)
    return write


@pytest.mark.parametrize("write, match", [
    (hostile(lambda d: d["rates"].update({"lstm 2x128": 1.7976931348623157e308})), r"every value of rates must be"),
    (hostile(lambda d: d.update(seconds=-5)), r"seconds must be a number in \[0, "),
    (hostile(lambda d: d.update(seconds=float("inf"))), r"seconds must be a number"),
    (hostile(lambda d: d.update(seconds=float("nan"))), r"seconds must be a number"),
    (hostile(lambda d: d.update(seconds="ten")), r"seconds must be a number in .*; got 'ten'"),
    (hostile(lambda d: d.update(packing={"abc": 1.0})), r"packing's keys must be trial counts 1 to 64; got 'abc'"),
    (hostile(lambda d: d.update(packing={"1.5": 1.0})), r"packing's keys must be trial counts"),
    (hostile(lambda d: d.update(rates=[1, 2])), r"rates must be a mapping"),
    (hostile(lambda d: d.update(gpu_memory=-1)), r"gpu_memory must be a whole number in \[0, "),
    (hostile(lambda d: (d["rates"].update({"rnn 99999999x1": 5.0}), d["params"].update({"rnn 99999999x1": 5}))),
     r"layers must be 1 to 64"),
    (hostile(lambda d: d.update(parallel=1_000_000, cpu_per_trial=0.0001)), r"parallel must be a whole number in"),
    (hostile(lambda d: d.update(cpu_per_trial=0.0001)), r"cpu_per_trial must be a number in \[1, 1024\]"),
    (lambda path: path.write_text("[" * 100_000 + "]" * 100_000), r"not a calibration file \(not JSON"),
    (lambda path: path.write_text('{"device": "cpu"'), r"not a calibration file \(not JSON"),
])
def test_a_damaged_or_hostile_calibration_file_is_one_line_before_anything_is_sized(tmp_path, capsys, write, match):
    import resource
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(50_000))
    write(tmp_path / "cal.json")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = one_line_error(capsys, "sweep", "--data", corpus, "--time", "5m", "--calibration", tmp_path / "cal.json",
                          "--dry-run", match=match)
    assert "leave --calibration out" in line or "not a calibration file" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_calibration_written_by_to_dict_reads_back(tmp_path):
    (tmp_path / "cal.json").write_text(json.dumps(calibration().to_dict()))
    assert Calibration.from_file(tmp_path / "cal.json") == calibration()
