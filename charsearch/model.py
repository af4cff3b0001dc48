"""CharRNN: embedding -> stacked RNN / LSTM / GRU (cuDNN on CUDA) -> dropout -> linear head."""

from __future__ import annotations

import torch
import torch.nn as nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ARCH_KEYS = ("vocab_size", "model", "rnn_size", "num_layers", "embed_size", "dropout")

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, model: str = "lstm", rnn_size: int = 128, num_layers: int = 2,
                 embed_size: int = 0, dropout: float = 0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, model=model, rnn_size=rnn_size, num_layers=num_layers,
                           embed_size=embed_size, dropout=dropout)
        # char-rnn fed one-hot vectors: an embedding as wide as the vocabulary has the same capacity;
        # wider than the hidden state buys nothing but work, narrower factorises large (CJK) vocabularies
        embed = embed_size or min(rnn_size, vocab_size)
        self.embed = nn.Embedding(vocab_size, embed)
        # dropout between layers (inside the cell stack) and before the head, as char-rnn
        self.rnn = CELLS[model](embed, rnn_size, num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(rnn_size, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # char-rnn's init: U(-0.08, 0.08) everywhere, LSTM forget-gate bias 1 to remember by default
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)
        if isinstance(self.rnn, nn.LSTM):
            h = self.rnn.hidden_size
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_"):
                    with torch.no_grad():
                        p[h:2 * h] = 1.0 if name.startswith("bias_ih") else 0.0

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """x: (batch, time) character ids -> logits (batch, time, vocab), new state."""
        out, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(out)), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT chunks while keeping the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def build(config: dict) -> CharRNN:
    return CharRNN(**{k: config[k] for k in ARCH_KEYS})
