"""The `charsearch` command: parse, call, print. Each command's parser sits beside its handler (one module
for the commands of the ML core, one for sweeps and what reads them); heavy libraries are imported by
the commands that need them, so `charsearch sample` starts without Ray or MLflow."""

from __future__ import annotations

import argparse
import difflib
import sys

from charsearch.cli import model_commands, sweep_commands
from charsearch.core.errors import UsageError

COMMANDS = (*model_commands.COMMANDS, *sweep_commands.COMMANDS)  # each adds its parser to the subparsers


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, with the closest valid flag of the command it was
    given to and a pointer to that command's --help, and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(ns, "parser", self)  # the deepest (sub)command given
            flags = [o for a in command._actions for o in a.option_strings]
            close = difflib.get_close_matches(extras[0].split("=", 1)[0], flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close and extras[0].startswith("-") else ""
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns


def build_parser() -> Parser:
    p = Parser(prog="charsearch", description="Find, train and ship character-level RNN language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UsageError as e:
        print(f"charsearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"charsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `charsearch sample ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a path that cannot be read or written: a folder given for a file, no permission, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"charsearch {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
