"""The seed-style PyTorch char-RNN trainer (as the PyTorch char-RNN lesson writes it): one-hot inputs,
nn.LSTM(batch_first), batches built in numpy and copied to the device every step, loss.item() every
step. The yardstick for charsearch's trainer in bench_trainer.py."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn


class SeedLSTM(nn.Module):
    def __init__(self, n_chars: int, n_hidden: int, n_layers: int, drop_prob: float = 0.5):
        super().__init__()
        self.n_hidden = n_hidden
        self.lstm = nn.LSTM(n_chars, n_hidden, n_layers, dropout=drop_prob, batch_first=True)
        self.dropout = nn.Dropout(drop_prob)
        self.fc = nn.Linear(n_hidden, n_chars)

    def forward(self, x, hidden):
        out, hidden = self.lstm(x, hidden)
        out = self.dropout(out).contiguous().view(-1, self.n_hidden)
        return self.fc(out), hidden


def one_hot_encode(arr: np.ndarray, n_labels: int) -> np.ndarray:
    one_hot = np.zeros((arr.size, n_labels), dtype=np.float32)
    one_hot[np.arange(one_hot.shape[0]), arr.flatten()] = 1.0
    return one_hot.reshape((*arr.shape, n_labels))


def get_batches(arr: np.ndarray, batch_size: int, seq_length: int):
    n_batches = len(arr) // (batch_size * seq_length)
    arr = arr[: n_batches * batch_size * seq_length].reshape((batch_size, -1))
    for n in range(0, arr.shape[1], seq_length):
        x = arr[:, n:n + seq_length]
        y = np.zeros_like(x)
        try:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, n + seq_length]
        except IndexError:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, 0]
        yield x, y


def train_steps(encoded: np.ndarray, n_chars: int, n_hidden: int, n_layers: int, batch_size: int, seq_length: int,
                steps: int, warmup: int, device: str, lr: float = 0.002, clip: float = 5.0) -> float:
    """Train `warmup + steps` steps; return chars/s over the last `steps`."""
    torch.manual_seed(0)
    net = SeedLSTM(n_chars, n_hidden, n_layers).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    net.train()
    done, start = 0, None
    while done < warmup + steps:
        h = tuple(torch.zeros(n_layers, batch_size, n_hidden, device=device) for _ in range(2))
        for x, y in get_batches(encoded, batch_size, seq_length):
            if done == warmup:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
            inputs = torch.from_numpy(one_hot_encode(x, n_chars)).to(device)
            targets = torch.from_numpy(y).to(device)
            h = tuple(each.data for each in h)
            net.zero_grad()
            output, h = net(inputs, h)
            loss = criterion(output, targets.reshape(batch_size * seq_length).long())
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            loss.item()
            done += 1
            if done == warmup + steps:
                break
    return steps * batch_size * seq_length / (time.perf_counter() - start)
