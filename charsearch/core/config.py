"""Typed configuration of one training run and of sampling, and their validation.

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
from dataclasses import asdict, dataclass, field, fields

from charsearch.core.errors import UsageError, excerpt

MODELS = ("rnn", "lstm", "gru")
OPTIMIZERS = ("adam", "adamw", "rmsprop")
LR_SCHEDULES = ("step", "cosine", "constant", "wsd")
PRECISIONS = ("auto", "fp32", "fp16")
SOFTMAXES = ("auto", "full", "adaptive")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")  # what --device accepts
DEFAULT_SEED = 123  # of training and of sampling, as char-rnn's


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
    softmax: str = opt("auto", "output layer: full, adaptive (exact, ~3x faster to train over thousands of "
                       "characters), or auto: adaptive from 1,000 distinct characters", choices=SOFTMAXES,
                       group="model")
    tie_weights: bool = opt(False, "tie the output layer's weights to a trained embedding of rnn-size (Press & Wolf "
                            "2017; with a full softmax)", group="model")
    # regularization that only training sees
    embed_dropout: float = opt(0.0, "drop whole characters' input embeddings with this probability, in [0, 1)",
                               group="regularization")
    input_dropout: float = opt(0.0, "locked (variational) dropout on the input: one mask per stream and chunk, in "
                               "[0, 1)", group="regularization")
    weight_drop: float = opt(0.0, "DropConnect on the hidden-to-hidden matrices (AWD-LSTM's weight drop), in [0, 1)",
                             group="regularization")
    # optimisation
    seq_length: int = opt(50, "characters per sequence chunk (truncated BPTT length)")
    batch_size: int = opt(50, "parallel contiguous streams per batch")
    optimizer: str = opt("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = opt(2e-3, "initial learning rate")
    lr_schedule: str = opt("step", "step: char-rnn's per-epoch decay; cosine: to 10%% of the rate at the end of the "
                           "run; wsd: constant, then linearly to 0 over the last --decay-frac of the run (the end "
                           "of the run: max-epochs or max-time, whichever comes first)", choices=LR_SCHEDULES)
    decay_frac: float = opt(0.2, "wsd schedule: the fraction of the run over which the rate decays to 0")
    warmup_iters: int = opt(0, "raise the rate linearly from 0 over the first N iterations, whatever the schedule "
                            "(0: start at the full rate)")
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
    seed: int = opt(DEFAULT_SEED, "random seed", group="run")
    print_every: int = opt(10, "iterations between loss read-outs (each costs a device sync)", group="run")
    eval_every: int = opt(1000, "iterations between validation passes and checkpoints", group="run")
    eval_chars: int = opt(0, "characters of the val split each validation pass scores, in stretches spread evenly "
                          "over it, the same for every model (0: all); for val splits too large to read often",
                          group="run")
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
                        "warmup_iters", "learning_rate_decay_after", "decay_ss", "eval_chars")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0; got {excerpt(getattr(self, name))}")
        from charsearch.core.model import MAX_LAYERS, MAX_WIDTH
        for name, top in (("rnn_size", MAX_WIDTH), ("embed_size", MAX_WIDTH), ("num_layers", MAX_LAYERS)):
            if getattr(self, name) > top:
                raise ConfigError(name, f"must be <= {top:,}; got {excerpt(getattr(self, name))}")
        for name in ("dropout", "embed_dropout", "input_dropout", "weight_drop"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"must be in [0, 1); got {getattr(self, name)}")
        if self.tie_weights and self.softmax == "adaptive":
            raise ConfigError("tie_weights", "needs a full softmax (--softmax full or auto below 1,000 characters)")
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
# where a run is written, resumed from and computed: never a trial's params
PLUMBING = ("init_from", "checkpoint_dir", "device")
# how a run is fed, seeded, logged and computed, not what it learns with: left out where trials are compared
NOT_HYPERPARAMETERS = frozenset({"data", "seed", "print_every", "savefile", "compile", "precision", *PLUMBING})


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: next(a for a in typing.get_args(h) if a is not type(None)) if isinstance(h, types.UnionType) else h
            for name, h in hints.items()}


FIELD_TYPES = _field_types()  # computed once: a choice of many values is checked in linear time


def field_type(name: str) -> type:
    return FIELD_TYPES[name]


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
        raise ConfigError(f"{where}{key}", f"must be {type_name(kind)}; got {excerpt(value)}")
    return float(value) if kind is float else value


def type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}[kind]


def shape_label(model: str, num_layers: int, rnn_size: int) -> str:
    """'lstm 2x128': how a model's shape is written everywhere (sweep files, tables, plans, lines)."""
    return f"{model} {num_layers}x{rnn_size}"


