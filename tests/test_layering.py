"""Architecture rules: the CLI holds no core imports at module level; models import nothing else of ours."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_CLI_TOP = {"typer", "rich", "click", "edgesam_cli", "__future__"}


def _top_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _all_imports(path: Path) -> list[str]:
    """Every import in the file (also inside functions), relative ones resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    if package[-1] != "__init__":
        package = package[:-1]
    else:
        package = package[:-1]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            else:
                base = package[: len(package) - (node.level - 1)]
                names.append(".".join(base + ([node.module] if node.module else [])))
    return names


def test_cli_modules_import_only_light_packages_at_top():
    import sys

    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in (ROOT / "edgesam_cli").rglob("*.py"):
        for name in _top_level_imports(path):
            top = name.split(".")[0]
            if top not in ALLOWED_CLI_TOP and top not in stdlib:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_models_depend_on_nothing_else_of_ours():
    offenders = []
    for path in (ROOT / "edgesam_core" / "models").rglob("*.py"):
        for name in _all_imports(path):
            if name.startswith("edgesam_core") and not name.startswith(("edgesam_core.models", "edgesam_core.errors")):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
            if name.startswith("edgesam_cli"):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_core_never_imports_cli():
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in (ROOT / "edgesam_core").rglob("*.py")
        for n in _all_imports(p)
        if n.startswith("edgesam_cli")
    ]
    assert not offenders, offenders
