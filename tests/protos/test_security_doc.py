"""docs/security.md's permission tables are the code's: every RPC with the permission its access option
declares, and what each role and workload is granted (cosmos.security.principals).

The tables sit between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers; when an RPC or a role
changes, regenerate them with ``python tests/protos/test_security_doc.py`` and paste the output.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from cosmos.common.v1 import access_pb2
from cosmos.security import principals

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
SERVICE_PROTOS = sorted((REPO / "protos" / "cosmos").glob("*/v1/*_service.proto"))
ROLES = list(principals.ROLE_PERMISSIONS)
WORKLOADS = list(principals.WORKLOAD_PERMISSIONS)


def permission_name(value: access_pb2.Permission.ValueType) -> str:
    return access_pb2.Permission.Name(value).removeprefix("PERMISSION_")


def service_names() -> list[str]:
    """Every service the ``*_service.proto`` files declare, in file order."""
    names = []
    for proto in SERVICE_PROTOS:
        package = re.search(r"^package ([\w.]+);", proto.read_text(), re.M)
        assert package is not None, proto
        names += [f"{package[1]}.{s}" for s in re.findall(r"^service (\w+)", proto.read_text(), re.M)]
    return names


def rpc_table() -> str:
    """``| RPC | permission | audited |``, one row per RPC, from the descriptors' access options."""
    for proto in SERVICE_PROTOS:
        relative = proto.relative_to(REPO / "protos").with_suffix("")
        importlib.import_module(".".join(relative.parts) + "_pb2")
    pool = descriptor_pool.Default()
    rows = ["| RPC | permission | audited |", "|---|---|---|"]
    for name in service_names():
        for method in pool.FindServiceByName(name).methods:
            rule = method.GetOptions().Extensions[access_pb2.access]
            needs = (
                "none (authenticates its request itself)"
                if rule.anonymous
                else permission_name(rule.permission)
            )
            rows.append(f"| `{name}/{method.name}` | `{needs}` | {'yes' if rule.audited else 'no'} |")
    return "\n".join(rows)


def role_table() -> str:
    """``| permission | viewer | ... | optimus | ... |``: a check mark where the role or workload has it."""
    holders = [*ROLES, *WORKLOADS]
    rows = [
        "| permission | "
        + " | ".join(f"`{r}`" for r in ROLES)
        + " | "
        + " | ".join(f"*{w}*" for w in WORKLOADS)
        + " |",
        "|---|" + "---|" * len(holders),
    ]
    for value in sorted(v for v in access_pb2.Permission.values() if v):
        granted = [
            *(value in principals.ROLE_PERMISSIONS[r] for r in ROLES),
            *(value in principals.WORKLOAD_PERMISSIONS[w] for w in WORKLOADS),
        ]
        rows.append(f"| `{permission_name(value)}` | " + " | ".join("✓" if g else "" for g in granted) + " |")
    return "\n".join(rows)


def section(name: str) -> str:
    text = DOC.read_text()
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert found is not None, f"docs/security.md has no {name} table markers"
    return found[1].strip()


def test_every_rpc_is_listed_with_the_permission_its_proto_declares() -> None:
    assert section("rpc-permissions") == rpc_table()


def test_the_roles_table_is_what_principals_grants() -> None:
    assert section("role-permissions") == role_table()


if __name__ == "__main__":
    print("<!-- rpc-permissions:begin -->", rpc_table(), "<!-- rpc-permissions:end -->", sep="\n")
    print()
    print("<!-- role-permissions:begin -->", role_table(), "<!-- role-permissions:end -->", sep="\n")
