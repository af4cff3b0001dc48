"""Generation: prime text, temperature, top-k, argmax, seed, stop string, several samples in one batch.

`Sampler.stream` yields the new characters of every sample at each step, so callers (the CLI, the web
page) can show text as it is made. All samples advance together as one batch through the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .artifact import ModelFile
from .errors import UsageError


@dataclass
class SampleOptions:
    primetext: str = ""
    length: int = 2000
    temperature: float = 1.0
    top_k: int = 0
    argmax: bool = False
    seed: int = 123
    num_samples: int = 1
    stop: str = ""

    def validate(self) -> "SampleOptions":
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0 (1 samples as trained, lower is more conservative); "
                             f"got {self.temperature}")
        if self.length < 0:
            raise UsageError(f"--length must be >= 0; got {self.length}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0: no cut-off); got {self.top_k}")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1; got {self.num_samples}")
        return self


class Sampler:
    def __init__(self, mf: ModelFile, device: str | torch.device = "cpu"):
        self.vocab = mf.vocab
        self.device = torch.device(device)
        self.model = mf.build(self.device)

    @torch.inference_mode()
    def stream(self, opts: SampleOptions) -> Iterator[list[str]]:
        """First yields the prime text of each sample, then one list of new characters per step
        ('' for a sample that already hit its stop string)."""
        opts.validate()
        m, vocab = opts.num_samples, self.vocab
        prime_ids = vocab.encode(opts.primetext, what="--primetext")
        g = torch.Generator(self.device).manual_seed(opts.seed)
        shown = [opts.primetext] * m
        if not prime_ids:  # no prime: start after a newline if the vocabulary has one, else a random character
            if "\n" in vocab.chars:
                prime_ids, shown = [vocab.index["\n"]], [""] * m
            else:
                first = torch.randint(len(vocab), (1,), generator=g, device=self.device).item()
                prime_ids, shown = [first], [vocab.chars[first]] * m
        yield shown
        x = torch.tensor([prime_ids] * m, device=self.device)
        logits, state = self.model(x, None)
        logits = logits[:, -1]
        done = [False] * m
        tails = [s[-len(opts.stop):] if opts.stop else "" for s in shown]
        for _ in range(opts.length):
            if opts.argmax:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                scaled = logits.float() / opts.temperature
                if opts.top_k and opts.top_k < scaled.size(-1):
                    kth = torch.topk(scaled, opts.top_k, dim=-1).values[:, -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=g)
            chars = [vocab.chars[i] for i in nxt[:, 0].tolist()]
            out = []
            for j, c in enumerate(chars):
                if done[j]:
                    out.append("")
                    continue
                out.append(c)
                if opts.stop:
                    tails[j] = (tails[j] + c)[-len(opts.stop):]
                    done[j] = tails[j] == opts.stop
            yield out
            if all(done):
                return
            logits, state = self.model(nxt, state)
            logits = logits[:, -1]

    def generate(self, opts: SampleOptions) -> list[str]:
        texts = ["" for _ in range(opts.num_samples)]
        for step in self.stream(opts):
            texts = [t + c for t, c in zip(texts, step)]
        return texts
