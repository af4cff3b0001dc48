"""Typed configuration of one training run, and its validation.

`TrainConfig` is the single list of training options: the `charsearch train` flags, the keys of a
sweep file's `train:` and `search:` sections, and the config stored in checkpoints are all made from
it. Every check raises `ConfigError(field, problem)`; callers name the field the way the user wrote it
(`--dropout` on the command line, `train.dropout` in a sweep file).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import UsageError, excerpt

MODELS = ("rnn", "lstm", "gru")
OPTIMIZERS = ("adam", "adamw", "rmsprop")
LR_SCHEDULES = ("step", "cosine", "constant", "wsd")
PRECISIONS = ("auto", "fp32", "fp16")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")  # what --device accepts


class ConfigError(UsageError):
    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


def opt(default, help: str, choices=None, group: str = "training"):
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


@dataclass
class TrainConfig:
    # data
    data: str = opt("", "corpus: a UTF-8 text file, a folder holding input.txt, or a name under data/", group="data")
    min_freq: int = opt(0, "map characters seen fewer than N times to one unknown symbol (0: keep all)", group="data")
    train_frac: float = opt(0.9, "fraction of the corpus used for training (contiguous, from the start)", group="data")
    val_frac: float = opt(0.1, "fraction used for validation (after train); test is the rest", group="data")
    # model
    model: str = opt("lstm", "recurrent cell", choices=MODELS, group="model")
    rnn_size: int = opt(128, "hidden units per layer", group="model")
    num_layers: int = opt(2, "number of stacked recurrent layers", group="model")
    embed_size: int = opt(0, "trained character embedding size (0: one-hot input as char-rnn, or rnn-size for vocabularies larger than it)", group="model")
    dropout: float = opt(0.0, "dropout between layers and before the output layer, in [0, 1)", group="model")
    # optimisation
    seq_length: int = opt(50, "characters per sequence chunk (truncated BPTT length)")
    batch_size: int = opt(50, "parallel contiguous streams per batch")
    optimizer: str = opt("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = opt(2e-3, "initial learning rate")
    lr_schedule: str = opt("step", "step: char-rnn's per-epoch decay; cosine: to 10%% of the rate at the end of the "
                           "run; wsd: constant, then linearly to 0 over the last --decay-frac of the run (the end "
                           "of the run: max-epochs or max-time, whichever comes first)", choices=LR_SCHEDULES)
    decay_frac: float = opt(0.2, "wsd schedule: the fraction of the run over which the rate decays to 0")
    learning_rate_decay: float = opt(0.97, "step schedule: multiply the rate by this every epoch...")
    learning_rate_decay_after: float = opt(10, "...after this many epochs")
    decay_rate: float = opt(0.95, "rmsprop smoothing constant (alpha)")
    weight_decay: float = opt(0.0, "weight decay (decoupled for adamw)")
    grad_clip: float = opt(5.0, "clip the gradient's global norm to this (0: off)")
    max_epochs: float = opt(50.0, "number of full passes over the training split")
    max_time: float = opt(0.0, "wall-clock budget in seconds (0: none)")
    patience: int = opt(0, "stop after this many evaluations without a better val loss (0: never)")
    # scheduled sampling
    use_ss: bool = opt(False, "scheduled sampling: sometimes feed the model its own sampled prediction",
                       group="scheduled sampling")
    start_ss: float = opt(1.0, "initial probability of feeding the true previous character", group="scheduled sampling")
    min_ss: float = opt(0.9, "the probability never decays below this", group="scheduled sampling")
    decay_ss: float = opt(1e-4, "linear decay of the probability per iteration", group="scheduled sampling")
    # run
    init_from: str = opt("", "resume from this checkpoint (model, optimizer, schedule, step, RNG)", group="run")
    seed: int = opt(123, "random seed", group="run")
    print_every: int = opt(10, "iterations between loss read-outs (each costs a device sync)", group="run")
    eval_every: int = opt(1000, "iterations between validation passes and checkpoints", group="run")
    checkpoint_dir: str = opt("cv", "folder for checkpoints", group="run")
    savefile: str = opt("", "checkpoint name prefix (default: lm_<model>)", group="run")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", group="run")
    precision: str = opt("auto", "auto = fp32 (TF32 on CUDA); fp16: CUDA autocast with loss scaling", choices=PRECISIONS, group="run")
    compile: bool = opt(False, "torch.compile the model (Dynamo leaves the RNN layers to cuDNN; slower start)", group="run")

    def validate(self) -> "TrainConfig":
        """Check ranges and combinations; raise ConfigError naming the first bad field."""
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f.name, f"must be one of {', '.join(choices)}; got {excerpt(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number; got {value}")
        positive = ("rnn_size", "num_layers", "seq_length", "batch_size", "learning_rate", "max_epochs",
                    "print_every", "eval_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0; got {excerpt(getattr(self, name))}")
        non_negative = ("min_freq", "embed_size", "weight_decay", "grad_clip", "max_time", "patience",
                        "learning_rate_decay_after", "decay_ss")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0; got {excerpt(getattr(self, name))}")
        from .model import MAX_LAYERS, MAX_WIDTH  # torch is imported only when a config is checked
        for name, top in (("rnn_size", MAX_WIDTH), ("embed_size", MAX_WIDTH), ("num_layers", MAX_LAYERS)):
            if getattr(self, name) > top:
                raise ConfigError(name, f"must be <= {top:,}; got {excerpt(getattr(self, name))}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout}")
        if not 0 < self.train_frac <= 1:
            raise ConfigError("train_frac", f"must be in (0, 1]; got {self.train_frac}")
        if not 0 < self.val_frac < 1:
            raise ConfigError("val_frac", f"must be in (0, 1) (the val split picks the best checkpoint); got {self.val_frac}")
        if self.train_frac + self.val_frac > 1 + 1e-9:
            raise ConfigError("val_frac", f"train_frac + val_frac must be <= 1; got {self.train_frac} + {self.val_frac}")
        if not 0 < self.decay_frac <= 1:
            raise ConfigError("decay_frac", f"must be in (0, 1]; got {self.decay_frac}")
        if not 0 < self.learning_rate_decay <= 1:
            raise ConfigError("learning_rate_decay", f"must be in (0, 1]; got {self.learning_rate_decay}")
        if not 0 < self.decay_rate < 1:
            raise ConfigError("decay_rate", f"must be in (0, 1); got {self.decay_rate}")
        for name in ("start_ss", "min_ss"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(name, f"must be a probability in [0, 1]; got {getattr(self, name)}")
        if self.min_ss > self.start_ss:
            raise ConfigError("min_ss", f"must be <= start_ss ({self.start_ss}); got {self.min_ss}")
        if self.savefile and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", self.savefile):
            raise ConfigError("savefile", f"must be a file name prefix (letters, digits, - _ .), not a path; got "
                                          f"{excerpt(self.savefile)} (--checkpoint-dir chooses the folder)")
        if not DEVICE_NAME.fullmatch(self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N; got {excerpt(self.device)}")
        return self

    @property
    def checkpoint_prefix(self) -> str:
        return self.savefile or f"lm_{self.model}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "") -> "TrainConfig":
        """Build from plain values (a YAML section, a stored checkpoint config), checking names and types."""
        cfg = cls()
        for key, value in values.items():
            setattr(cfg, key, coerce(key, value, where))
        return cfg


FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_type(name: str) -> type:
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def unknown_key(key: str, valid, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1) if len(key) <= 100 else []
    hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(valid))})"
    return ConfigError(f"{where}{key if len(key) <= 60 else key[:60] + '...'}", f"unknown key{hint}")


def coerce(key: str, value, where: str = ""):
    """Check one training option's value against its declared type; ints are accepted for floats."""
    if key not in FIELDS:
        raise unknown_key(key, FIELDS, where)
    kind = field_type(key)
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{where}{key}", f"must be {_type_name(kind)}; got {excerpt(value)}")
    return float(value) if kind is float else value


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}[kind]


