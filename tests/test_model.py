import pytest
import torch

from charsearch.model import CharRNN, detach_state


def lstm_params(v, h, layers, e=None):
    e = e or min(h, v)
    first = 4 * h * (e + h) + 8 * h
    rest = (layers - 1) * (4 * h * (h + h) + 8 * h)
    return v * e + first + rest + h * v + v


def test_parameter_count_matches_the_lstm_formula():
    assert CharRNN(65, "lstm", 128, 2).num_params() == lstm_params(65, 128, 2) == 244_546
    assert CharRNN(6000, "gru", 256, 1).embed.weight.shape == (6000, 256)  # large vocabularies: factorised
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
    assert all(p.abs().max() <= 0.08 + 1e-6 for n, p in m.named_parameters() if "bias" not in n)
    assert torch.all(m.rnn.bias_ih_l0[8:16] == 1) and torch.all(m.rnn.bias_hh_l0[8:16] == 0)  # forget gate
