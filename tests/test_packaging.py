"""What a non-editable install ships: every folder of modules is a package that pyproject's find rule picks up."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_folder_of_modules_is_a_package_the_find_rule_includes():
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = {pattern.rstrip("*") for pattern in include}
    for root in roots:
        for folder in sorted({p.parent for p in (ROOT / root).rglob("*.py")}):
            if "__pycache__" in folder.parts:
                continue
            name = ".".join(folder.relative_to(ROOT).parts)
            assert (folder / "__init__.py").is_file(), f"{name} has modules but no __init__.py: it would not ship"
            assert any(fnmatch(name, pattern) for pattern in include), f"{name} is not matched by {include}"


def test_package_data_covers_the_shipped_models_and_pipelines():
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        folder = ROOT / package.replace(".", "/")
        files = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"]
        assert files, f"package-data names {package}, which holds no data files"
        for path in files:
            relative = path.relative_to(folder).as_posix()
            assert any(
                fnmatch(relative, pattern) and relative.count("/") == pattern.count("/") for pattern in patterns
            ), f"{package}/{relative} is not shipped by package-data {patterns}"