def default_of(name: str):
    f = FIELDS[name]
    return f.default if f.default is not MISSING else None


def training_size(cfg: TrainConfig, vocab_size: int) -> tuple[int, int]:
    """(trained parameters, bytes a training run of `cfg` needs), by arithmetic before anything is built.

    In float32 (4 bytes a number), with P trained parameters, V the vocabulary, I the input width,
    L layers of H units with G gate blocks (LSTM 4, GRU 3, RNN 1), B streams of T characters:
        weights, gradients and Adam's two moments       16 P
        the fixed one-hot input table (when one-hot)     4 V I
        activations kept for backward                    4 B T (L (G + 2) H + I + 2 V)
    (per character of a batch: each layer's gates, h and c; the input vector; the logits and their
    gradient). RMSprop keeps one moment, so this is an upper bound for it.
    """
    from .model import GATES, input_size_of, param_count
    arch = {"vocab_size": vocab_size, "model": cfg.model, "rnn_size": cfg.rnn_size, "num_layers": cfg.num_layers,
            "embed_size": cfg.embed_size}
    params = param_count(arch)
    width, fixed = input_size_of(arch)
    per_char = cfg.num_layers * (GATES[cfg.model] + 2) * cfg.rnn_size + width + 2 * vocab_size
    state = 16 * params + (4 * vocab_size * width if fixed else 0)
    return params, state + 4 * cfg.batch_size * cfg.seq_length * per_char


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000


