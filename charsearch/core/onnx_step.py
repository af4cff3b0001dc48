"""One generation step of a model file as an ONNX graph, for sampling without PyTorch (onnxruntime in
Python, onnxruntime-web in a browser, or any ONNX runtime).

    inputs   ids        int64 (batch,)                   the current character of each stream
             h          float32 (layers, batch, hidden)  the recurrent state (h_0, c_0 ... of each
             c          float32 (layers, batch, hidden)    member for an ensemble; c for an LSTM only)
    outputs  log_probs  float32 (batch, vocabulary)      log p(next character)
             h_out, c_out                                the new state, fed back at the next step

The graph is the sampler's own step (sample.Stepper: the recurrent layers as plain matrix products, the
exact distribution of a full or adaptive softmax, an ensemble's mixture), traced once. The vocabulary and
the state's shapes travel in the file's metadata ("charsearch.vocab": the characters as a JSON list, id =
index; "charsearch.states": each state input's name and shape), so a program that has only the .onnx file
can encode, start from zeros and decode. `onnx` is needed to write the file (pip install charsearch[onnx]).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from charsearch.core.errors import UsageError
from charsearch.core.files import atomic_write
from charsearch.core.model import members_of
from charsearch.core.sample import EnsembleStepper, Stepper

OPSET = 17


class StepGraph(nn.Module):
    """The traced step: flat state tensors in and out, as ONNX wants them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.members = members_of(model)
        self.step = EnsembleStepper(model) if len(self.members) > 1 else Stepper(model)
        self.specs = state_specs(self.members)

    def forward(self, ids: torch.Tensor, *flat: torch.Tensor):
        states, at = [], 0
        for member, stepper in zip(self.members, getattr(self.step, "steps", [self.step])):
            n = 2 if member.config["model"] == "lstm" else 1
            states.append(stepper.split(tuple(flat[at:at + n]) if n == 2 else flat[at]))
            at += n
        logits, new = self.step(ids, states if len(self.members) > 1 else states[0])
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for member, layers in zip(self.members, new if len(self.members) > 1 else [new]):
            if member.config["model"] == "lstm":
                out += [torch.stack([h for h, _ in layers]), torch.stack([c for _, c in layers])]
            else:
                out.append(torch.stack(layers))
        return (log_probs, *out)


def state_specs(members: list) -> list[tuple[str, int, int]]:
    """(name, layers, hidden) of each state input: h (and c for an LSTM), suffixed by the member's index in
    an ensemble."""
    specs = []
    for i, m in enumerate(members):
        suffix = f"_{i}" if len(members) > 1 else ""
        for name in ("h", "c") if m.config["model"] == "lstm" else ("h",):
            specs.append((name + suffix, m.config["num_layers"], m.config["rnn_size"]))
    return specs


def export_onnx(mf, out: str | Path) -> dict:
    """Write the ONNX step graph of a model file (or an ensemble file); returns its metadata."""
    try:
        import onnx
    except ImportError:
        raise UsageError("writing ONNX needs the onnx package: pip install 'charsearch[onnx]' (or pip install onnx)") \
            from None
    model = mf.build("cpu").requires_grad_(False)  # weights become the graph's constants
    graph = StepGraph(model).eval()
    batch = 2
    ids = torch.zeros(batch, dtype=torch.long)
    flat = [torch.zeros(layers, batch, hidden) for _, layers, hidden in graph.specs]
    names = [name for name, _, _ in graph.specs]
    outputs = ["log_probs", *(f"{n}_out" for n in names)]
    dynamic = {"ids": {0: "batch"}, "log_probs": {0: "batch"},
               **{n: {1: "batch"} for n in names}, **{f"{n}_out": {1: "batch"} for n in names}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: the graph is plain
        torch.onnx.export(graph, (ids, *flat), buf, input_names=["ids", *names], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"charsearch.vocab": json.dumps(list(mf.vocab.chars), ensure_ascii=False),
            "charsearch.states": json.dumps([list(spec) for spec in graph.specs]),
            "charsearch.model": mf.label, "opset": str(OPSET)}
    onnx.helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return meta


def greatest_difference(mf, onnx_path: str | Path, steps: int = 300, first: int = 1) -> float:
    """The largest difference between a log-probability of the ONNX graph (run by onnxruntime) and of the
    model file's PyTorch model, over `steps` greedy steps from character id `first`: the export's check."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path))
    meta = session.get_modelmeta().custom_metadata_map
    state = {n: np.zeros((layers, 1, h), np.float32) for n, layers, h in json.loads(meta["charsearch.states"])}
    model, ids, torch_state, worst = mf.build("cpu"), first, None, 0.0
    with torch.no_grad():
        for _ in range(steps):
            log_probs, *new = session.run(None, {"ids": np.array([ids]), **state})
            state = dict(zip(state, new))
            logits, torch_state = model(torch.tensor([[ids]]), torch_state)
            expected = torch.log_softmax(logits[0, -1].float(), -1).numpy()
            worst = max(worst, float(np.abs(log_probs[0] - expected).max()))
            ids = int(log_probs[0].argmax())
    return worst
