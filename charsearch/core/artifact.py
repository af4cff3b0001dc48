"""The portable model file: plain data only, CPU float32, read with torch.load(weights_only=True).

Layout (a dict):
    format: "charsearch-model", version: 1,
    config: the architecture (vocab_size, model, rnn_size, num_layers, embed_size, dropout, cutoffs, tie),
    vocab: list of characters (index = id), unk: id of the unknown symbol or None,
    state_dict: float32 CPU tensors,
    summary: val_loss, data hash, trial id, where/when trained, ... (str / int / float / None)

Training checkpoints hold the same `model` part plus the optimizer and loop state, so any
checkpoint exports to a model file without the device it was trained on.

An ensemble file ("charsearch-ensemble") holds one vocabulary and several members, each a config and a
state dict as above, with their mixture weights (positive, summing to 1); every member is checked as a
model file's weights are, before anything is built.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charsearch.core.config import label_of
from charsearch.core.data import Vocab
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.files import atomic_write, not_a_file
from charsearch.core.model import (
    ARCH_DEFAULTS,
    ARCH_KEYS,
    CELLS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    CharRNN,
    Ensemble,
    arch_of,
    build,
    expected_shapes,
    param_count,
)

MODEL_FORMAT, MODEL_VERSION = "charsearch-model", 1
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "charsearch-checkpoint", 1
ENSEMBLE_FORMAT, ENSEMBLE_VERSION = "charsearch-ensemble", 1
VERSIONS = {MODEL_FORMAT: MODEL_VERSION, CHECKPOINT_FORMAT: CHECKPOINT_VERSION, ENSEMBLE_FORMAT: ENSEMBLE_VERSION}
MAX_MEMBERS = 64


@dataclass
class ModelFile:
    config: dict
    vocab: Vocab
    state_dict: dict
    summary: dict = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> CharRNN:
        model = build(self.config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def num_params(self) -> int:
        return param_count(self.config)

    @property
    def label(self) -> str:
        return label_of(self.config)

    def to_dict(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "config": arch_of(self.config),
            "vocab": list(self.vocab.chars),
            "unk": self.vocab.unk,
            "state_dict": own_storages(self.state_dict),
            "summary": known_summary(self.summary),
        }


@dataclass
class EnsembleFile:
    """Several models over one vocabulary, mixed by their weights (model.Ensemble)."""
    members: list  # ModelFile, each with the shared vocabulary
    weights: list
    vocab: Vocab
    summary: dict = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> Ensemble:
        return Ensemble([m.build(device) for m in self.members], self.weights).to(device).eval()

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)

    @property
    def config(self) -> dict:
        return {"model": "ensemble", "vocab_size": len(self.vocab), "members": [dict(m.config) for m in self.members],
                "weights": list(self.weights)}

    @property
    def label(self) -> str:
        return f"ensemble of {len(self.members)}: " + ", ".join(f"{m.label} x{w:.2f}"
                                                                for m, w in zip(self.members, self.weights))

    def to_dict(self) -> dict:
        return {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "vocab": list(self.vocab.chars),
                "unk": self.vocab.unk, "weights": [float(w) for w in self.weights],
                "members": [{k: v for k, v in m.to_dict().items() if k in ("config", "state_dict")}
                            for m in self.members],
                "summary": known_summary(self.summary)}


# what the members of an ensemble must share (the data they were trained and chosen on, and how it was split),
# and what else of theirs the ensemble carries (the first member's, or where they differ, every value)
SHARED_PROVENANCE = ("data_sha256", "train_frac", "val_frac", "min_freq")
CARRIED_PROVENANCE = ("data_path", "data_chars", "eval_chars", "test_frac", "host", "device", "torch", "python",
                      "sweep", "experiment", "tracking_uri")


def ensemble_file(members: list[ModelFile], weights: list[float], summary: dict) -> EnsembleFile:
    """An ensemble of model files over one vocabulary, carrying their provenance (data, split, where and
    when trained). Members trained on other data or another split are refused: their val losses, and the
    ensemble's, would not measure the same thing."""
    first = members[0]
    for m in members[1:]:
        if m.vocab != first.vocab:
            odd = sorted(set(first.vocab.chars) ^ set(m.vocab.chars))
            raise UsageError(f"an ensemble mixes next-character probabilities over one vocabulary; its members have "
                             f"{len(first.vocab)} and {len(m.vocab)} characters (not both: {excerpt(''.join(odd))})")
        differ = [k for k in SHARED_PROVENANCE if m.summary.get(k) != first.summary.get(k)]
        if differ:
            k = differ[0]
            raise UsageError(f"the ensemble's members were trained on different data or splits ({k} "
                             f"{excerpt(first.summary.get(k))} and {excerpt(m.summary.get(k))}); ensemble models of "
                             f"one sweep")
    carried = {}
    for k in (*SHARED_PROVENANCE, *CARRIED_PROVENANCE):
        values = list(dict.fromkeys(m.summary[k] for m in members if m.summary.get(k) is not None))
        if values:
            carried[k] = values[0] if len(values) == 1 or not isinstance(values[0], str) else ",".join(map(str, values))
    stamps = [m.summary["trained_at"] for m in members if m.summary.get("trained_at")]
    if stamps:
        carried["trained_at"] = max(stamps)  # ISO times: the latest member's
    return EnsembleFile(members, weights, first.vocab, {**carried, **summary})