def check_training_size(cfg: TrainConfig, vocab_size: int, limit: int, where: str = "") -> None:
    """Refuse a run whose training memory (see training_size) exceeds `limit` bytes, naming what it needs."""
    params, need = training_size(cfg, vocab_size)
    if need > limit:
        raise UsageError(f"{where}{cfg.model} {cfg.num_layers}x{cfg.rnn_size}"
                         f"{f', embedding {cfg.embed_size}' if cfg.embed_size else ''}, vocabulary {vocab_size}, "
                         f"batch {cfg.batch_size} x seq {cfg.seq_length}: {params:,} parameters, about "
                         f"{human_bytes(need)} to train, more than the {human_bytes(limit)} available; make "
                         f"rnn_size, num_layers, batch_size or seq_length smaller")


# =============================================================================================
# sweep files


SEARCH_KINDS = ("choice", "int", "float", "log_float", "log_int")
# options a sweep manages itself, per trial
SWEEP_MANAGED = {
    "data": "data.corpus", "min_freq": "data.min_freq", "train_frac": "data.train_frac", "val_frac": "data.val_frac",
    "max_epochs": "budget.trial_max_epochs", "max_time": "budget.trial_max_time",
    "eval_every": "scheduler.report_every_epochs", "init_from": "--resume", "checkpoint_dir": "ray.storage",
    "device": "resources.gpu",
}
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


@dataclass
class SearchParam:
    kind: str
    values: list

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {self.values}"
        return f"{self.kind} [{self.values[0]}, {self.values[1]}]"

    def allows(self, value) -> bool:
        """Whether the sampler could draw `value`, of the option's type (ranges include both ends, as
        Tune's do)."""
        if self.kind == "choice":
            return value in self.values
        return self.values[0] <= value <= self.values[1]


@dataclass
class SweepConfig:
    path: str
    name: str
    corpus: str
    min_freq: int = 0
    train_frac: float = 0.9
    val_frac: float = 0.1
    train: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # name -> SearchParam
    algorithm: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None  # TPE: trials drawn at random before it models the results (None: Optuna's 10)
    points_to_evaluate: list = field(default_factory=list)  # the first trials' parameters, then the sampler's
    num_samples: int = 8
    max_concurrent: int = 0  # 0 (key absent): as many as the resources allow
    scheduler: str = "asha"
    time_attr: str = "chars_trained"
    grace_epochs: float = 1.0
    reduction_factor: float = 3.0
    report_every_epochs: float = 0.25
    sweep_time: float = 0.0  # seconds of wall time for the whole sweep; 0: no limit
    trial_max_epochs: float = 10.0
    trial_max_time: float = 0.0
    finish_time: float = 0.0  # seconds the best trial trains on after the search (auto sweeps)
    first_report_s: float = 0.0  # the least time a new trial needs to report once (0: learnt while running)
    auto: bool = False  # search_space: auto (sized by charsearch.autosize at run time)
    cpu: float = 1.0
    gpu: float | str = "auto"
    tracking_uri: str = DEFAULT_TRACKING_URI
    storage: str = "ray_results"
    address: str = ""
    max_failures: int = 0

    def trial_config(self, params: dict) -> TrainConfig:
        """The training options of one trial: defaults < train: < the sampled parameters."""
        params = dict(params)
        if "shape" in params:  # "lstm 2x128": model, layers and width searched as one choice
            params.update(parse_shape(params.pop("shape")))
        cfg = TrainConfig.from_dict({**self.train, **params})
        cfg.data, cfg.min_freq, cfg.train_frac, cfg.val_frac = self.corpus, self.min_freq, self.train_frac, self.val_frac
        cfg.max_epochs, cfg.max_time = self.trial_max_epochs, self.trial_max_time
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["space"] = {k: {p.kind: p.values} for k, p in self.space.items()}
        return d

    def to_file(self) -> dict:
        """The sweep as a sweep file (the layout load_sweep reads): what --dry-run prints."""
        sections: dict = {"name": self.name}
        for section, keys in SWEEP_SCHEMA.items():
            values = {key: getattr(self, attr) for key, (attr, _, _) in keys.items()
                      if getattr(self, attr) not in ("", None, []) and (attr != "max_concurrent" or self.max_concurrent)}
            sections[section] = values
        sections["train"] = dict(self.train)
        sections["search_space"] = {k: {p.kind: p.values} for k, p in self.space.items()}
        order = ("name", "data", "train", "search_space", "search", "scheduler", "budget", "resources", "tracking", "ray")
        return {k: sections[k] for k in order}


