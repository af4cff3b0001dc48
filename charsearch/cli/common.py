"""What the commands share: adding a command, the training options as flags, the tracking store read."""

from __future__ import annotations

import argparse
from dataclasses import fields

from charsearch.core.config import FIELDS, ConfigError, SampleOptions, TrainConfig, field_type, flag_of
from charsearch.core.errors import UsageError


def command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand whose errors point at its own --help, handled by `func(args)`."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func, parser=p)
    return p


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(p: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(f.metadata["group"] + " options"))
        kind = field_type(f.name)
        help_text = f.metadata["help"] + ("" if kind is bool else " (default: %(default)s)")
        if kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            group.add_argument(flag(f.name), type=kind, default=f.default, choices=f.metadata["choices"],
                               metavar=None if f.metadata["choices"] else f.name.upper(), help=help_text)


def add_sample_options(p: argparse.ArgumentParser) -> None:
    """`charsearch sample`'s flags, one per SampleOptions field."""
    for f in fields(SampleOptions):
        kind = field_type_of(f)
        if kind is bool:
            p.add_argument(flag_of(f), action="store_true", dest=f.name, help=f.metadata["help"])
        else:
            p.add_argument(flag_of(f), type=kind, default=f.default, dest=f.name,
                           help=f.metadata["help"] + (" (default: %(default)s)" if f.default != "" else ""))


def sample_options_from_args(args: argparse.Namespace) -> SampleOptions:
    return SampleOptions(**{f.name: getattr(args, f.name) for f in fields(SampleOptions)})


def field_type_of(f) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[f.type]


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{name: getattr(args, name) for name in FIELDS})
    try:
        return cfg.validate()
    except ConfigError as e:
        raise UsageError(f"{flag(e.field)}: {e.problem}") from None


def positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{name} must be >= 1; got {value}")
    return value
