"""Generate the Python code for the Cosmos contracts.

Runs ``grpc_tools.protoc`` in-process over every ``.proto`` under
``protos/cosmos`` and writes ``_pb2.py``, ``_pb2.pyi``, ``_pb2_grpc.py`` and
``_pb2_grpc.pyi`` modules (mypy-protobuf stubs) into ``protos/gen/python``, and
``cosmos/descriptor_set.binpb``: every Cosmos file's descriptor *with its source
info*, which server reflection serves so ``grpcurl describe`` shows the comments
(:mod:`cosmos.runtime.reflection_docs`).
The output tree is deleted and recreated first, so removed protos leave no
stale files, and no ``__init__.py`` is written: ``cosmos`` is a PEP 420
namespace package shared with the service source roots.

Usage::

    .venv/bin/python protos/generate.py            # regenerate
    .venv/bin/python protos/generate.py --check    # exit 1 if the tree is stale
    .venv/bin/python protos/generate.py --out DIR  # generate elsewhere
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
THIRD_PARTY = PROTO_ROOT / "third_party"
SOURCE_DIR = PROTO_ROOT / "cosmos"
DEFAULT_OUT = PROTO_ROOT / "gen" / "python"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", "descriptor_set.binpb")
DESCRIPTOR_SET = Path("cosmos") / "descriptor_set.binpb"


def _plugin(name: str) -> str:
    """Return the path of a protoc plugin installed next to the interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise SystemExit(f"protoc plugin {name!r} not found next to {sys.executable}")
        return found
    return str(path)


def _proto_files() -> list[str]:
    """Return the absolute path of every Cosmos .proto, sorted."""
    return sorted(str(p) for p in SOURCE_DIR.rglob("*.proto"))


def generate(out: Path) -> None:
    """Delete ``out``, then generate all Cosmos modules into it."""
    if out.exists():
        foreign = sorted(f for f in _relative_files(out) if not f.endswith(GENERATED_SUFFIXES))
        if foreign:
            raise SystemExit(f"refusing to delete {out}: it holds non-generated files, e.g. {foreign[0]}")
        shutil.rmtree(out)
    (out / DESCRIPTOR_SET).parent.mkdir(parents=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_source_info",
        *_proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _relative_files(root: Path) -> set[str]:
    """Return every file under ``root`` as a relative POSIX path, skipping caches."""
    if not root.is_dir():
        return set()
    files = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            files.add(rel.as_posix())
    return files


def check(out: Path) -> int:
    """Compare ``out`` with a fresh generation; print differences, return exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "python"
        generate(fresh)
        expected, actual = _relative_files(fresh), _relative_files(out)
        problems = [f"missing: {name}" for name in sorted(expected - actual)]
        problems += [f"extra: {name}" for name in sorted(actual - expected)]
        problems += [
            f"differs: {name}"
            for name in sorted(expected & actual)
            if not filecmp.cmp(fresh / name, out / name, shallow=False)
        ]
    if problems:
        print(f"generated code in {out} is stale; run protos/generate.py", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and generate or check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--check", action="store_true", help="verify the output directory is up to date")
    ns = parser.parse_args(argv)
    out: Path = ns.out.resolve()
    if ns.check:
        return check(out)
    generate(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
