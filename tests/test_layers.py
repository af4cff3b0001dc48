"""The package's layers stay layers: each folder imports only the layers below it (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charsearch"
# a layer -> the charsearch layers it may import, and the libraries it must not
RULES = {
    "core": ({"core"}, {"ray", "optuna", "mlflow"}),
    "tracking": ({"core", "tracking"}, {"ray", "optuna"}),
    "search": ({"core", "tracking", "search"}, set()),
    "ship": ({"core", "tracking", "ship"}, {"ray"}),
    "serve": ({"core"}, {"ray", "optuna", "mlflow"}),
    "ui": ({"core", "tracking", "ship"}, {"ray", "optuna"}),
    "cli": ({"core", "tracking", "search", "ship", "serve", "ui", "cli", "api"}, set()),
    "api": ({"core", "tracking", "search", "ship"}, set()),
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path):
    """(line, absolute module) of every import in a file, at any depth (functions import lazily too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (the layers read from absolute ones)"
            yield from ((node.lineno, f"{node.module}.{a.name}") for a in node.names)


def test_every_module_belongs_to_a_layer():
    top = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith("__") and (p.is_dir() or p.suffix == ".py"))
    assert [p for p in top if p.removesuffix(".py") not in RULES] == []


@pytest.mark.parametrize("layer", sorted(RULES))
def test_a_layer_imports_only_the_layers_below_it(layer):
    allowed, banned = RULES[layer]
    files = [p for p in PACKAGE.rglob("*.py") if layer_of(p) == layer]
    assert files
    wrong = []
    for path in files:
        for line, name in imports(path):
            parts = name.split(".")
            if parts[0] == "charsearch" and len(parts) > 1 and parts[1] not in allowed | {"__version__"}:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
            if parts[0] in banned:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {parts[0]}")
    assert not wrong, "\n".join(wrong)