def own_storages(state_dict: dict) -> dict:
    """CPU float32 copies of the weights, each with storage of its own: tied weights (one tensor under two
    names) are written twice, since a file whose tensors share bytes is refused when read (storage_problem)."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        t = v.detach().to("cpu", torch.float32).contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def model_part(model: CharRNN, vocab: Vocab) -> dict:
    """The `model` entry of a checkpoint: architecture, vocabulary and CPU float32 weights."""
    base = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    return {"config": dict(base.config), "vocab": list(vocab.chars), "unk": vocab.unk,
            "state_dict": {k: v.detach().to("cpu", torch.float32).clone() for k, v in base.state_dict().items()}}


def save(path: str | Path, payload: dict) -> None:
    """torch.save through a temporary file: a crash never leaves a half-written file under `path`."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(Path(path), lambda f: f.write(buf.getbuffer()))


# the training summary a file may carry: its fields and their types (a float field takes an int too);
# a field of another type makes the file damaged, an unknown one is dropped (export writes only these)
SUMMARY_FIELDS: dict[str, type] = {
    "val_loss": float, "val_bpc": float, "epoch": float, "iteration": int, "chars_trained": int, "params": int,
    "data_path": str, "data_sha256": str, "data_chars": int, "train_frac": float, "val_frac": float,
    "eval_chars": int, "min_freq": int, "host": str, "device": str, "torch": str, "python": str, "trained_at": str,
    "trial_id": str, "trial_name": str, "sweep": str, "mlflow_run_id": str, "experiment": str,
    "tracking_uri": str, "test_loss": float, "test_frac": float, "ensemble_trials": str,
}
MAX_ENTRIES = 10_000  # archive members: a model file has one per tensor plus a few


def check_archive(f, size: int, path, what: str) -> None:
    """Before anything is loaded: the zip archive torch.save writes must hold stored, uncompressed entries
    whose declared sizes fit within the file, so loading it can never expand past the bytes on disk."""
    import zipfile
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a {what}, or truncated ({type(e).__name__})") from None
    if len(infos) > MAX_ENTRIES:
        raise UsageError(f"{path}: not a {what}: {len(infos):,} archive entries (a model file has a few hundred at "
                         f"most)")
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise UsageError(f"{path}: not a {what}: archive entry {excerpt(packed[0])} is compressed, which torch.save "
                         f"never does (a compressed entry could expand far beyond the file's size)")
    declared = sum(i.file_size for i in infos)
    if declared > size:
        raise UsageError(f"{path}: not a {what}: its archive declares {declared:,} bytes of content in a file of "
                         f"{size:,}")


