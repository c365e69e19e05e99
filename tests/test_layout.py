"""The project's layering, read from the source: models know nothing of tasks or flows,
tasks nothing of flows or the CLI, and no module grows past 600 lines (issue 13)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder on disk -> the package it installs as (pyproject's package-dir)
PACKAGES = {"suti": "suti", "flows": "suti.flows", "tasks": "suti.tasks", "models": "suti.models",
            "world": "suti.world"}
FORBIDDEN = {  # a layer -> what it must not import
    "models": ("suti.tasks", "suti.flows", "suti.cli"),
    "world": ("suti.tasks", "suti.flows", "suti.cli", "suti.models"),
    "tasks": ("suti.flows", "suti.cli"),
}
MAX_LINES = 600


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imported(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (top level or inside functions), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_the_reader_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from suti.tasks import foundation\n    from suti import cli\n")
    names = [n for _, n in imported(f)]
    assert "suti.tasks" in names and "suti.cli" in names and "os" in names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    bad = []
    for path in modules(layer):
        for line, name in imported(path):
            for top in FORBIDDEN[layer]:
                if name == top or name.startswith(top + "."):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_layer_is_read():
    for layer in (*FORBIDDEN, "flows", "suti"):
        assert modules(layer), f"no modules under {layer}/"


def test_no_module_is_over_600_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for folder in PACKAGES for p in modules(folder)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
