"""The package's layers import one way (docs/architecture.md): a module may import its own layer's
modules and the layers below it, never a layer above it or a sibling layer."""

from __future__ import annotations

import ast
from pathlib import Path

import cog_pipeline

PACKAGE = Path(cog_pipeline.__file__).resolve().parent

#: Layer -> rank. Equal ranks are siblings: neither may import the other.
RANKS = {"core": 0, "storage": 1, "raster": 1, "htcondor": 1, "work": 2, "control": 3, "ui": 4}


def _layer(module: str) -> str | None:
    """The layer of a dotted ``cog_pipeline.<layer>....`` name (None for the top package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cog_pipeline" else None


def module_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in a file, lazy ones inside functions too; ``from m import
    a, b`` gives ``m.a`` and ``m.b`` when ``m`` is the top package ``cog_pipeline`` (its names are modules), else
    ``m``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            names = [base] if base != "cog_pipeline" else [f"cog_pipeline.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every cog_pipeline import in a file, lazy ones inside functions too."""
    return [(line, name) for line, name in module_imports(path) if name.startswith("cog_pipeline")]


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "workflow":  # an installed wheel's copy of the workflow, not the package
            continue
        own = rel.parts[0] if len(rel.parts) > 1 else None
        if own is None:
            continue  # cog_pipeline/__init__.py: names only
        for line, module in _imports(path):
            other = _layer(module)
            if other is None or other == own or other not in RANKS:
                continue
            if RANKS[other] >= RANKS[own]:
                problems.append(f"{rel}:{line} ({own}) imports {module} ({other})")
    return problems


def test_every_module_lives_in_a_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside a layer package: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} >= set(RANKS)


def test_imports_go_one_way() -> None:
    assert _violations() == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: an import of the UI from core is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cog_pipeline.ui import cli\n")
    assert _imports(bad) == [(2, "cog_pipeline.ui")]
    assert RANKS[_layer("cog_pipeline.ui.cli") or ""] > RANKS["core"]
