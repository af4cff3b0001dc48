import pytest
import torch

from charsearch.core.model import CharRNN, build, detach_state, expected_shapes, param_count


def lstm_params(v, h, layers, e=None):
    trained_embedding = v * e if e else 0  # one-hot input (e=None) has no trained embedding
    first = 4 * h * ((e or v) + h) + 8 * h
    rest = (layers - 1) * (4 * h * (h + h) + 8 * h)
    return trained_embedding + first + rest + h * v + v


def test_parameter_count_matches_the_lstm_formula():
    # char-rnn's default model on tiny-shakespeare (its train.lua prints 240,321 parameters)
    assert CharRNN(65, "lstm", 128, 2).num_params() == lstm_params(65, 128, 2) == 240_321
    big = CharRNN(6000, "gru", 256, 1)  # a vocabulary wider than the hidden state: a trained embedding
    assert big.embed.weight.shape == (6000, 256) and big.embed.weight.requires_grad


def test_default_input_is_one_hot_and_not_trained():
    m = CharRNN(30, "lstm", 64, 2)
    assert torch.equal(m.embed.weight, torch.eye(30)) and not m.embed.weight.requires_grad
    x = torch.randint(0, 30, (2, 5))
    m(x)[0].sum().backward()
    assert m.embed.weight.grad is None and m.rnn.weight_ih_l0.grad is not None
    assert CharRNN(65, "lstm", 64, 3, embed_size=16).num_params() == lstm_params(65, 64, 3, 16)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shapes_and_state_carry(cell):
    m = CharRNN(20, cell, 16, 2, dropout=0.2).eval()
    x = torch.randint(0, 20, (3, 7))
    logits, state = m(x)
    assert logits.shape == (3, 7, 20)
    # running the sequence in two chunks with the state carried equals one pass
    a, s = m(x[:, :4])
    b, _ = m(x[:, 4:], detach_state(s))
    torch.testing.assert_close(torch.cat([a, b], 1), logits)


def test_init_follows_char_rnn():
    m = CharRNN(30, "lstm", 8, 2)
    assert all(p.abs().max() <= 0.08 + 1e-6 for n, p in m.named_parameters() if "bias" not in n and p.requires_grad)
    assert torch.all(m.rnn.bias_ih_l0[8:16] == 1) and torch.all(m.rnn.bias_hh_l0[8:16] == 0)  # forget gate


@pytest.mark.parametrize("config", [
    dict(vocab_size=65, model="lstm", rnn_size=32, num_layers=2, embed_size=0, dropout=0.0),  # one-hot input
    dict(vocab_size=300, model="gru", rnn_size=32, num_layers=3, embed_size=0, dropout=0.1),  # wide vocabulary
    dict(vocab_size=30, model="rnn", rnn_size=16, num_layers=1, embed_size=20, dropout=0.0),  # trained embedding
])
def test_shapes_and_parameters_are_known_before_a_model_is_built(config):
    m = build(config)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert param_count(config) == m.num_params()


def test_the_adaptive_softmax_is_an_exact_distribution_over_the_vocabulary():
    """Over thousands of characters the output layer is an adaptive softmax: it gives a proper distribution
    over every character (so sampling, fair validation and ensembles take it as any model), its training
    loss is the cross-entropy of that distribution, and its ranking follows the frequencies given."""
    import torch.nn.functional as F

    from charsearch.core.model import cutoffs_for, expected_shapes, param_count
    assert cutoffs_for(65) == [] and cutoffs_for(999) == [] and cutoffs_for(1500) == [256]
    assert cutoffs_for(4000) == [256, 1024] and cutoffs_for(4000, "full") == [] and cutoffs_for(500, "adaptive")
    torch.manual_seed(0)
    model = CharRNN(4000, "gru", 32, 2, cutoffs=[256, 1024])
    counts = torch.rand(4000)
    model.rank_by(counts)
    assert model.rank[counts.argmax()] == 0 and model.rank[counts.argmin()] == 3999
    x, y = torch.randint(0, 4000, (3, 7)), torch.randint(0, 4000, (3, 7))
    logp, _ = model(x)
    assert torch.allclose(torch.logsumexp(logp, -1), torch.zeros(3, 7), atol=1e-5)
    loss, _ = model(x, None, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logp.reshape(-1, 4000), y.reshape(-1)).item(), rel=1e-5)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(model.config)
    assert param_count(model.config) == model.num_params() < param_count({**model.config, "cutoffs": []})
    # scoring a split takes each target's log-probability alone: the same numbers, state carried alike
    model.eval()
    nll, state = model.target_nll(x, y)
    expected = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    assert nll.shape == (3, 7) and torch.allclose(nll, expected, atol=1e-5)
    assert torch.allclose(state, model(x)[1])
    carried = -model(x, state)[0].gather(-1, y.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(model.target_nll(x, y, state)[0], carried, atol=1e-5)
    full, x65, y65 = CharRNN(65, "lstm", 32, 2), x % 65, y % 65
    expected = F.cross_entropy(full(x65)[0].transpose(1, 2), y65, reduction="none")
    assert torch.allclose(full.target_nll(x65, y65)[0], expected)


def test_training_only_regularizers_change_nothing_when_off_and_nothing_in_eval_mode():
    """With every new option off the model computes what it did; in eval mode (scoring, sampling) the
    regularizers are never applied; in training they change the output, each differently."""
    from charsearch.core.model import Regularizers
    torch.manual_seed(0)
    model = CharRNN(30, "lstm", 16, 2, embed_size=8)
    x = torch.randint(0, 30, (3, 7))
    model.train()
    torch.manual_seed(1)
    plain = model(x)[0]
    torch.manual_seed(1)
    model.regularizers = Regularizers()
    assert torch.equal(model(x)[0], plain)
    model.eval()
    reference = model(x)[0]
    for reg in (Regularizers(embed_dropout=0.5), Regularizers(input_dropout=0.5), Regularizers(weight_drop=0.5)):
        model.regularizers = reg
        model.eval()
        assert torch.equal(model(x)[0], reference)
        model.train()
        torch.manual_seed(1)
        assert not torch.allclose(model(x)[0], plain)
    # weight drop leaves the stored weights as they were
    assert all(not p.grad_fn for p in model.rnn.parameters())


def test_tied_weights_share_one_matrix_and_survive_a_model_file(tmp_path):
    from charsearch.core import artifact
    from charsearch.core.data import Vocab
    from charsearch.core.model import param_count
    m = CharRNN(20, "gru", 16, 1, tie=True)
    assert m.head.weight is m.embed.weight and not m.one_hot
    assert m.num_params() == param_count(m.config) == CharRNN(20, "gru", 16, 1, embed_size=16).num_params() - 20 * 16
    path = tmp_path / "t.pt"
    artifact.save(path, artifact.ModelFile(dict(m.config), Vocab(tuple("abcdefghijklmnopqrst")), m.state_dict()).to_dict())
    loaded = artifact.load(path).build()
    assert loaded.head.weight is loaded.embed.weight
    x = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(loaded(x)[0], m.eval()(x)[0])
