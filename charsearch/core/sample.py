"""Generation: prime text, temperature, top-k, argmax, seed, stop string, several samples in one batch.

`Sampler.stream` yields the new characters of every sample at each step, so callers (the CLI, the web
page) can show text as it is made. All samples advance together as one batch through the model.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator

import torch
import torch.nn.functional as F

from charsearch.core.artifact import ModelFile
from charsearch.core.config import MAX_LENGTH, MAX_PRIME, REQUEST_FIELDS, SampleOptions
from charsearch.core.devices import available_bytes
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.model import GATES, CharRNN, Ensemble, members_of, mixed_step
from charsearch.core.units import human_bytes


def sample_bytes(opts: SampleOptions, config: dict) -> int:
    """Bytes generating these samples at once takes, for a model of `config` (float32, 4 bytes).
    Per sample, with P prime characters, N generated, V the vocabulary, L layers of H units and G
    gate blocks: the prime's pass 4 P (V + (G + 2) H), the state 8 L H, logits and probabilities
    8 V, and the text kept when several are made together 4 (P + N) (up to 4 bytes a character)."""
    p, n = max(len(opts.primetext), 1), opts.length
    v, h, layers = config["vocab_size"], config["rnn_size"], config["num_layers"]
    per_sample = 4 * p * (v + (GATES[config["model"]] + 2) * h) + 8 * layers * h + 8 * v
    if opts.num_samples > 1:
        per_sample += 4 * (p + n)
    return opts.num_samples * per_sample




class Stepper:
    """One generation step of a CharRNN (eval mode) as plain matrix products.

    Same function as `model(ids[:, None], state)` for one step, up to float rounding, but nn.RNN/LSTM/GRU
    spend most of a single-step call on per-call overhead (1.7 ms of a 2x512 LSTM step on 2 CPU cores,
    against 0.46 ms here). The first layer's input projection is a per-character table (embedding x
    W_ih + biases, computed once); deeper LSTM/RNN layers take one product over [input, hidden]."""

    def __init__(self, model: CharRNN):
        rnn, self.kind = model.rnn, model.config["model"]
        self.num_layers, self.hidden = rnn.num_layers, rnn.hidden_size
        self.layers = []
        with torch.no_grad():
            for layer in range(self.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
                if self.kind == "gru":  # the new gate needs r * (W_hn h + b_hn): input and hidden stay apart
                    inp = (model.embed.weight @ w_ih.T + b_ih) if layer == 0 else (w_ih.T.contiguous(), b_ih)
                    self.layers.append((inp, w_hh.T.contiguous(), b_hh))
                elif layer == 0:
                    self.layers.append(((model.embed.weight @ w_ih.T + b_ih + b_hh).contiguous(),
                                        w_hh.T.contiguous(), None))
                else:
                    self.layers.append((None, torch.cat([w_ih, w_hh], 1).T.contiguous(), b_ih + b_hh))
            if model.adaptive:  # the exact distribution, as CharRNN.forward gives it
                self.adaptive, self.rank = model.head, model.rank.long()
            else:
                self.adaptive, self.head_w, self.head_b = None, model.head.weight.T.contiguous(), model.head.bias.detach()

    def split(self, state) -> list:
        """nn.RNN-style state ((layers, batch, hidden) tensors) -> a list per layer."""
        if self.kind == "lstm":
            return [(state[0][i], state[1][i]) for i in range(self.num_layers)]
        return [state[i] for i in range(self.num_layers)]

    def __call__(self, ids: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        """ids: (batch,) -> logits (batch, vocab); `states` is the per-layer list from split()."""
        x = None
        new = []
        for layer, (inp, w, b) in enumerate(self.layers):
            prev = states[layer]
            if self.kind == "gru":
                gi = inp[ids] if layer == 0 else torch.addmm(inp[1], x, inp[0])
                gh = torch.addmm(b, prev, w)
                ir, iz, i_n = gi.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                h = torch.lerp(torch.tanh(i_n + r * hn), prev, z)  # (1 - z) * n + z * h
                new.append(h)
            else:
                h_prev = prev[0] if self.kind == "lstm" else prev
                gates = (torch.addmm(inp[ids], h_prev, w) if layer == 0
                         else torch.addmm(b, torch.cat([x, h_prev], 1), w))
                if self.kind == "lstm":
                    i, f, g, o = gates.chunk(4, 1)
                    c = torch.sigmoid(f) * prev[1] + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    new.append((h, c))
                else:
                    h = torch.tanh(gates)
                    new.append(h)
            x = h
        if self.adaptive is not None:
            return self.adaptive.log_prob(x.float())[:, self.rank], new
        return torch.addmm(self.head_b, x, self.head_w), new


class EnsembleStepper:
    """One generation step of an Ensemble: each member's Stepper, mixed as Ensemble.forward mixes them."""

    def __init__(self, model: Ensemble):
        self.steps = [Stepper(m) for m in model.members]
        self.log_w = model.log_w

    def split(self, state) -> list:
        return [step.split(s) for step, s in zip(self.steps, state)]

    def __call__(self, ids: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        return mixed_step(self.steps, ids, states, self.log_w)


class Sampler:
    def __init__(self, mf: ModelFile, device: str | torch.device = "cpu"):
        self.vocab = mf.vocab
        self.device = torch.device(device)
        self.model = mf.build(self.device)
        self.step = EnsembleStepper(self.model) if isinstance(self.model, Ensemble) else Stepper(self.model)

    def check(self, opts: SampleOptions) -> SampleOptions:
        """Validate the options and refuse, before anything is allocated, samples that would take
        more than half of the device's memory."""
        opts.validate()
        need = sum(sample_bytes(opts, m.config) for m in members_of(self.model))
        limit = available_bytes(self.device) // 2
        if need > limit:
            raise UsageError(f"{opts.num_samples:,} samples of {opts.length:,} characters would take about "
                             f"{human_bytes(need)} at once; at most {human_bytes(limit)} is allowed here: ask "
                             f"for fewer --num-samples or a shorter --length")
        return opts

    @torch.inference_mode()
    def stream(self, opts: SampleOptions) -> Iterator[list[str]]:
        """First yields the prime text of each sample, then one list of new characters per step
        ('' for a sample that already hit its stop string)."""
        self.check(opts)
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
        logits, state = self.model(x, None)  # the prime in one pass, then one character at a time
        logits, states = logits[:, -1], self.step.split(state)
        done = [False] * m
        tails = [s[-len(opts.stop):] if opts.stop else "" for s in shown]
        for _ in range(opts.length):
            if opts.argmax:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                # in float64, shifted so the likeliest is 0: any temperature > 0 a float can hold, however
                # small, gives finite or -inf scores (never 0/0); softmax is taken back in float32
                logits = logits.double()
                scaled = ((logits - logits.max(dim=-1, keepdim=True).values) / opts.temperature).float()
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
            logits, states = self.step(nxt[:, 0], states)

    def generate(self, opts: SampleOptions) -> list[str]:
        self.check(opts)
        texts = ["" for _ in range(opts.num_samples)]
        for step in self.stream(opts):
            texts = [t + c for t, c in zip(texts, step)]
        return texts


def _absent(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))  # NaN: a column missing in that row


