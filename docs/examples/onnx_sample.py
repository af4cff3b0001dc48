"""Sample from a model exported with `charsearch export model.pt --out model.onnx`, using onnxruntime alone
(no PyTorch): python onnx_sample.py model.onnx "ROMEO:" 500"""
import json
import sys

import numpy as np
import onnxruntime as ort


def sample(path: str, prime: str = "\n", length: int = 500, temperature: float = 1.0, seed: int = 123,
           argmax: bool = False) -> str:
    session = ort.InferenceSession(path)
    meta = session.get_modelmeta().custom_metadata_map
    chars = json.loads(meta["charsearch.vocab"])  # id -> character
    index = {c: i for i, c in enumerate(chars)}
    state = {name: np.zeros((layers, 1, hidden), np.float32)
             for name, layers, hidden in json.loads(meta["charsearch.states"])}
    rng, text = np.random.default_rng(seed), []
    for c in prime:  # read the prime one character at a time, carrying the state
        log_probs, *new = session.run(None, {"ids": np.array([index[c]]), **state})
        state = dict(zip(state, new))
    for _ in range(length):
        scaled = log_probs[0] / temperature
        p = np.exp(scaled - scaled.max())
        nxt = int(p.argmax()) if argmax else int(rng.choice(len(p), p=p / p.sum()))
        text.append(chars[nxt])
        log_probs, *new = session.run(None, {"ids": np.array([nxt]), **state})
        state = dict(zip(state, new))
    return prime + "".join(text)


if __name__ == "__main__":
    print(sample(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "\n", int(sys.argv[3]) if len(sys.argv) > 3 else 500))
