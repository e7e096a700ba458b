"""Every error class Cosmos defines is rooted in ``CosmosError`` and written in the tree of
:mod:`cosmos.errors`' docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import cosmos
from cosmos import errors

# Modules that run a program when imported (``python -m``), not libraries.
_SKIPPED = re.compile(r"(^|\.)(__main__|[^.]*_pb2[^.]*)$")


def _cosmos_modules() -> list[str]:
    """Every module of the ``cosmos`` namespace, generated stubs and ``__main__`` left out.

    ``pkgutil.walk_packages`` alone does not descend into the namespace packages that the services
    share with the generated code (``cosmos.plato`` has no ``__init__.py``), so those directories are
    walked here and each level is listed with ``pkgutil.iter_modules``."""
    names: set[str] = set()

    def walk(prefix: str, paths: list[str]) -> None:
        for info in pkgutil.iter_modules(paths, prefix):
            names.add(info.name)
        for path in paths:
            for entry in sorted(Path(path).iterdir()):
                if entry.is_dir() and entry.name.isidentifier() and any(entry.rglob("*.py")):
                    package = importlib.import_module(prefix + entry.name)
                    walk(f"{package.__name__}.", list(package.__path__))

    walk("cosmos.", list(cosmos.__path__))
    return sorted(n for n in names if not _SKIPPED.search(n))


def _error_classes() -> dict[str, type[BaseException]]:
    """``module.Class`` -> class, for each exception class defined (not just imported) in Cosmos."""
    found: dict[str, type[BaseException]] = {}
    for name in [*_cosmos_modules(), "cosmos.errors"]:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_cosmos_module_is_walked() -> None:
    names = _cosmos_modules()
    for expected in ("cosmos.runtime.server", "cosmos.plato.store", "cosmos.sdk.worker", "cosmos.client"):
        assert expected in names
    assert not [n for n in names if "_pb2" in n]


def test_every_error_is_a_cosmos_error() -> None:
    classes = _error_classes()
    assert len(classes) > 40
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, errors.CosmosError))
    assert outside == []


def test_the_docstring_tree_names_every_error() -> None:
    doc = errors.__doc__ or ""
    missing = []
    for qualified, cls in _error_classes().items():
        module = cls.__module__
        # One line per class: its name, then its module, somewhere further on the line.
        line = re.compile(rf"^[\s│├└─]*{re.escape(cls.__qualname__)}\s+{re.escape(module)}\s", re.MULTILINE)
        if not line.search(doc + "\n"):
            missing.append(qualified)
    assert missing == []


def test_the_docstring_tree_names_only_errors_that_exist() -> None:
    classes = {(cls.__qualname__, cls.__module__) for cls in _error_classes().values()}
    tree = re.findall(r"^[\s│├└─]*(\w+)\s+(cosmos(?:\.\w+)*)\s", errors.__doc__ or "", re.MULTILINE)
    assert tree
    assert sorted(set(tree) - classes) == []


def test_the_docstring_tree_nests_as_the_classes_do() -> None:
    """Each line's class derives from the class of the nearest less-indented line above it."""
    stack: list[tuple[int, type[BaseException]]] = []
    by_name = {(cls.__module__, cls.__qualname__): cls for cls in _error_classes().values()}
    for match in re.finditer(
        r"^(?P<indent>[ │├└─]*)(?P<cls>\w+)\s+(?P<mod>cosmos(?:\.\w+)*)\s", errors.__doc__ or "", re.MULTILINE
    ):
        depth = len(match["indent"])
        cls = by_name[(match["mod"], match["cls"])]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            assert issubclass(cls, stack[-1][1]), f"{cls.__qualname__} is not a {stack[-1][1].__qualname__}"
        else:
            assert cls is errors.CosmosError
        stack.append((depth, cls))


def test_invalid_and_require_name_one_field() -> None:
    error = errors.invalid("spec.argv", "is empty", reason=errors.Reason.ERROR_REASON_INVALID_DEFINITION)
    assert (error.message, error.reason) == ("spec.argv: is empty", "ERROR_REASON_INVALID_DEFINITION")
    assert error.violations == (errors.FieldViolation("spec.argv", "is empty"),)
    assert errors.invalid("x", "bad").reason == "ERROR_REASON_INVALID_ARGUMENT"
    errors.require("set", "job_id")
    try:
        errors.require("", "job_id", "must not be empty")
    except errors.InvalidArgumentError as exc:
        assert exc.message == "job_id is required"
        assert exc.violations == (errors.FieldViolation("job_id", "must not be empty"),)
    else:
        raise AssertionError("an empty value passed")


def test_every_rpc_error_class_sends_a_reason_of_the_enum() -> None:
    known = set(errors.Reason.keys())
    sent = {name: cls.reason for name, cls in _error_classes().items() if issubclass(cls, errors.RpcError)}
    assert len(sent) > 15
    assert {name: reason for name, reason in sent.items() if reason not in known} == {}


def test_no_module_spells_a_reason_as_a_string() -> None:
    """Reasons are raised as ``errors.Reason`` values (type-checked); a string literal would bypass that."""
    roots = [Path(p) for p in cosmos.__path__]
    spelled = [
        f"{path}:{number}"
        for root in roots
        for path in root.rglob("*.py")
        if "_pb2" not in path.name
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"""["']ERROR_REASON_[A-Z_]+["']""", line)
    ]
    assert spelled == []