def safe_load(path: str | Path, what: str = "charsearch model file") -> dict:
    """Load plain data only (no code runs), turning every failure into one clear line. The file is read
    into the process's own memory through one open handle (never memory-mapped), and its size and
    modification time are compared before and after: once this returns, a file truncated or copied over
    in place cannot change or take away the weights a command uses."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: {not_a_file(p)}")
    with open(p, "rb") as f:
        before = _identity(os.fstat(f.fileno()))
        head = f.read(4)
        if head != b"PK\x03\x04":  # torch.save's zip archive (its legacy format could declare storages it lacks)
            raise UsageError(f"{path}: not a {what}: not a file torch.save wrote (expected a file written by "
                             f"`charsearch export` or `charsearch train`)")
        check_archive(f, before[0], path, what)
        f.seek(0)
        obj = _unpickle(f, path, what)
        if _identity(os.fstat(f.fileno())) != before:
            raise UsageError(f"{path}: changed while it was read (another program is writing it); run the command "
                             f"again once the file is complete")
    if not isinstance(obj, dict) or obj.get("format") not in VERSIONS:
        raise UsageError(f"{path}: not a {what} (no charsearch format tag; expected a file written by "
                         f"`charsearch export` or `charsearch train`)")
    supported = VERSIONS[obj["format"]]
    if not isinstance(obj.get("version"), int) or obj["version"] > supported:
        raise UsageError(f"{path}: {obj['format']} format version {excerpt(obj.get('version'))} is newer than this "
                         f"charsearch reads (up to {supported}); upgrade charsearch")
    problem = storage_problem(obj) or _layout_problem(obj)
    if problem:
        raise UsageError(f"{path}: damaged charsearch file ({problem})")
    return obj


def _identity(st: os.stat_result) -> tuple:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _unpickle(f, path, what: str):
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol; the error line says it all
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UsageError(f"{path}: not a {what}: it holds Python objects beyond plain data, and loading it could "
                             f"run code, so it is refused") from None
        raise UsageError(f"{path}: not a {what} (unreadable: {str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # a damaged file can fail anywhere in the unpickler (KeyError, IndexError, ...)
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UsageError(f"{path}: not a {what}, or truncated ({reason})") from None


def tensors_in(obj, depth: int = 0):
    """Every tensor a loaded file holds, at any depth of its dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 32 and isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v, depth + 1)
    elif depth < 32 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v, depth + 1)


def storage_problem(obj) -> str | None:
    """A small file must not stand for a large model: every element of every tensor must have bytes of its
    own in the file. A view that repeats its storage (a stride of 0, as `expand` makes), overlaps itself or
    another tensor, or reaches past its storage is refused here, before any of it is used. The storages
    themselves are bounded by the file's size (check_archive), so the tensors are too."""
    spans: dict[int, list] = {}
    for t in tensors_in(obj):
        if t.layout != torch.strided or t.is_quantized:
            return f"a tensor is stored as {t.layout} {t.dtype}; charsearch files hold dense tensors only"
        if t.numel() == 0:
            continue
        dims = sorted((st, n) for st, n in zip(t.stride(), t.shape) if n > 1)
        extent = 1  # elements that the dimensions with smaller strides cover, each once
        for st, n in dims:
            if st < extent:
                return (f"a tensor of shape {tuple(t.shape)} repeats or overlaps its own elements (stride "
                        f"{tuple(t.stride())}): a file must hold every element it stands for")
            extent = st * (n - 1) + extent
        start = t.storage_offset() * t.element_size()
        end = start + extent * t.element_size()
        storage = t.untyped_storage()
        if end > storage.nbytes():
            return f"a tensor of shape {tuple(t.shape)} reaches past the bytes the file stores for it"
        spans.setdefault(storage.data_ptr(), []).append((start, end))
    for ranges in spans.values():
        ranges.sort()
        if any(b[0] < a[1] for a, b in zip(ranges, ranges[1:])):
            return "two tensors share the same stored bytes: a file must hold every element it stands for"
    return None


