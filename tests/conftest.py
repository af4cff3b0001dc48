import os
import random
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(os.environ.get("CHARSEARCH_SHAKESPEARE", ROOT.parent / "shared/data/tinyshakespeare/input.txt"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny-shakespeare not found at {SHAKESPEARE} (set CHARSEARCH_SHAKESPEARE)")
    return SHAKESPEARE


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run the test inside an empty folder (data/, cv/, mlruns/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text: a small grammar of words, so a model can learn something."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "hat", "with", "fox"]
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    p = tmp_path / "small" / "input.txt"
    p.parent.mkdir()
    p.write_text(make_text(30_000), encoding="utf-8")
    return p


@pytest.fixture
def shakespeare_slice(tmp_path, shakespeare) -> Path:
    """The first 200k characters of tiny-shakespeare, copied into the test's folder."""
    p = tmp_path / "shakespeare200k" / "input.txt"
    p.parent.mkdir()
    p.write_text(shakespeare.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return p


def copy_shakespeare(dest_root: Path, shakespeare: Path) -> Path:
    dest = dest_root / "data" / "tinyshakespeare" / "input.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shakespeare, dest)
    return dest