def label_of(config) -> str:
    """The shape of a model's config (a dict) or a TrainConfig."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return shape_label(get("model"), get("num_layers"), get("rnn_size"))


# ---------------------------------------------------------------------------------------------
# sampling

MAX_SEED = 2 ** 63 - 1  # torch.Generator's seed range
MAX_LENGTH = 5000  # the longest sample a request may ask for, unless a server allows another
MAX_PRIME = 1000  # characters of a request's prime text: priming costs a forward pass over them
MAX_CONCURRENT = 2  # samples a server generates at once unless told otherwise


def option(default, help: str, low=None, high=None, valid: str = "", request: str | None = None,
           request_default=None, flag: str | None = None):
    """A sampling option: its default and help (the `sample` flags), its bounds (inclusive; a float's low
    bound exclusive) and their words, and the name and default it has in a request (the web page, the JSON
    API, the MLflow model's input rows), if requests may set it."""
    if not valid and low is not None:
        valid = f">= {low}" if high is None else f"in [{low}, {high:,}]"
    return field(default=default, metadata={"help": help, "low": low, "high": high, "valid": valid, "flag": flag,
                                            "request": request,
                                            "request_default": default if request_default is None else request_default})


@dataclass
class SampleOptions:
    """Every sampling option, declared once: `charsearch sample`'s flags, the fields of a request and the
    MLflow model's input schema are all made from these fields."""
    primetext: str = option("", "text to start from (default: none)", request="prime_text", flag="--primetext")
    length: int = option(2000, "characters to generate", low=0, request="length", request_default=500)
    temperature: float = option(1.0, "> 0; lower is more conservative", low=0.0, request="temperature",
                                valid="> 0 (1 samples as trained, lower is more conservative)")
    top_k: int = option(0, "sample only among the k likeliest characters (0: all)", low=0, valid=">= 0 (0: no cut-off)")
    argmax: bool = option(False, "always take the likeliest character (char-rnn -sample 0)")
    seed: int = option(DEFAULT_SEED, "same seed, same text", low=0, high=MAX_SEED, request="seed",
                       valid="in [0, 2**63 - 1]")
    num_samples: int = option(1, "samples generated together in one batch", low=1)
    stop: str = option("", "end a sample once it produces this string")

    def validate(self) -> "SampleOptions":
        for f in fields(self):
            low, high, v = f.metadata["low"], f.metadata["high"], getattr(self, f.name)
            too_low = low is not None and (v <= low if isinstance(low, float) else v < low)
            if too_low or (high is not None and v > high):
                raise UsageError(f"{flag_of(f)} must be {f.metadata['valid']}; got {excerpt(v)}")
        return self


def flag_of(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


REQUEST_FIELDS = {f.metadata["request"]: f for f in fields(SampleOptions) if f.metadata["request"]}


def request_defaults() -> dict:
    """What a request's absent fields take: the web page shows these, the JSON API applies them."""
    return {name: f.metadata["request_default"] for name, f in REQUEST_FIELDS.items()}


# ---------------------------------------------------------------------------------------------
# a searched option's values (a sweep's search space; the report reads it back)

SEARCH_KINDS = ("choice", "int", "float", "log_float", "log_int")


@dataclass
class SearchParam:
    kind: str  # one of SEARCH_KINDS
    values: list  # a choice's values, or a range's two ends (both included)

    @property
    def integer(self) -> bool:
        return self.kind in ("int", "log_int")

    @property
    def log(self) -> bool:
        """Drawn uniformly in log space."""
        return self.kind.startswith("log_")

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

    def extremes(self) -> list:
        """The values that bound what a draw can be: a range's ends; a numeric choice's least and
        greatest; every value of any other choice."""
        if self.kind != "choice":
            return list(self.values)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values):
            return sorted({min(self.values), max(self.values)})
        return list(self.values)
