"""The documentation site builds with --strict (a broken link, a missing page or a reference that no longer
matches the code fails it), and every sweep-file key has its line in the generated reference."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]' to build the site")
    pytest.importorskip("material", reason="pip install -e '.[docs]' to build the site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--tie-weights" in cli and "--max-concurrent" in cli  # generated from the parsers
    assert "search.warm_start" in (tmp_path / "site" / "sweep-file" / "index.html").read_text()


def test_every_sweep_file_key_is_described():
    from charsearch.search.sweepfile import SWEEP_HELP, SWEEP_SCHEMA
    keys = {f"{section}.{key}" for section, keys in SWEEP_SCHEMA.items() for key in keys}
    assert keys == set(SWEEP_HELP)


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
