"""Shared by the benchmark scripts: where results go and what machine produced them."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "BENCHMARKS.md"
PLOTS = ROOT / "benchmarks" / "plots"
SHAKESPEARE = Path(os.environ.get("CHARSEARCH_SHAKESPEARE", ROOT.parent / "shared/data/tinyshakespeare/input.txt"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def corpus_text() -> str:
    if not SHAKESPEARE.is_file():
        sys.exit(f"tiny-shakespeare not found at {SHAKESPEARE}: set CHARSEARCH_SHAKESPEARE or run "
                 f"`charsearch data fetch tinyshakespeare` and point it at data/tinyshakespeare/input.txt")
    return SHAKESPEARE.read_text(encoding="utf-8")


def write_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or add) one benchmark's section of BENCHMARKS.md, keeping the others."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = (f"{start}\n## {title}\n\n{body.strip()}\n\nMeasured {date.today().isoformat()} on {machine()}.  \n"
               f"Reproduce: `{command}`\n{end}")
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else (
        "# Benchmarks\n\nEach section is written by the script under benchmarks/ named in its last line; "
        "the scripts compare side by side in one run. Absolute numbers hold only for the machine named.\n")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def table(rows: list[dict]) -> str:
    """A Markdown table of every column any row has, in first-seen order ('-' where a row has none)."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) if c in r else "-" for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def save_json(name: str, data) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    (PLOTS / f"{name}.json").write_text(json.dumps(data, indent=1))


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def bar_chart(name: str, bars: dict[str, float], xlabel: str, title: str) -> str:
    """Horizontal bars (label -> value) saved as benchmarks/plots/<name>.png; returns the Markdown image line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels, values = list(bars)[::-1], list(bars.values())[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.2))
    ax.barh(labels, values, color="#4878a8")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.set_xlim(0, max(values) * 1.15)
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![{title}](benchmarks/plots/{name}.png)"