# the layout of a sweep file: section -> key -> (SweepConfig attribute, type, check)
def _pos(v):
    return v > 0


def _nonneg(v):
    return v >= 0


SWEEP_SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {"corpus": ("corpus", str, None), "min_freq": ("min_freq", int, _nonneg),
             "train_frac": ("train_frac", float, None), "val_frac": ("val_frac", float, None)},
    "search": {"algorithm": ("algorithm", str, ("tpe", "random")), "seed": ("seed", int, None),
               "num_samples": ("num_samples", int, _pos), "max_concurrent": ("max_concurrent", int, _pos),
               "startup_trials": ("startup_trials", int, _nonneg),
               "points_to_evaluate": ("points_to_evaluate", list, None)},
    "scheduler": {"type": ("scheduler", str, ("asha", "none")),
                  "time_attr": ("time_attr", str, ("chars_trained", "epoch")),
                  "grace_epochs": ("grace_epochs", float, _pos), "reduction_factor": ("reduction_factor", float,
                                                                                      lambda v: v > 1),
                  "report_every_epochs": ("report_every_epochs", float, _pos)},
    "budget": {"sweep_time": ("sweep_time", float, _nonneg), "trial_max_epochs": ("trial_max_epochs", float, _pos),
               "trial_max_time": ("trial_max_time", float, _nonneg), "finish_time": ("finish_time", float, _nonneg),
               "first_report_s": ("first_report_s", float, _nonneg)},
    "resources": {"cpu": ("cpu", float, _pos), "gpu": ("gpu", (float, str), None)},
    "tracking": {"uri": ("tracking_uri", str, None)},
    "ray": {"storage": ("storage", str, None), "address": ("address", str, None),
            "max_failures": ("max_failures", int, _nonneg)},
}
TOP_LEVEL = ("name", "data", "train", "search_space", "search", "scheduler", "budget", "resources", "tracking", "ray")


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # PyYAML keeps the last of two equal keys; a sweep file with both is a mistake to point out
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {excerpt(key.value)}",
                                                                key.start_mark)
                    seen.add((key.tag, key.value))
            return super().construct_mapping(node, deep)

    # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def load_sweep(path: str | Path, data_root: str = "data") -> SweepConfig:
    """Read and validate a sweep file; every problem is one ConfigError naming file, key and problem."""
    import yaml

    from .data import resolve_path

    path = Path(path)
    where = f"{path}: "
    if not path.is_file():
        raise UsageError(f"{path}: no such sweep file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:  # ValueError: an integer of over 4,300 digits
        first = str(e).replace("\n", " ")[:200]
        raise UsageError(f"{path}: not valid YAML ({first})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a sweep file: nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: a sweep file is a YAML mapping with sections {', '.join(TOP_LEVEL)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise unknown_key(str(key), TOP_LEVEL, where)
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise ConfigError(f"{where}name", "required: the experiment name (a non-empty string)")
    name = raw["name"].strip()
    if any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"{where}name", f"must not contain '/' or start with '.'; got {excerpt(name)}")
    sweep = SweepConfig(path=str(path), name=name, corpus="")

    for section, keys in SWEEP_SCHEMA.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}{section}", "must be a mapping of keys to values")
        for key, value in values.items():
            if key not in keys:
                raise unknown_key(str(key), keys, f"{where}{section}.")
            attr, kind, check = keys[key]
            if value is None:
                continue
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ConfigError(f"{where}{section}.{key}",
                                  f"must be {' or '.join(_type_name(k) for k in kinds)}; got {excerpt(value)}")
            if isinstance(check, tuple) and value not in check:
                raise ConfigError(f"{where}{section}.{key}", f"must be one of {', '.join(check)}; got {excerpt(value)}")
            if callable(check) and not check(value):
                raise ConfigError(f"{where}{section}.{key}", f"out of range: {excerpt(value)}")
            setattr(sweep, attr, value)
    if isinstance(sweep.gpu, str) and sweep.gpu != "auto":
        raise ConfigError(f"{where}resources.gpu", f"must be a GPU fraction per trial (e.g. 0.25), 0, or auto; "
                                                   f"got {excerpt(sweep.gpu)}")
    if isinstance(sweep.gpu, float) and sweep.gpu < 0:
        raise ConfigError(f"{where}resources.gpu", f"must be >= 0; got {sweep.gpu}")
    if not sweep.corpus:
        raise ConfigError(f"{where}data.corpus", "required: a text file, a folder with input.txt, or a name under data/")
    try:
        resolve_path(sweep.corpus, data_root)
    except UsageError as e:
        raise ConfigError(f"{where}data.corpus", str(e)) from None

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{where}train", "must be a mapping of training options")
    for key, value in train.items():
        if key in SWEEP_MANAGED:
            raise ConfigError(f"{where}train.{key}", f"set by the sweep; use {SWEEP_MANAGED[key]} instead")
        sweep.train[key] = coerce(key, value, f"{where}train.")

    space = raw.get("search_space") or {}
    if space == "auto":
        if not sweep.sweep_time:
            raise ConfigError(f"{where}budget.sweep_time", "required with search_space: auto (the budget the "
                                                           "search is sized to, in seconds)")
        sweep.auto = True
        if sweep.points_to_evaluate:
            raise ConfigError(f"{where}search.points_to_evaluate", "not with search_space: auto (its space is "
                                                                   "chosen at run time); give a search_space of your own")
        return sweep
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}search_space", "required: at least one training option to search, e.g. "
                                                  "rnn_size: {choice: [128, 256]}")
    for key, spec in space.items():
        sweep.space[key] = _search_param(key, spec, sweep.train, where)

    # every combination the sampler may produce must be a valid training run
    try:
        base = sweep.trial_config({})
        base.validate()
        for key, p in sweep.space.items():
            for value in (p.values if p.kind == "choice" else p.values[:2]):
                probe = TrainConfig.from_dict({**base.to_dict(), **(parse_shape(value) if key == "shape" else {key: value})})
                probe.validate()
    except ConfigError as e:
        section = "search_space" if e.field in sweep.space else "data" if e.field in (
            "train_frac", "val_frac", "min_freq") else "train"
        raise ConfigError(f"{where}{section}.{e.field}", e.problem) from None
    check_points(sweep, where)
    _check_largest_trial(sweep, data_root, where)
    return sweep


