"""MkDocs hooks: the references generated from the code that they describe, so neither can drift from it.

    <!-- generated: cli -->         every command's flags, from charsearch's argparse parsers
    <!-- generated: sweep-file -->  every sweep-file key, from the schema the loader validates with
and the benchmark plots BENCHMARKS.md shows, added to the site from benchmarks/plots/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "plots").glob("*.png")):
        files.append(File(f"benchmarks/plots/{png.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: sweep-file -->" in markdown:
        markdown = markdown.replace("<!-- generated: sweep-file -->", sweep_file_reference())
    return markdown


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    from charsearch.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, command in sub.choices.items():
        helps = {a.dest: a.help for a in sub._choices_actions}
        out += [f"## charsearch {name}", "", cell(helps.get(name, "")), "",
                "| flag | what it does | default |", "|---|---|---|"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.dest.upper()}`"
            if action.choices and not isinstance(action, argparse.BooleanOptionalAction):
                flags += " " + "\\|".join(map(str, action.choices))
            text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
            default = "" if action.default in (None, "", argparse.SUPPRESS) or action.option_strings == [] \
                else f"`{action.default}`"
            out.append(f"| {flags} | {cell(text)} | {default} |")
        out.append("")
    return "\n".join(out)


def sweep_file_reference() -> str:
    from charsearch.search.sweepfile import SWEEP_HELP, SWEEP_SCHEMA, SweepConfig
    defaults = SweepConfig(path="", name="x", corpus="")
    out = ["| key | type | what it does | default |", "|---|---|---|---|"]
    for section, keys in SWEEP_SCHEMA.items():
        for key, (attr, kind, check) in keys.items():
            kinds = kind if isinstance(kind, tuple) else (kind,)
            valid = " \\| ".join(check) if isinstance(check, tuple) else " or ".join(k.__name__ for k in kinds)
            default = getattr(defaults, attr)
            out.append(f"| `{section}.{key}` | {cell(valid)} | {cell(SWEEP_HELP[f'{section}.{key}'])} | "
                       f"{'' if default in ('', None, []) else f'`{default}`'} |")
    return "\n".join(out)
