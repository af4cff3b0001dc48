"""Sweep files: the YAML a user writes (sweeps/*.yaml), read into a `SweepConfig` and validated before
anything starts. Every problem is one `ConfigError` naming the file, the key and what would be valid.

The layout is one table (SWEEP_SCHEMA: section -> key -> attribute, type, check); the loader reads a
file in steps: the YAML (bounded in size), the name, the plain sections, the fixed training options,
the search space, then the checks across keys (every draw the sampler can make is a valid run, the
first points lie in the space, the largest trial fits some device's memory).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charsearch.core.config import (
    FIELDS,
    SEARCH_KINDS,
    ConfigError,
    SearchParam,
    TrainConfig,
    coerce,
    field_type,
    type_name,
    unknown_key,
)
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.model import MAX_LAYERS, MAX_WIDTH
from charsearch.tracking.store import DEFAULT_TRACKING_URI

# options a sweep manages itself, per trial
SWEEP_MANAGED = {
    "data": "data.corpus", "min_freq": "data.min_freq", "train_frac": "data.train_frac", "val_frac": "data.val_frac",
    "max_epochs": "budget.trial_max_epochs", "max_time": "budget.trial_max_time",
    "eval_every": "scheduler.report_every_epochs", "init_from": "--resume", "checkpoint_dir": "ray.storage",
    "device": "resources.gpu",
}
# options whose value must be the same for every trial
SAME_FOR_ALL = {"eval_chars": "trials scored on different parts of the val split would not compare"}
MAX_FILE_BYTES = 1_000_000  # a sweep file is a page of YAML; this bounds the parser's time and memory
MAX_CHOICES = 1_000  # values of one choice (or points to evaluate): a search compares tens of trials
MAX_NAME = 100  # characters: the name is an MLflow experiment, a folder and part of every summary line


@dataclass
class SweepConfig:
    path: str
    name: str
    corpus: str
    min_freq: int = 0
    train_frac: float = TrainConfig.train_frac
    val_frac: float = TrainConfig.val_frac
    test_frac: float = 0.0  # held out: never trained on, never used to choose (charsearch best shows it)
    train: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # name -> SearchParam
    algorithm: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None  # TPE: trials drawn at random before it models the results (None: Optuna's 10)
    points_to_evaluate: list = field(default_factory=list)  # the first trials' parameters, then the sampler's
    warm_start: bool | None = None  # start from the last finished sweep like it (search/warm.py); None: auto sweeps do
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
    max_failures: int | None = None  # None: 0, or autosize.AUTO_MAX_FAILURES for an auto sweep

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
            sections[section] = {key: getattr(self, attr) for key, (attr, _, _) in keys.items()
                                 if getattr(self, attr) not in ("", None, [])
                                 and (attr != "max_concurrent" or self.max_concurrent)}
        sections["train"] = dict(self.train)
        sections["search_space"] = {k: {p.kind: p.values} for k, p in self.space.items()}
        return {k: sections[k] for k in TOP_LEVEL}


# the layout of a sweep file: section -> key -> (SweepConfig attribute, type, check)
def _pos(v):
    return v > 0


def _nonneg(v):
    return v >= 0


SWEEP_SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {"corpus": ("corpus", str, None), "min_freq": ("min_freq", int, _nonneg),
             "train_frac": ("train_frac", float, None), "val_frac": ("val_frac", float, None),
             "test_frac": ("test_frac", float, lambda v: 0 <= v < 1)},
    "search": {"algorithm": ("algorithm", str, ("tpe", "random")), "seed": ("seed", int, None),
               "num_samples": ("num_samples", int, _pos), "max_concurrent": ("max_concurrent", int, _pos),
               "startup_trials": ("startup_trials", int, _nonneg),
               "points_to_evaluate": ("points_to_evaluate", list, None),
               "warm_start": ("warm_start", bool, None)},
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
# what each key of SWEEP_SCHEMA does, for the sweep-file reference (docs: a test checks every key has one)
SWEEP_HELP = {
    "data.corpus": "the corpus: a UTF-8 text file, a folder holding input.txt, or a name under data/",
    "data.min_freq": "characters seen fewer times become one unknown symbol (0: keep all)",
    "data.train_frac": "the share of the corpus trained on, from its start",
    "data.val_frac": "the share after it that chooses checkpoints and ranks trials",
    "data.test_frac": "the share at the end that selection never sees (best shows its loss); alone, train is "
                      "what is left",
    "search.algorithm": "tpe: Optuna's TPE sampler; random: random search",
    "search.seed": "the sampler's seed",
    "search.num_samples": "trials to run, unless the budget ends the search first",
    "search.max_concurrent": "trials at once (default: as many as the resources allow)",
    "search.startup_trials": "finished trials TPE draws at random before it models the results (Optuna's "
                             "n_startup_trials)",
    "search.points_to_evaluate": "parameter sets run first, each inside the search space",
    "search.warm_start": "start from the last finished sweep of this name, corpus and budget",
    "scheduler.type": "asha: stop bad trials early; none: every trial runs to its own end",
    "scheduler.time_attr": "ASHA's time axis: chars_trained (fair across shapes) or epoch",
    "scheduler.grace_epochs": "epochs before ASHA may stop a trial",
    "scheduler.reduction_factor": "ASHA keeps 1 in this many trials at each rung",
    "scheduler.report_every_epochs": "how often each trial evaluates, checkpoints and reports",
    "budget.sweep_time": "seconds of wall time for the whole sweep (0: no limit)",
    "budget.trial_max_epochs": "epochs a trial trains at most",
    "budget.trial_max_time": "seconds a trial trains at most (0: no limit)",
    "budget.finish_time": "seconds at the end in which the best trial trains on, its rate decaying to 0",
    "budget.first_report_s": "seconds a new trial needs to report once: none starts later in the window",
    "resources.cpu": "CPUs per trial",
    "resources.gpu": "GPU share per trial (0.125: eight trials per GPU), or auto: by model size",
    "tracking.uri": "the MLflow tracking store (sqlite:///..., http://host:port, a database URI)",
    "ray.storage": "where Ray keeps the experiment and checkpoints: a folder, or a URI (s3://...)",
    "ray.address": "a Ray cluster to run on (auto: the one on this machine)",
    "ray.max_failures": "times a failed trial is retried from its last checkpoint (default 0; 2 in an auto sweep)",
}


# ---------------------------------------------------------------------------------------------
# the loader, step by step


def load_sweep(path: str | Path, data_root: str = "data") -> SweepConfig:
    """Read and validate a sweep file; every problem is one ConfigError naming file, key and problem."""
    path = Path(path)
    return parse_sweep(read_yaml(path), str(path), data_root)


def parse_sweep(raw, path: str = "", data_root: str = "data") -> SweepConfig:
    """A SweepConfig from a sweep file's content (`path`: the file, for error lines and the record)."""
    where = f"{path}: " if path else ""
    if not isinstance(raw, dict):
        raise UsageError(f"{path or 'sweep'}: a sweep file is a YAML mapping with sections {', '.join(TOP_LEVEL)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise unknown_key(str(key), TOP_LEVEL, where)
    sweep = SweepConfig(path=path, name=check_name(raw.get("name"), f"{where}name"), corpus="")
    _read_sections(raw, sweep, where)
    set_splits(sweep, "train_frac" in (raw.get("data") or {}), "test_frac" in (raw.get("data") or {}), where)
    _check_resources_and_corpus(sweep, data_root, where)
    _read_train(raw.get("train") or {}, sweep, where)
    space = raw.get("search_space") or {}
    if space == "auto":
        return _auto(sweep, where)
    _read_space(space, sweep, where)
    _check_draws(sweep, where)
    check_points(sweep, where)
    _check_largest_trial(sweep, data_root, where)
    return sweep


def read_yaml(path: Path):
    """The file's YAML, refused in one line when it is not a bounded, readable YAML document."""
    import yaml
    if not path.is_file():
        raise UsageError(f"{path}: no such sweep file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{path}: {size:,} bytes; a sweep file is at most {MAX_FILE_BYTES:,} bytes (a page of "
                         f"YAML, e.g. sweeps/smoke.yaml)")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:  # ValueError: an integer of over 4,300 digits
        first = str(e).replace("\n", " ")[:200]
        raise UsageError(f"{path}: not valid YAML ({first})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a sweep file: nested too deeply to read") from None


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


def check_name(name, where: str = "name") -> str:
    """A sweep's name: an MLflow experiment, a folder under ray.storage and a word of one-line summaries."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(where, "required: the experiment name (a non-empty string)")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable() or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(where, f"must be 1 to {MAX_NAME} printable characters on one line, without '/' or '\\' "
                                 f"and not starting with '.'; got {excerpt(name)}")
    return name


def _read_sections(raw: dict, sweep: SweepConfig, where: str) -> None:
    """The plain sections (data, search, scheduler, budget, resources, tracking, ray), by SWEEP_SCHEMA."""
    for section, keys in SWEEP_SCHEMA.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}{section}", "must be a mapping of keys to values")
        for key, value in values.items():
            if key not in keys:
                raise unknown_key(str(key), keys, f"{where}{section}.")
            if value is not None:
                attr, kind, check = keys[key]
                setattr(sweep, attr, _checked_value(value, kind, check, f"{where}{section}.{key}"))


def set_splits(sweep: SweepConfig, train_given: bool, test_given: bool, where: str = "") -> None:
    """The three contiguous splits (train, val, test at the end): test_frac given alone makes the train
    split what is left; without it, the test split is what train and val leave."""
    if test_given and not train_given:
        sweep.train_frac = round(1.0 - sweep.val_frac - sweep.test_frac, 10)
    elif not test_given:  # (train + val > 1 is refused with the training options' own check)
        sweep.test_frac = round(max(0.0, 1.0 - sweep.train_frac - sweep.val_frac), 10)
        return
    if abs(sweep.train_frac + sweep.val_frac + sweep.test_frac - 1.0) > 1e-9 or sweep.train_frac <= 0:
        raise ConfigError(f"{where}data", f"train_frac {sweep.train_frac} + val_frac {sweep.val_frac} + test_frac "
                                          f"{sweep.test_frac} must be 1 with a train split (give test_frac and val_frac "
                                          f"alone: train is what is left)")


def _checked_value(value, kind, check, at: str):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(at, f"must be {' or '.join(type_name(k) for k in kinds)}; got {excerpt(value)}")
    if isinstance(check, tuple) and value not in check:
        raise ConfigError(at, f"must be one of {', '.join(check)}; got {excerpt(value)}")
    if callable(check) and not check(value):
        raise ConfigError(at, f"out of range: {excerpt(value)}")
    if isinstance(value, list) and len(value) > MAX_CHOICES:
        raise ConfigError(at, f"has {len(value):,} entries; at most {MAX_CHOICES:,}")
    return value


def _check_resources_and_corpus(sweep: SweepConfig, data_root: str, where: str) -> None:
    from charsearch.core.data import resolve_path
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


def _read_train(train, sweep: SweepConfig, where: str) -> None:
    if not isinstance(train, dict):
        raise ConfigError(f"{where}train", "must be a mapping of training options")
    for key, value in train.items():
        if key in SWEEP_MANAGED:
            raise ConfigError(f"{where}train.{key}", f"set by the sweep; use {SWEEP_MANAGED[key]} instead")
        sweep.train[key] = coerce(key, value, f"{where}train.")


def _auto(sweep: SweepConfig, where: str) -> SweepConfig:
    if not sweep.sweep_time:
        raise ConfigError(f"{where}budget.sweep_time", "required with search_space: auto (the budget the "
                                                       "search is sized to, in seconds)")
    if sweep.points_to_evaluate:
        raise ConfigError(f"{where}search.points_to_evaluate", "not with search_space: auto (its space is "
                                                               "chosen at run time); give a search_space of your own")
    sweep.auto = True
    return sweep


def _read_space(space, sweep: SweepConfig, where: str) -> None:
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}search_space", "required: at least one training option to search, e.g. "
                                                  "rnn_size: {choice: [128, 256]}")
    for key, spec in space.items():
        sweep.space[key] = _search_param(key, spec, sweep.train, where)


def _search_param(key: str, spec, train: dict, where: str) -> SearchParam:
    at = f"{where}search_space.{key}"
    if key == "shape":  # model, num_layers and rnn_size as one choice
        return _shape_param(spec, train, at)
    if key not in FIELDS:
        raise unknown_key(str(key), FIELDS, f"{where}search_space.")
    if key in SWEEP_MANAGED:
        raise ConfigError(at, f"set by the sweep, not searchable; use {SWEEP_MANAGED[key]}")
    if key in train:
        raise ConfigError(at, "also fixed in train:; a key is either fixed or searched")
    if key in SAME_FOR_ALL:
        raise ConfigError(at, f"not searchable: {SAME_FOR_ALL[key]}; fix it in train: instead")
    example = "e.g. {choice: [128, 256]}, {int: [1, 3]}, {float: [0.0, 0.5]} or {log_float: [1.0e-4, 1.0e-2]}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(at, f"must be one distribution, {example}")
    (kind, values), = spec.items()
    if kind not in SEARCH_KINDS:
        raise unknown_key(str(kind), SEARCH_KINDS, f"{at}.")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{at}.{kind}", "must be a non-empty list" if kind == "choice" else "must be [low, high]")
    if len(values) > MAX_CHOICES:
        raise ConfigError(f"{at}.{kind}", f"has {len(values):,} values; at most {MAX_CHOICES:,} (a search compares "
                                          f"tens of trials)")

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
    return SearchParam(kind, _range(key, kind, [checked(v) for v in values] if len(values) == 2 else values,
                                    f"{at}.{kind}"))


def _range(key: str, kind: str, values: list, at: str) -> list:
    if len(values) != 2:
        raise ConfigError(at, f"must be [low, high]; got {excerpt(values)}")
    ftype, p = field_type(key), SearchParam(kind, values)
    if p.integer and ftype is not int:
        raise ConfigError(at, f"{key} is {type_name(ftype)}; use {'float or log_float' if ftype is float else 'choice'}")
    if not p.integer and ftype is not float:
        raise ConfigError(at, f"{key} is {type_name(ftype)}; use {'int or log_int' if ftype is int else 'choice'}")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(at, f"empty or inverted range [{lo}, {hi}]: low must be < high")
    if p.log and lo <= 0:
        raise ConfigError(at, f"a log range needs low > 0; got {lo}")
    return [lo, hi]


def _shape_param(spec, train: dict, at: str) -> SearchParam:
    if not isinstance(spec, dict) or list(spec) != ["choice"] or not isinstance(spec["choice"], list) \
            or not spec["choice"]:
        raise ConfigError(at, "must be {choice: ['lstm 2x128', 'gru 2x256', ...]}")
    if len(spec["choice"]) > MAX_CHOICES:
        raise ConfigError(f"{at}.choice", f"has {len(spec['choice']):,} values; at most {MAX_CHOICES:,}")
    for v in spec["choice"]:
        try:
            parse_shape(v)
        except ConfigError as e:
            raise ConfigError(f"{at}.choice", e.problem) from None
    clash = [k for k in ("model", "num_layers", "rnn_size") if k in train]
    if clash:
        raise ConfigError(at, f"also fixed in train: ({', '.join(clash)}); a key is either fixed or searched")
    return SearchParam("choice", list(spec["choice"]))


def _check_draws(sweep: SweepConfig, where: str) -> None:
    """Every draw the sampler can make must be a valid training run. Each searched key is tried at
    each of its extremes alone, then every two keys at each pair of extremes (the rules between keys,
    such as min_ss <= start_ss, involve two keys and hold or fail at the ends of their ranges)."""
    def probe(draw: dict) -> None:
        values = {}
        for k, v in draw.items():
            values.update(parse_shape(v) if k == "shape" else {k: v})
        TrainConfig.from_dict({**base.to_dict(), **values}).validate()

    try:
        base = sweep.trial_config({})
        base.validate()
    except ConfigError as e:
        section = "data" if e.field in ("train_frac", "val_frac", "min_freq") else "train"
        raise ConfigError(f"{where}{section}.{e.field}", e.problem) from None
    ends = {k: p.extremes() for k, p in sweep.space.items()}
    draws = [{k: v} for k, vs in ends.items() for v in vs]
    draws += [{a: x, b: y} for a, b in itertools.combinations(ends, 2) for x in ends[a] for y in ends[b]]
    for draw in draws:
        try:
            probe(draw)
        except ConfigError as e:
            key = e.field if e.field in sweep.space else next(iter(draw))
            pair = f" (a draw of {', '.join(f'{k} {v}' for k, v in draw.items())})" if len(draw) > 1 else ""
            raise ConfigError(f"{where}search_space.{key}", f"{e.problem}{pair}") from None


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
    m = SHAPE.fullmatch(str(text)) if len(str(text)) <= 40 else None
    if not m:
        raise ConfigError("shape", f"must read MODEL LAYERSxSIZE, e.g. 'lstm 2x128'; got {str(text)[:40]!r}")
    layers, size = int(m[2]), int(m[3])
    if not (1 <= layers <= MAX_LAYERS and 1 <= size <= MAX_WIDTH):
        raise ConfigError("shape", f"{m[0]!r}: layers must be 1 to {MAX_LAYERS} and the size 1 to {MAX_WIDTH:,}")
    return {"model": m[1], "num_layers": layers, "rnn_size": size}


# trials may run on a cluster's GPUs rather than here: sizes are checked against the larger of this
# machine's memory and the largest single GPU (141 GB, an H200)
LARGEST_DEVICE = 141 * 10 ** 9
SIZE_KEYS = ("rnn_size", "num_layers", "embed_size", "batch_size", "seq_length")  # memory grows with each


def _check_largest_trial(sweep: SweepConfig, data_root: str, where: str) -> None:
    """Refuse a search space whose largest trial (each size option at its maximum, each cell type)
    cannot train in any device's memory, before a single trial is started."""
    import torch

    from charsearch.core.data import load_corpus
    from charsearch.core.devices import check_training_size, total_bytes
    try:
        vocab = len(load_corpus(sweep.corpus, sweep.min_freq, data_root).vocab)
    except UsageError as e:
        raise ConfigError(f"{where}data.corpus", str(e)) from None
    largest = {k: max(p.values) for k, p in sweep.space.items() if k in SIZE_KEYS}
    # each cell type (or each searched shape) with every size option at its maximum
    variants = ([{"model": m} for m in sweep.space["model"].values] if "model" in sweep.space else
                [{"shape": v} for v in sweep.space["shape"].values] if "shape" in sweep.space else [{}])
    limit = max(total_bytes(torch.device("cpu")), LARGEST_DEVICE)
    for variant in variants:
        cfg = sweep.trial_config({**largest, **variant})
        try:
            check_training_size(cfg, vocab, limit)
        except UsageError as e:
            at = f"search_space: the largest trial ({', '.join(f'{k} {v}' for k, v in largest.items())}): " \
                if largest else "train: "
            raise UsageError(f"{where}{at}{e}") from None


def checked_corpus(sweep: SweepConfig):
    """The corpus, refused when the largest batch the search may pick does not fit its train split, when
    its val split is too small to score, or when a test split asked for rounds to (almost) nothing. The dry
    run and the sweep check the same."""
    from charsearch.core.data import MIN_EVAL_CHARS, check_fits, check_val, load_corpus
    corpus = load_corpus(sweep.corpus, sweep.min_freq)
    train_ids, val_ids, test_ids = corpus.split(sweep.train_frac, sweep.val_frac)
    check_fits(len(train_ids), largest(sweep, "batch_size"), largest(sweep, "seq_length"), corpus.path)
    check_val(len(val_ids), sweep.val_frac, corpus.path)
    if sweep.test_frac > 0 and len(test_ids) < MIN_EVAL_CHARS:
        raise UsageError(f"{corpus.path}: test_frac {sweep.test_frac:g} gives a test split of {len(test_ids)} "
                         f"characters; scoring needs at least {MIN_EVAL_CHARS} (raise it, or 0 for no test split)")
    return corpus


def largest(sweep: SweepConfig, key: str) -> int:
    p = sweep.space.get(key)
    return max(p.values) if p is not None else getattr(sweep.trial_config({}), key)
