"""Which packages and data files the distribution holds, found rather than listed.

``pyproject.toml``'s ``[tool.setuptools.package-dir]`` is the single source of truth: it maps the repository's
top-level folders (``shardflow/``, ``operators/``, ``pipelines/``, ``cluster/``) into the ``shardflow``
package. Every package below a mapped folder (a folder with ``__init__.py``) is found here, and every other
file inside a package folder (thresholds, label tables, cluster manifests) travels with it as package data,
so a new module or data file can never be left out of the wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
SKIPPED = ("__pycache__",)
SOURCE = (".py", ".pyc")


def package_dirs() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]["package-dir"]


def packages(mapping: dict[str, str]) -> list[str]:
    """Each mapped package and every package found below its folder, by dotted name."""
    found = []
    for name, folder in mapping.items():
        found += [name, *(f"{name}.{sub}" for sub in find_packages(str(ROOT / folder)))]
    return sorted(found)


def package_data(mapping: dict[str, str], names: list[str]) -> dict[str, list[str]]:
    """Per package, its files that are not Python source, relative to its folder (subpackages have their own)."""
    data = {}
    for name in names:
        top = next(top for top in sorted(mapping, key=len, reverse=True) if name == top or name.startswith(top + "."))
        folder = ROOT / mapping[top] / name[len(top) :].lstrip(".").replace(".", "/")
        files = [
            path.relative_to(folder).as_posix()
            for path in folder.rglob("*")
            if path.is_file()
            and not path.name.endswith(SOURCE)
            and not any(part in SKIPPED or part.startswith(".") for part in path.relative_to(folder).parts)
            and not _inside_subpackage(path, folder)
        ]
        if files:
            data[name] = sorted(files)
    return data


def _inside_subpackage(path: Path, folder: Path) -> bool:
    return any(
        (parent / "__init__.py").is_file() for parent in path.parents if parent != folder and folder in parent.parents
    )


MAPPING = package_dirs()
PACKAGES = packages(MAPPING)
setup(packages=PACKAGES, package_data=package_data(MAPPING, PACKAGES))
