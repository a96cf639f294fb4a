"""The monorepo's shape: packaging lists every package and dependencies point one way."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"panformer": ROOT / "packages", "shared_attention": ROOT / "shared_attention",
         "panformer_kernels": ROOT / "kernels"}
NOT_DOMAINS = {"engine", "__pycache__"}


def package_names() -> set[str]:
    names = set()
    for top, folder in ROOTS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            names.add(".".join((top, *rel)))
    return names


def imported_modules(folder: Path) -> dict[Path, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module)
        found[path] = mods
    return found


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert package_names() == listed


def test_domains_do_not_import_each_other():
    domains = {p.name for p in (ROOT / "packages").iterdir() if (p / "__init__.py").exists()} - NOT_DOMAINS
    for domain in domains:
        for path, mods in imported_modules(ROOT / "packages" / domain).items():
            for other in domains - {domain}:
                bad = {m for m in mods if m == f"panformer.{other}" or m.startswith(f"panformer.{other}.")}
                assert not bad, f"{path} imports another domain: {bad}"


def test_dependencies_point_one_way():
    for path, mods in imported_modules(ROOT / "shared_attention").items():
        assert not {m for m in mods if m.split(".")[0] == "panformer"}, f"{path} imports the packages layer"
    for path, mods in imported_modules(ROOT / "kernels").items():
        assert not {m for m in mods if m.split(".")[0] in {"panformer", "shared_attention"}}, path
    for path, mods in imported_modules(ROOT / "packages" / "engine").items():
        assert not {m for m in mods if m.split(".")[0] == "panformer" and m.split(".")[1:2]
                    and m.split(".")[1] not in NOT_DOMAINS}, f"{path}: the engine imports a domain"
