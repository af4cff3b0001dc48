import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charsearch.core import artifact
from charsearch.core import train as train_mod
from charsearch.core.config import ConfigError, TrainConfig
from charsearch.core.data import load_corpus
from charsearch.core.errors import UsageError
from charsearch.core.model import CharRNN
from charsearch.core.train import Diverged, Evaluator, forward_scheduled_sampling, learning_rate, train


def cfg_for(corpus, tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(corpus), rnn_size=32, num_layers=1, batch_size=8, seq_length=16, max_epochs=1.0,
                eval_every=50, print_every=10, checkpoint_dir=str(tmp_path / "cv"), learning_rate=5e-3, seed=1)
    base.update(kw)
    return TrainConfig(**base)


# --- fair validation --------------------------------------------------------------------------

def test_evaluator_scores_every_character_once_with_state_carried():
    torch.manual_seed(0)
    model = CharRNN(11, "lstm", 16, 2).eval()
    ids = np.random.default_rng(0).integers(0, 11, 1001).astype(np.uint8)
    data = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():  # reference: each of the 16 segments read in one pass from a zero state
        n = 1000
        seg = -(-n // 16)
        total = 0.0
        for k in range(16):
            x, y = data[k * seg:min((k + 1) * seg, n)], data[k * seg + 1:min((k + 1) * seg, n) + 1]
            logits, _ = model(x[None])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
    assert Evaluator(ids, torch.device("cpu"))(model) == pytest.approx(total / n, rel=1e-6)
    # one stream: the plain full pass over the split
    with torch.no_grad():
        logits, _ = model(data[:-1][None])
        single = F.cross_entropy(logits[0], data[1:]).item()
    assert Evaluator(ids, torch.device("cpu"), streams=1)(model) == pytest.approx(single, rel=1e-6)


def test_a_limited_evaluation_scores_the_start_of_every_stream():
    """eval_chars: each of the 16 streams (spread evenly over the split) is read from its start only, so
    the sample covers the whole split; the loss is the mean over exactly those characters."""
    torch.manual_seed(0)
    model = CharRNN(11, "gru", 16, 2).eval()
    ids = np.random.default_rng(0).integers(0, 11, 16_001).astype(np.uint8)
    full = Evaluator(ids, torch.device("cpu"))
    per_stream = -full.target_log_probs(model).view(16, -1)  # 16 streams of 1,000 predictions
    for limit in (160, 1_000, 4_001):
        sample = Evaluator(ids, torch.device("cpu"), limit=limit)
        m = -(-limit // 16)
        assert sample.n == 16 * m
        assert sample(model) == pytest.approx(per_stream[:, :m].mean().item(), rel=1e-6)
    assert Evaluator(ids, torch.device("cpu"), limit=10**9)(model) == pytest.approx(full(model), rel=1e-9)


def test_evaluation_does_not_depend_on_chunk_length(monkeypatch):
    torch.manual_seed(0)
    model = CharRNN(9, "gru", 12, 2, dropout=0.5)
    ids = np.random.default_rng(1).integers(0, 9, 3000).astype(np.uint8)
    ev = Evaluator(ids, torch.device("cpu"))
    a = ev(model)
    monkeypatch.setattr(train_mod, "VAL_CHUNK", 7)
    assert ev(model) == pytest.approx(a, rel=1e-6)
    assert model.training  # evaluation restores training mode


def test_a_wide_vocabulary_is_scored_in_chunks_its_scores_fit_and_the_loss_is_the_same(monkeypatch):
    """200,000 distinct characters: a full chunk would hold 16 streams x 512 x 200,000 scores (6.5 GB); the
    chunk shrinks so they fit EVAL_BYTES, what the admission check counts for an evaluation."""
    from charsearch.core.devices import EVAL_BYTES, training_size
    ids = np.random.default_rng(0).integers(0, 200_000, 5000).astype(np.uint32)
    ev = Evaluator(ids, torch.device("cpu"))
    wide = CharRNN(200_000, "lstm", 32, 1)
    assert ev.chunk_length(wide) * 12 * 16 * 200_000 <= EVAL_BYTES
    assert ev.chunk_length(CharRNN(65, "lstm", 8, 1)) == train_mod.VAL_CHUNK
    cfg = TrainConfig(model="lstm", rnn_size=32, batch_size=4, seq_length=32)
    assert training_size(cfg, 200_000)[1] >= EVAL_BYTES
    torch.manual_seed(0)
    model = CharRNN(300, "gru", 32, 1, cutoffs=[20, 100])
    small = np.random.default_rng(1).integers(0, 300, 3000).astype(np.uint16)
    ev = Evaluator(small, torch.device("cpu"))
    a = ev(model)
    monkeypatch.setattr(train_mod, "EVAL_BYTES", 12 * 16 * 200 * 3)  # three characters a chunk
    assert ev.chunk_length(model) == 3 and ev(model) == pytest.approx(a, rel=1e-6)


def test_recorded_val_loss_is_reproduced_from_the_exported_file(small_corpus, tmp_path):
    r = train(cfg_for(small_corpus, tmp_path, batch_size=4, seq_length=40), progress=False)
    mf = artifact.export(r.best_checkpoint, tmp_path / "m.pt")
    from charsearch.core.data import load_corpus
    _, val, _ = load_corpus(small_corpus).split(0.9, 0.1)
    assert Evaluator(val, torch.device("cpu"))(mf.build()) == pytest.approx(r.best_val_loss, rel=1e-6)


# --- the training loop ------------------------------------------------------------------------

def test_training_learns_and_keeps_best_and_latest_checkpoints(small_corpus, tmp_path):
    seen = []
    r = train(cfg_for(small_corpus, tmp_path, max_epochs=2.0, eval_every=40),
              on_eval=lambda m, path, best: seen.append((m, path, best)), progress=False)
    vals = [m["val_loss"] for m, _, _ in seen]
    assert vals[-1] < vals[0] < math.log(20)  # below a uniform guess over the vocabulary
    assert r.best_val_loss == min(vals)
    files = sorted(p.name for p in (tmp_path / "cv").iterdir())
    assert len(files) <= 2 and r.best_checkpoint.name in files and r.latest_checkpoint.name in files
    m = re.fullmatch(r"lm_lstm_epoch(\d+\.\d\d)_(\d\.\d{4})\.pt", r.best_checkpoint.name)
    assert m and float(m.group(2)) == pytest.approx(r.best_val_loss, abs=1e-4)
    assert [x[0]["chars_trained"] for x in seen] == [m_["iteration"] * 8 * 16 for m_, _, _ in seen]


REGULARIZED = {"tie_weights": True, "embed_dropout": 0.1, "input_dropout": 0.2, "weight_drop": 0.3}


@pytest.mark.parametrize("extra", [{}, REGULARIZED], ids=["plain", "regularized"])
def test_resume_continues_exactly(small_corpus, tmp_path, extra):
    # on threads fixed (thread_rates=None): how many there are changes the last bits of the arithmetic
    base = dict(max_epochs=1.0, eval_every=30, dropout=0.3, num_layers=2, **extra)
    full = train(cfg_for(small_corpus, tmp_path / "a", **base), progress=False, thread_rates=None)
    first = train(cfg_for(small_corpus, tmp_path / "b", **base), on_eval=lambda m, p, b: m["iteration"] >= 60,
                  progress=False, thread_rates=None)
    assert first.iterations == 60 and first.stop_reason == "stopped"
    resumed = train(cfg_for(small_corpus, tmp_path / "c", **base, init_from=str(first.latest_checkpoint)),
                    progress=False, thread_rates=None)
    assert resumed.iterations == full.iterations
    a = artifact.load(full.latest_checkpoint).state_dict
    b = artifact.load(resumed.latest_checkpoint).state_dict
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]


def test_a_run_resumed_at_its_end_reports_its_last_evaluation_again_and_trains_no_more(small_corpus, tmp_path):
    # a sweep killed as a trial ended restores that trial at its end; the sweep may never have heard of it
    done = train(cfg_for(small_corpus, tmp_path / "a", max_epochs=0.2), progress=False)
    seen = []
    again = train(cfg_for(small_corpus, tmp_path / "b", max_epochs=0.2, init_from=str(done.latest_checkpoint)),
                  on_eval=lambda m, p, b: seen.append((m, p, b)), progress=False)
    assert [m for m, _, _ in seen] == [done.history[-1]] and seen[0][0]["final"]
    assert seen[0][1:] == (done.latest_checkpoint, False)
    assert again.iterations == done.iterations and again.best_val_loss == done.best_val_loss
    assert again.latest_checkpoint is None  # nothing trained, nothing written
    # with more epochs asked for, it trains on as before
    more = train(cfg_for(small_corpus, tmp_path / "c", max_epochs=0.4, init_from=str(done.latest_checkpoint)),
                 on_eval=lambda m, p, b: seen.append((m, p, b)), progress=False)
    assert more.iterations > done.iterations and seen[1][0]["iteration"] > done.iterations


def test_a_cpu_run_trains_on_the_faster_of_all_threads_and_one_and_says_so(small_corpus, tmp_path, monkeypatch):
    """Other work on the machine, played by the rates its timings return (the steps they time train as any
    others): the run starts on one thread, says so with its first evaluation and keeps it while two stay slower;
    on a quiet machine it keeps both; a window slower than one thread drops it to one; with its threads fixed it
    times nothing. Whatever it chose, the caller's threads are as they were."""
    machine = {2: 40.0, 1: 90.0}  # chars/s of the run's steps, by torch's threads now
    timings = []
    timed_steps = train_mod.Run.timed_steps

    def timed(run, seconds):
        before = run.iteration
        real = timed_steps(run, seconds)
        timings.append((torch.get_num_threads(), run.iteration - before))
        return real if math.isnan(real) else machine[torch.get_num_threads()]
    monkeypatch.setattr(train_mod.Run, "timed_steps", timed)
    monkeypatch.setattr(train_mod, "MIN_WINDOW_S", 0.0)  # a window at every evaluation
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def run(folder, thread_rates=(None, None)):
            seen = []
            r = train(cfg_for(small_corpus, tmp_path / folder, eval_every=20), progress=False,
                      on_eval=lambda m, p, b: seen.append(m), thread_rates=thread_rates)
            assert torch.get_num_threads() == 2 and r.iterations == seen[-1]["iteration"]
            # the timed steps trained: every evaluation is where its interval puts it
            assert [m["iteration"] for m in seen[:-1]] == [20 * (i + 1) for i in range(len(seen) - 1)]
            return seen

        busy = run("busy")
        assert busy[0]["note"].startswith("2 threads made 40 chars/s, one thread 90: training with one thread")
        assert all("note" not in m for m in busy[1:]) and {m["threads"] for m in busy} == {1}
        # timed at the start, then again after 2 and 4 more windows, each time on both settings, some steps each
        assert len(timings) >= 6 and all(steps >= 2 for _, steps in timings[:2])

        machine[2] = 150.0
        quiet = run("quiet")  # the windows' own rates (thousands of chars/s) are above what one thread made
        assert {m["threads"] for m in quiet} == {2} and all("note" not in m for m in quiet)

        machine.update({2: 2e9, 1: 1e9})  # both time faster than any window makes: two are kept, then dropped
        dropped = run("dropped")
        threads = [m["threads"] for m in dropped]
        assert threads[0] == 2 and 1 in threads, threads
        first_one = threads.index(1)
        assert "less than one thread (1,000,000,000)" in dropped[first_one]["note"]

        del timings[:]
        fixed = run("fixed", thread_rates=None)
        assert timings == [] and all("threads" not in m for m in fixed)
    finally:
        torch.set_num_threads(before)


def test_each_regularizer_trains_and_changes_the_run_and_tied_weights_need_a_full_softmax(small_corpus, tmp_path):
    plain = train(cfg_for(small_corpus, tmp_path / "p", max_epochs=0.3), progress=False)
    for name, value in REGULARIZED.items():
        r = train(cfg_for(small_corpus, tmp_path / name, max_epochs=0.3, **{name: value}), progress=False)
        assert math.isfinite(r.best_val_loss) and r.best_val_loss != plain.best_val_loss, name
    with pytest.raises(ConfigError, match="tie_weights: needs a full softmax"):
        cfg_for(small_corpus, tmp_path, tie_weights=True, softmax="adaptive").validate()
    with pytest.raises(ConfigError, match="weight_drop: must be in \\[0, 1\\)"):
        cfg_for(small_corpus, tmp_path, weight_drop=1.0).validate()


def test_resuming_in_the_same_folder_still_keeps_only_the_best_and_the_latest(small_corpus, tmp_path):
    first = train(cfg_for(small_corpus, tmp_path, max_epochs=1.0, eval_every=30),
                  on_eval=lambda m, p, b: m["iteration"] >= 60, progress=False)
    resumed = train(cfg_for(small_corpus, tmp_path, max_epochs=1.0, eval_every=30,
                            init_from=str(first.latest_checkpoint)), progress=False)
    assert resumed.iterations > 90
    left = set((tmp_path / "cv").iterdir())
    assert left == {resumed.best_checkpoint, resumed.latest_checkpoint}


def test_init_from_rejects_a_model_file_and_another_vocabulary(small_corpus, tmp_path):
    r = train(cfg_for(small_corpus, tmp_path, max_epochs=0.2), progress=False)
    artifact.export(r.best_checkpoint, tmp_path / "m.pt")
    with pytest.raises(UsageError, match="a model file, not a training checkpoint"):
        train(cfg_for(small_corpus, tmp_path, init_from=str(tmp_path / "m.pt")), progress=False)
    other = tmp_path / "other.txt"
    other.write_text("0123456789 " * 2000)
    with pytest.raises(UsageError, match="vocabulary .* differs"):
        train(cfg_for(other, tmp_path, init_from=str(r.best_checkpoint)), progress=False)


def test_divergence_stops_with_a_clear_message(small_corpus, tmp_path):
    with pytest.raises(Diverged, match="diverged .*lower --learning-rate"):
        train(cfg_for(small_corpus, tmp_path, learning_rate=50.0, grad_clip=0, optimizer="rmsprop", print_every=1),
              progress=False)


def test_budget_and_patience_stop_the_run(small_corpus, tmp_path, monkeypatch):
    r = train(cfg_for(small_corpus, tmp_path, max_time=1e-9, max_epochs=50), progress=False)
    assert r.stop_reason == "max_time" and r.iterations == 1 and r.best_checkpoint.is_file()
    monkeypatch.setattr(Evaluator, "__call__", lambda self, model: 2.0)  # val never improves after the first
    r = train(cfg_for(small_corpus, tmp_path, patience=2, eval_every=5, max_epochs=50), progress=False)
    assert r.stop_reason == "patience" and len(r.history) == 3


def test_a_run_given_seconds_between_evaluations_evaluates_when_they_pass_whatever_its_iterations(small_corpus,
                                                                                                   tmp_path):
    cfg = cfg_for(small_corpus, tmp_path, max_epochs=0.05, eval_every=10_000)
    plain = train(cfg, progress=False)
    assert [h["iteration"] for h in plain.history] == [plain.iterations]  # only the last iteration's
    assert [h["iteration"] for h in train(cfg, progress=False, eval_every_s=1e9).history] == [plain.iterations]
    overdue = train(cfg, progress=False, eval_every_s=0.0)  # always overdue: after every iteration
    assert [h["iteration"] for h in overdue.history] == list(range(1, plain.iterations + 1))
    assert plain.iterations >= 5


def test_too_short_corpus_fails_before_writing_anything(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("abcdefghij" * 12)
    with pytest.raises(UsageError, match="train split has 108 characters"):
        train(cfg_for(p, tmp_path), progress=False)
    assert not (tmp_path / "cv").exists()


# --- schedules --------------------------------------------------------------------------------

def test_step_schedule_decays_after_the_given_epoch():
    cfg = TrainConfig(learning_rate=1.0, learning_rate_decay=0.5, learning_rate_decay_after=2)
    lrs = [learning_rate(cfg, it, 10, 100) for it in (0, 19, 20, 29, 30, 45)]
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


@pytest.mark.parametrize("after", [0, 1])
def test_step_schedule_never_decays_during_the_first_epoch(after):
    """char-rnn decays at the end of an epoch whose number is >= decay_after: the first time after epoch 1."""
    cfg = TrainConfig(learning_rate=1.0, learning_rate_decay=0.5, learning_rate_decay_after=after)
    assert [learning_rate(cfg, it, 10, 100) for it in (0, 9, 10, 20)] == [1.0, 1.0, 0.5, 0.25]


def test_cosine_schedule_ends_at_a_tenth():
    cfg = TrainConfig(learning_rate=1.0, lr_schedule="cosine")
    assert learning_rate(cfg, 0, 10, 100) == 1.0
    assert learning_rate(cfg, 50, 10, 100) == pytest.approx(0.55)
    assert learning_rate(cfg, 100, 10, 100) == pytest.approx(0.1)


def test_wsd_schedule_holds_then_decays_linearly_to_zero():
    cfg = TrainConfig(learning_rate=1.0, lr_schedule="wsd", decay_frac=0.2)
    assert [learning_rate(cfg, it, 10, 100) for it in (0, 50, 80, 90, 100)] == pytest.approx([1, 1, 1, 0.5, 0])


def test_warmup_raises_any_schedules_rate_linearly_over_its_first_iterations():
    for schedule in ("wsd", "cosine", "step", "constant"):
        plain = TrainConfig(learning_rate=1.0, lr_schedule=schedule, decay_frac=0.2)
        warm = replace(plain, warmup_iters=4)
        rates = [learning_rate(warm, it, 10, 100) for it in range(100)]
        assert rates[:4] == pytest.approx([learning_rate(plain, it, 10, 100) * (it + 1) / 4 for it in range(4)])
        assert rates[0] == pytest.approx(0.25)
        assert rates[4:] == [learning_rate(plain, it, 10, 100) for it in range(4, 100)]  # the schedule after it
    assert TrainConfig().warmup_iters == 0  # off unless asked: a run's rates are the schedule's


def test_schedules_end_annealed_when_the_clock_runs_out_before_the_epochs():
    """Under --max-time the run's progress is the further of iterations and wall time."""
    wsd = TrainConfig(learning_rate=1.0, lr_schedule="wsd", decay_frac=1.0, max_time=60)
    assert learning_rate(wsd, 10, 10, 1000, elapsed=30) == pytest.approx(0.5)  # time is further than iterations
    assert learning_rate(wsd, 900, 10, 1000, elapsed=30) == pytest.approx(0.1)  # iterations are further
    assert learning_rate(wsd, 10, 10, 1000, elapsed=75) == 0.0
    cosine = TrainConfig(learning_rate=1.0, lr_schedule="cosine", max_time=60)
    assert learning_rate(cosine, 1, 10, 10**6, elapsed=60) == pytest.approx(0.1)
    assert learning_rate(TrainConfig(learning_rate=1.0), 1, 10, 10**6, elapsed=60) == 1.0  # step: by epochs only


def test_a_timed_wsd_run_ends_with_its_rate_near_zero(tmp_path, small_corpus):
    cfg = cfg_for(small_corpus, tmp_path, lr_schedule="wsd", decay_frac=1.0, max_time=3.0, max_epochs=1000,
                  eval_every=20)
    result = train(cfg, progress=False)
    assert result.stop_reason == "max_time"
    rates = [h["learning_rate"] for h in result.history]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1 * cfg.learning_rate


# --- scheduled sampling -----------------------------------------------------------------------

def test_scheduled_sampling_with_probability_one_is_teacher_forcing():
    torch.manual_seed(0)
    model = CharRNN(13, "lstm", 16, 2)
    x = torch.randint(0, 13, (4, 9))
    y = torch.randint(0, 13, (4, 9))
    ref, _ = model(x)
    loss_ref = F.cross_entropy(ref.reshape(-1, 13), y.reshape(-1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads_ref = torch.autograd.grad(loss_ref, params)
    ss, _ = forward_scheduled_sampling(model, x, None, p_true=1.0)
    loss_ss = F.cross_entropy(ss.reshape(-1, 13), y.reshape(-1))
    grads_ss = torch.autograd.grad(loss_ss, params)
    torch.testing.assert_close(ss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_ref, grads_ss):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class Recorder(CharRNN):
    """A model whose prediction is always character 3 (a huge bias), recording the inputs it is fed."""

    def __init__(self):
        super().__init__(8, "gru", 8, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(-50.0)
            self.head.bias[3] = 50.0
        self.inputs = []

    def forward(self, x, state=None):
        self.inputs.append(x.clone())
        return super().forward(x, state)


@pytest.mark.parametrize("p_true, expected_true_share", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_scheduled_sampling_feeds_model_samples_with_the_given_probability(p_true, expected_true_share):
    torch.manual_seed(0)
    model = Recorder()
    x = torch.randint(4, 8, (400, 6))  # never character 3, so a fed sample is recognisable
    forward_scheduled_sampling(model, x, None, p_true)
    fed = torch.cat(model.inputs, dim=1)
    assert torch.equal(fed[:, 0], x[:, 0])  # the first input is always the true character
    later = fed[:, 1:]
    true_share = (later == x[:, 1:]).float().mean().item()
    assert true_share == pytest.approx(expected_true_share, abs=0.03)
    assert torch.all((later == x[:, 1:]) | (later == 3))  # anything else is the model's own sample


def test_scheduled_sampling_probability_decays_linearly_to_the_floor():
    cfg = TrainConfig(use_ss=True, start_ss=1.0, min_ss=0.9, decay_ss=0.01)
    assert [round(train_mod.ss_probability(cfg, i), 6) for i in (0, 5, 10, 50)] == [1.0, 0.95, 0.9, 0.9]


def test_training_with_scheduled_sampling_runs_and_reports_the_probability(small_corpus, tmp_path):
    seen = []
    train(cfg_for(small_corpus, tmp_path, use_ss=True, start_ss=1.0, min_ss=0.5, decay_ss=0.01, max_epochs=0.5),
          on_eval=lambda m, p, b: seen.append(m), progress=False)
    assert seen and seen[-1]["ss_prob"] < 1.0 and math.isfinite(seen[-1]["val_loss"])


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"), (dict(num_layers=0), "num_layers"),
    (dict(rnn_size=0), "rnn_size"), (dict(batch_size=-1), "batch_size"), (dict(seq_length=0), "seq_length"),
    (dict(train_frac=0.8, val_frac=0.3), "val_frac"), (dict(val_frac=0.0), "val_frac"),
    (dict(model="transformer"), "model"), (dict(device="tpu"), "device"), (dict(min_ss=0.9, start_ss=0.5), "min_ss"),
    (dict(learning_rate=float("nan")), "learning_rate"), (dict(eval_chars=-1), "eval_chars"),
])
def test_impossible_hyperparameters_are_refused(kw, field):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw).validate()
    assert e.value.field == field


def test_config_from_dict_checks_names_and_types():
    assert TrainConfig.from_dict({"rnn_size": 256, "dropout": 0}).dropout == 0.0
    with pytest.raises(ConfigError, match="did you mean 'rnn_size'"):
        TrainConfig.from_dict({"rnn_sise": 3})
    with pytest.raises(ConfigError, match="must be an integer"):
        TrainConfig.from_dict({"num_layers": 2.5})
    with pytest.raises(ConfigError, match="true or false"):
        TrainConfig.from_dict({"use_ss": "yes"})


def test_a_large_vocabulary_trains_with_the_adaptive_softmax_and_resumes_exactly(tmp_path):
    """1,200 distinct characters: `softmax: auto` is adaptive; the exported model scores the val split as
    recorded, and a resumed run continues exactly as an uninterrupted one."""
    import random
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(1200)]
    weights = [1 / (i + 1) for i in range(1200)]
    corpus = tmp_path / "cjk.txt"
    corpus.write_text("".join(rng.choices(chars, weights, k=40_000)) + "".join(chars), encoding="utf-8")
    base = dict(data=str(corpus), model="gru", rnn_size=32, num_layers=1, batch_size=8, seq_length=32,
                eval_every=40, seed=3)
    full = train(TrainConfig(**base, max_epochs=0.5, checkpoint_dir=str(tmp_path / "a")), progress=False,
                 thread_rates=None)
    mf = artifact.load(full.best_checkpoint)
    assert mf.config["cutoffs"] == [256] and mf.config["vocab_size"] == 1200
    ids = load_corpus(corpus).ids
    val = ids[int(0.9 * len(ids)):]
    assert Evaluator(val, torch.device("cpu"))(mf.build()) == pytest.approx(full.best_val_loss, abs=1e-5)
    half = train(TrainConfig(**base, max_epochs=0.5, checkpoint_dir=str(tmp_path / "b")),
                 on_eval=lambda m, p, b: m["iteration"] >= 40, progress=False, thread_rates=None)
    resumed = train(TrainConfig(**base, max_epochs=0.5, checkpoint_dir=str(tmp_path / "b"),
                                init_from=str(half.latest_checkpoint)), progress=False, thread_rates=None)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    forced = train(TrainConfig(**base, max_epochs=0.05, softmax="full", checkpoint_dir=str(tmp_path / "c")),
                   progress=False)
    assert artifact.load(forced.latest_checkpoint).config["cutoffs"] == []