@contextlib.contextmanager
def cpu_sampling():
    """Settings for generating on a CPU, put back afterwards. Generation is one tiny step per character, so:
    one thread (intra-op threads only contend: a 2x128 LSTM on 2 busy cores made 1,800 chars/s with one,
    120 with two) and no oneDNN (its LSTM step is ~10x slower at batch 1: 2x512, 290 chars/s without it,
    38 with it)."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


def request_options(values: dict, vocab, max_length: int = MAX_LENGTH, allowed: tuple = ()) -> SampleOptions:
    """Checked sampling options from request fields (JSON values or a DataFrame row; absent or null
    fields take their defaults). Raises UsageError naming the field and what is valid."""
    unknown = sorted(set(values) - set(REQUEST_FIELDS) - set(allowed))
    if unknown:
        raise UsageError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join((*REQUEST_FIELDS, *allowed))}")
    given = {}
    for name, f in REQUEST_FIELDS.items():
        v = values.get(name)
        given[f.name] = f.metadata["request_default"] if _absent(v) else _typed(name, f.type, v)
    if len(given["primetext"]) > MAX_PRIME:
        raise UsageError(f"prime_text is {len(given['primetext']):,} characters; at most {MAX_PRIME:,} are accepted")
    if given["length"] > max_length:
        raise UsageError(f"length must be <= {max_length:,} (this server's limit); got {excerpt(given['length'])}")
    opts = SampleOptions(**given)
    try:
        opts.validate()
    except UsageError as e:  # its messages name the command-line flag; here the field has the same name
        raise UsageError(str(e).removeprefix("--")) from None
    vocab.encode(opts.primetext, what="prime_text")  # unknown characters: named in the error
    return opts


def _typed(name: str, kind: str, v):
    """A request's value as the option's type (the dataclass's annotation, a string here)."""
    if kind == "str":
        if not isinstance(v, str):
            raise UsageError(f"{name} must be a string; got {excerpt(v)}")
        return v
    integer = kind == "int"
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (isinstance(v, float) and not math.isfinite(v)):
        raise UsageError(f"{name} must be {'an integer' if integer else 'a number'}; got {excerpt(v)}")
    if integer:
        if v != int(v):
            raise UsageError(f"{name} must be an integer; got {excerpt(v)}")
        return int(v)
    if abs(v) > 1e300:  # beyond a float
        raise UsageError(f"{name} must be a number of sensible size; got {excerpt(v)}")
    return float(v)