def check_points(sweep: SweepConfig, where: str = "") -> None:
    """Each of search.points_to_evaluate is a mapping of searched keys to values the space allows (keys
    left out are drawn by the sampler)."""
    for i, point in enumerate(sweep.points_to_evaluate):
        at = f"{where}search.points_to_evaluate[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(at, f"must be a mapping of searched keys to values, e.g. {{learning_rate: 0.002}}; "
                                  f"got {excerpt(point)}")
        for key, value in point.items():
            if key not in sweep.space:
                raise unknown_key(str(key), sweep.space, f"{at}.")
            if key != "shape":  # the option's own type: 1 is 1.0 for a float option, "x" is refused
                value = point[key] = coerce(key, value, f"{at}.")
            if not sweep.space[key].allows(value):
                raise ConfigError(f"{at}.{key}", f"{excerpt(value)} is outside the search space "
                                                 f"({sweep.space[key].describe()})")


SHAPE = re.compile(r"(rnn|lstm|gru) ([1-9][0-9]*)x([1-9][0-9]*)")


def parse_shape(text) -> dict:
    m = SHAPE.fullmatch(str(text))
    if not m:
        raise ConfigError("shape", f"must read MODEL LAYERSxSIZE, e.g. 'lstm 2x128'; got {str(text)[:40]!r}")
    return {"model": m[1], "num_layers": int(m[2]), "rnn_size": int(m[3])}


# trials may run on a cluster's GPUs rather than here: sizes are checked against the larger of this
# machine's memory and the largest single GPU (141 GB, an H200)
LARGEST_DEVICE = 141 * 10 ** 9
SIZE_KEYS = ("rnn_size", "num_layers", "embed_size", "batch_size", "seq_length")  # memory grows with each