def _layout_problem(obj: dict) -> str | None:
    """What is wrong with a file's top-level layout and its summary, or None (the model parts are checked
    by _problem, a checkpoint's training state by train.state_problem)."""
    if obj["format"] == CHECKPOINT_FORMAT:
        for key, kind in (("model", dict), ("state", dict), ("train_config", dict)):
            if not isinstance(obj.get(key), kind):
                return f"a checkpoint needs a {key!r} mapping; got {excerpt(obj.get(key))}"
    if obj["format"] == ENSEMBLE_FORMAT:
        problem = _ensemble_problem(obj)
        if problem:
            return problem
    for part in parts(obj):
        if not isinstance(part, dict):
            return "a member is not a mapping"
        for key in ("config", "vocab", "unk", "state_dict"):
            if key not in part:
                return f"no {key!r}"
        if not isinstance(part["config"], dict):
            return "config is not a mapping"
    summary = obj.get("summary", {})
    if not isinstance(summary, dict):
        return f"summary is not a mapping; got {excerpt(summary)}"
    for key, kind in SUMMARY_FIELDS.items():
        v = summary.get(key)
        ok = v is None or (isinstance(v, kind) if kind is not float else isinstance(v, (int, float)))
        if not ok or isinstance(v, bool):
            return f"summary {key} is {excerpt(v)}; expected {_KIND_WORDS[kind]}"
    return None


_KIND_WORDS = {float: "a number", int: "an integer", str: "a string"}


def _ensemble_problem(obj: dict) -> str | None:
    members, weights = obj.get("members"), obj.get("weights")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        return f"an ensemble needs a list of 1 to {MAX_MEMBERS} members; got {excerpt(members)}"
    if not isinstance(weights, list) or len(weights) != len(members) or not all(
            isinstance(w, float) and 0 < w <= 1 for w in weights) or abs(sum(weights) - 1) > 1e-4:
        return f"an ensemble needs one weight in (0, 1] per member, summing to 1; got {excerpt(weights)}"
    return None


def parts(obj: dict) -> list:
    """The model parts of a loaded file (config, vocab, unk, state_dict each): one, or an ensemble's members
    (each with the file's vocabulary)."""
    if obj["format"] == CHECKPOINT_FORMAT:
        return [obj["model"]]
    if obj["format"] == ENSEMBLE_FORMAT:
        return [{**m, "vocab": obj.get("vocab"), "unk": obj.get("unk")} if isinstance(m, dict) else m
                for m in obj["members"]]
    return [obj]


def known_summary(summary: dict) -> dict:
    """The summary fields a model file keeps (SUMMARY_FIELDS): unknown ones, and numbers that are not finite
    (a NaN val loss is no val loss; JSON and the tables that show a summary have no NaN), left out."""
    return {k: v for k, v in summary.items() if k in SUMMARY_FIELDS and v is not None
            and not (isinstance(v, float) and not math.isfinite(v))}


def load(path: str | Path, obj: dict | None = None) -> ModelFile | EnsembleFile:
    """Read a model file, an ensemble file, or the model part of a training checkpoint (`obj`: the
    file's content when the caller has loaded it already). Each stored config is checked against sane
    maxima and against the weights the file carries before any model is built, so a doctored config
    cannot make it allocate more than the file holds."""
    obj = obj if obj is not None else safe_load(path)
    summary = known_summary(obj.get("summary", {}))
    members = [_model(path, part, summary) for part in parts(obj)]
    if obj["format"] != ENSEMBLE_FORMAT:
        return members[0]
    return EnsembleFile(members, list(obj["weights"]), members[0].vocab, summary)


