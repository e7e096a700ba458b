"""The generated Python code under protos/gen/python is current and well-formed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_ROOT = REPO_ROOT / "protos" / "gen" / "python"
PROTO_SOURCES = REPO_ROOT / "protos" / "cosmos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"run protos/generate.py:\n{result.stdout}{result.stderr}"


def test_every_proto_has_all_generated_modules() -> None:
    protos = sorted(PROTO_SOURCES.rglob("*.proto"))
    assert protos, "no .proto files found"
    for proto in protos:
        stem = proto.relative_to(REPO_ROOT / "protos").with_suffix("").as_posix()
        for suffix in SUFFIXES:
            assert (GEN_ROOT / f"{stem}{suffix}").is_file(), f"missing {stem}{suffix}"


def test_no_init_files_in_namespace_tree() -> None:
    inits = sorted(p.relative_to(GEN_ROOT).as_posix() for p in GEN_ROOT.rglob("__init__.py"))
    assert not inits, f"cosmos is a PEP 420 namespace package; remove {inits}"
