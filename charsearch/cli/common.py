"""What the commands share: adding a command, the training options as flags, the tracking store read."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ..config import DEFAULT_TRACKING_URI, FIELDS, ConfigError, TrainConfig, field_type
from ..errors import UsageError


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


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{name: getattr(args, name) for name in FIELDS})
    try:
        return cfg.validate()
    except ConfigError as e:
        raise UsageError(f"{flag(e.field)}: {e.problem}") from None


def recorded_store(uri_flag: str | None) -> str:
    """The tracking URI of a command that reads sweeps: a local SQLite store that does not exist holds
    none, and is not created by looking (resolve_uri's own precedence: flag, environment, default)."""
    from ..tracking import existing_store, resolve_uri
    uri = uri_flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if not existing_store(uri):
        raise UsageError(f"no sweeps recorded in {uri} (no such database): run `charsearch sweep FILE` first, "
                         f"or pass --tracking-uri")
    return resolve_uri(uri_flag)


def positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{name} must be >= 1; got {value}")
    return value
