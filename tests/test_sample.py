import pytest
import torch

from charsearch.core.artifact import ModelFile
from charsearch.core.data import UNK, Vocab
from charsearch.core.errors import UsageError
from charsearch.core.model import CharRNN
from charsearch.core.sample import SampleOptions, Sampler


def sampler(chars="\nabcdefgh", unk=None, seed=0):
    torch.manual_seed(seed)
    m = CharRNN(len(chars), "lstm", 16, 2)
    with torch.no_grad():
        m.head.weight.mul_(20)  # a less uniform model, so argmax/top-k differ visibly from sampling
    return Sampler(ModelFile(dict(m.config), Vocab(tuple(chars), unk), m.state_dict()))


def test_same_seed_same_text_and_seeds_differ():
    s = sampler()
    a = s.generate(SampleOptions(length=200, seed=5))[0]
    assert a == s.generate(SampleOptions(length=200, seed=5))[0]
    assert a != s.generate(SampleOptions(length=200, seed=6))[0]
    assert len(a) == 200 and set(a) <= set("\nabcdefgh")


def test_prime_text_starts_the_sample_and_conditions_it():
    s = sampler()
    out = s.generate(SampleOptions(primetext="abc", length=50, seed=1))[0]
    assert out.startswith("abc") and len(out) == 53
    for prime in ("abc", "hhg\n", "ba"):  # the first new character is the prediction after the whole prime
        greedy = s.generate(SampleOptions(primetext=prime, length=1, argmax=True))[0]
        with torch.no_grad():
            logits, _ = s.model(torch.tensor([s.vocab.encode(prime)]))
        assert greedy == prime + s.vocab.chars[logits[0, -1].argmax().item()]


def test_argmax_is_deterministic_and_equals_top_k_one():
    s = sampler()
    a = s.generate(SampleOptions(primetext="a", length=40, argmax=True, seed=1))[0]
    assert a == s.generate(SampleOptions(primetext="a", length=40, argmax=True, seed=2))[0]
    assert a == s.generate(SampleOptions(primetext="a", length=40, top_k=1, seed=3))[0]


def test_low_temperature_approaches_argmax():
    s = sampler()
    greedy = s.generate(SampleOptions(primetext="a", length=30, argmax=True))[0]
    cold = s.generate(SampleOptions(primetext="a", length=30, temperature=1e-4))[0]
    assert cold == greedy
    for t in (1e-300, 5e-324):  # scaled logits would be infinite: the likeliest still wins, no NaN
        assert s.generate(SampleOptions(primetext="a", length=30, temperature=t))[0] == greedy


def test_top_k_restricts_each_step_to_the_k_likeliest():
    s = sampler()
    opts = SampleOptions(primetext="ab", length=60, top_k=2, seed=3)
    text = s.generate(opts)[0]
    ids = torch.tensor([s.vocab.encode(text)])
    with torch.no_grad():
        logits, _ = s.model(ids)
    top2 = torch.topk(logits[0, 1:-1], 2, dim=-1).indices  # prediction for each generated character
    for pos, allowed in zip(range(2, len(text)), top2):
        assert ids[0, pos].item() in allowed.tolist()


def test_batched_samples_and_stop_string():
    s = sampler()
    texts = s.generate(SampleOptions(length=300, num_samples=4, seed=2, stop="a"))
    assert len(texts) == 4
    for t in texts:
        assert t.endswith("a") and t.count("a") == 1  # each stops at its first stop string
    steps = list(s.stream(SampleOptions(length=300, num_samples=4, seed=2, stop="a")))
    assert len(steps) - 1 == max(len(t) for t in texts)  # streaming ended once every sample had stopped


def test_primetext_outside_the_vocabulary_is_named_or_mapped_to_unknown():
    with pytest.raises(UsageError, match=r"--primetext has characters .*'x', 'z'"):
        sampler().generate(SampleOptions(primetext="axbz"))
    s = sampler("\nab" + UNK, unk=3)
    out = s.generate(SampleOptions(primetext="axb", length=5))[0]
    assert out.startswith("axb")  # the prime is shown as typed, fed as the unknown symbol


@pytest.mark.parametrize("kw, match", [(dict(temperature=0), "--temperature must be > 0"),
                                       (dict(temperature=-1), "--temperature"), (dict(length=-5), "--length"),
                                       (dict(top_k=-1), "--top-k"), (dict(num_samples=0), "--num-samples")])
def test_bad_sampling_options(kw, match):
    with pytest.raises(UsageError, match=match):
        sampler().generate(SampleOptions(**kw))


def test_no_newline_in_vocabulary_starts_from_a_random_character():
    s = sampler("abcd")
    out = s.generate(SampleOptions(length=10, seed=4))[0]
    assert len(out) == 11 and set(out) <= set("abcd")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers, embed, vocab, cutoffs", [(1, 0, 11, []), (2, 0, 11, []), (3, 7, 11, []),
                                                           (2, 0, 600, [40, 200])])
def test_the_generation_step_computes_what_the_model_computes(cell, layers, embed, vocab, cutoffs):
    from charsearch.core.sample import Stepper
    torch.manual_seed(0)
    model = CharRNN(vocab, cell, 16, layers, embed_size=embed, dropout=0.3, cutoffs=cutoffs).eval()
    model.rank_by(torch.rand(vocab))  # an adaptive softmax ranks characters by frequency
    step = Stepper(model)
    ids = torch.randint(0, vocab, (3, 12))
    with torch.no_grad():
        ref, _ = model(ids)
        _, state = model(ids[:, :1])
        states = step.split(state)
        for t in range(1, 12):
            logits, states = step(ids[:, t], states)
            torch.testing.assert_close(logits, ref[:, t], rtol=1e-5, atol=1e-5)
