"""Server reflection that serves the protos' comments, so ``grpcurl describe`` shows the docs.

The generated ``_pb2`` modules carry descriptors without source info (no comments). ``make gen``
also writes ``cosmos/descriptor_set.binpb``: every Cosmos file's ``FileDescriptorProto`` with its
``source_code_info``. :func:`documented_pool` wraps the default descriptor pool so that grpc's
reflection servicer (which serialises each file with ``CopyToProto``) sends each Cosmos file as
before plus that source info; other files (google/*) are served as before.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

log = logging.getLogger(__name__)

DESCRIPTOR_SET = "descriptor_set.binpb"


def _descriptor_set_path() -> Path | None:
    import cosmos

    for base in cosmos.__path__:  # a namespace package: the generated tree is one of its roots
        candidate = Path(base) / DESCRIPTOR_SET
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def documented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Each Cosmos proto file's descriptor with its comments, by file name; empty if not generated."""
    path = _descriptor_set_path()
    if path is None:
        log.warning("no %s next to the generated code: reflection serves no comments", DESCRIPTOR_SET)
        return {}
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return {f.name: f for f in files.file}


class _DocumentedFile:
    """A file descriptor whose ``CopyToProto`` gives the documented copy when there is one."""

    def __init__(self, descriptor: Any, documented: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._descriptor = descriptor
        self._documented = documented
        self.name: str = descriptor.name

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [_DocumentedFile(d, self._documented) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        # The runtime's own copy (exactly what reflection served before, json_name included), with
        # the comments added: both come from the same .proto file, so the source paths line up.
        self._descriptor.CopyToProto(proto)
        documented = self._documented.get(self.name)
        if documented is not None:
            proto.source_code_info.CopyFrom(documented.source_code_info)


class DocumentedPool:
    """The default descriptor pool, its files answered with their comments (duck-typed for
    ``grpc_reflection``'s ``pool=``)."""

    def __init__(
        self,
        documented: dict[str, descriptor_pb2.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._documented = documented

    def FindFileByName(self, name: str) -> _DocumentedFile:
        return _DocumentedFile(self._pool.FindFileByName(name), self._documented)

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:
        return _DocumentedFile(self._pool.FindFileContainingSymbol(symbol), self._documented)

    def __getattr__(self, name: str) -> Any:
        # FindMessageTypeByName, FindExtensionByNumber, FindAllExtensions: as the pool has them.
        return getattr(self._pool, name)


def documented_pool() -> DocumentedPool | None:
    """The pool reflection should use, or None (grpc's default) when no descriptor set exists."""
    documented = documented_files()
    return DocumentedPool(documented) if documented else None