def _model(path, part: dict, summary: dict) -> ModelFile:
    try:
        problem = _problem(part)
    except (KeyError, TypeError, AttributeError) as e:
        problem = f"{type(e).__name__}: {excerpt(e.args[0]) if e.args else ''}"
    if problem:
        raise UsageError(f"{path}: damaged charsearch file ({problem})")
    mf = ModelFile(arch_of(part["config"]), Vocab(tuple(part["vocab"]), part["unk"]),
                   part["state_dict"], summary)
    try:
        mf.build()  # the shapes match already; this proves the rest
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise UsageError(f"{path}: damaged charsearch file ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    return mf


def _problem(part: dict) -> str | None:
    """What is wrong with the model part of a file, or None: the config's types and ranges, the
    vocabulary, then every weight's name, shape and values against what the config builds."""
    config, vocab, unk, weights = part["config"], part["vocab"], part["unk"], part["state_dict"]
    missing = [k for k in ARCH_KEYS if k not in config and k not in ARCH_DEFAULTS]
    if missing:
        return f"config lacks {', '.join(missing)}"
    cutoffs = config.get("cutoffs", [])
    if not isinstance(cutoffs, list) or len(cutoffs) > 8 or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in cutoffs) or cutoffs != sorted(set(cutoffs)) or (
            cutoffs and not 0 < cutoffs[0] <= cutoffs[-1] < config.get("vocab_size", 0) - 1):
        return f"config cutoffs is {excerpt(cutoffs)}; expected at most 8 increasing ranks inside the vocabulary"
    limits = {"vocab_size": (1, MAX_VOCAB), "rnn_size": (1, MAX_WIDTH), "num_layers": (1, MAX_LAYERS),
              "embed_size": (0, MAX_WIDTH)}
    for key, (lo, hi) in limits.items():
        v = config[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"config {key} is {excerpt(v)}; expected an integer in [{lo}, {hi:,}]"
    tie = config.get("tie", False)
    if not isinstance(tie, bool) or (tie and cutoffs):
        return f"config tie is {excerpt(tie)}; expected true or false (and false with an adaptive softmax)"
    if config["model"] not in CELLS:
        return f"config model is {excerpt(config['model'])}; expected one of {', '.join(CELLS)}"
    if not isinstance(config["dropout"], (int, float)) or not 0 <= config["dropout"] < 1:
        return f"config dropout is {excerpt(config['dropout'])}; expected a number in [0, 1)"
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
        return "the vocabulary is not a list of characters"
    if len(vocab) != config["vocab_size"]:
        return f"vocab has {len(vocab)} entries, model expects {config['vocab_size']}"
    if unk is not None and (not isinstance(unk, int) or not 0 <= unk < len(vocab)):
        return f"unknown-symbol id {excerpt(unk)} is not an index of the vocabulary"
    if not isinstance(weights, dict):
        return "no state dict"
    shapes = expected_shapes(config)
    if set(weights) != set(shapes):
        odd = sorted(map(str, set(weights) ^ set(shapes)))
        return f"weights do not match the config: {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''}"
    for name, shape in shapes.items():
        t = weights[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return f"{name} is not a float tensor"
        if tuple(t.shape) != shape:
            return f"{name} has shape {tuple(t.shape)}; the config needs {shape}"
        if not torch.isfinite(t).all():
            return f"{name} holds NaN or infinite values"
    if "rank" in shapes and not torch.equal(torch.sort(weights["rank"]).values,
                                              torch.arange(config["vocab_size"], dtype=weights["rank"].dtype)):
        return "rank is not a ranking of the vocabulary (each of 0 .. vocab_size - 1 once)"
    return None


def export(src: str | Path, out: str | Path, extra_summary: dict | None = None) -> ModelFile:
    """Write the portable model file for a checkpoint (or re-write a model file), CPU float32."""
    mf = load(src)
    if extra_summary:
        mf.summary.update(extra_summary)
    save(out, mf.to_dict())
    return mf