def _check_largest_trial(sweep: SweepConfig, data_root: str, where: str) -> None:
    """Refuse a search space whose largest trial (each size option at its maximum, each cell type)
    cannot train in any device's memory, before a single trial is started."""
    import torch

    from .data import load_corpus
    from .model import memory_bytes
    try:
        vocab = len(load_corpus(sweep.corpus, sweep.min_freq, data_root).vocab)
    except UsageError as e:
        raise ConfigError(f"{where}data.corpus", str(e)) from None
    largest = {k: max(p.values) for k, p in sweep.space.items() if k in SIZE_KEYS}
    # each cell type (or each searched shape) with every size option at its maximum
    variants = ([{"model": m} for m in sweep.space["model"].values] if "model" in sweep.space else
                [{"shape": v} for v in sweep.space["shape"].values] if "shape" in sweep.space else [{}])
    limit = max(memory_bytes(torch.device("cpu")), LARGEST_DEVICE)
    for variant in variants:
        cfg = sweep.trial_config({**largest, **variant})
        try:
            check_training_size(cfg, vocab, limit)
        except UsageError as e:
            at = f"search_space: the largest trial ({', '.join(f'{k} {v}' for k, v in largest.items())}): " \
                if largest else "train: "
            raise UsageError(f"{where}{at}{e}") from None


def _search_param(key: str, spec, train: dict, where: str) -> SearchParam:
    at = f"{where}search_space.{key}"
    if key == "shape":  # model, num_layers and rnn_size as one choice
        if not isinstance(spec, dict) or list(spec) != ["choice"] or not isinstance(spec["choice"], list) \
                or not spec["choice"]:
            raise ConfigError(at, "must be {choice: ['lstm 2x128', 'gru 2x256', ...]}")
        for v in spec["choice"]:
            try:
                parse_shape(v)
            except ConfigError as e:
                raise ConfigError(f"{at}.choice", e.problem) from None
        clash = [k for k in ("model", "num_layers", "rnn_size") if k in train]
        if clash:
            raise ConfigError(at, f"also fixed in train: ({', '.join(clash)}); a key is either fixed or searched")
        return SearchParam("choice", list(spec["choice"]))
    if key not in FIELDS:
        raise unknown_key(str(key), FIELDS, f"{where}search_space.")
    if key in SWEEP_MANAGED:
        raise ConfigError(at, f"set by the sweep, not searchable; use {SWEEP_MANAGED[key]}")
    if key in train:
        raise ConfigError(at, "also fixed in train:; a key is either fixed or searched")
    example = "e.g. {choice: [128, 256]}, {int: [1, 3]}, {float: [0.0, 0.5]} or {log_float: [1.0e-4, 1.0e-2]}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(at, f"must be one distribution, {example}")
    (kind, values), = spec.items()
    if kind not in SEARCH_KINDS:
        raise unknown_key(str(kind), SEARCH_KINDS, f"{at}.")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{at}.{kind}", "must be a non-empty list" if kind == "choice" else "must be [low, high]")
    ftype = field_type(key)
    def checked(v):
        try:
            return coerce(key, v)
        except ConfigError as e:
            raise ConfigError(f"{at}.{kind}", e.problem) from None

    if kind == "choice":
        values = [checked(v) for v in values]
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{at}.choice", f"has duplicates: {excerpt(values)}")
        return SearchParam(kind, values)
    if len(values) != 2:
        raise ConfigError(f"{at}.{kind}", f"must be [low, high]; got {excerpt(values)}")
    if kind in ("int", "log_int") and ftype is not int:
        raise ConfigError(f"{at}.{kind}", f"{key} is {_type_name(ftype)}; use "
                                          f"{'float or log_float' if ftype is float else 'choice'}")
    if kind in ("float", "log_float") and ftype is not float:
        raise ConfigError(f"{at}.{kind}", f"{key} is {_type_name(ftype)}; use "
                                          f"{'int or log_int' if ftype is int else 'choice'}")
    lo, hi = (checked(v) for v in values)
    if not lo < hi:
        raise ConfigError(f"{at}.{kind}", f"empty or inverted range [{lo}, {hi}]: low must be < high")
    if kind.startswith("log") and lo <= 0:
        raise ConfigError(f"{at}.{kind}", f"a log range needs low > 0; got {lo}")
    return SearchParam(kind, [lo, hi])
