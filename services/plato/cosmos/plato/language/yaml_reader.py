"""YAML source → plain data, remembering the 1-based line of every value.

Reading is bounded (:data:`MAX_NODES`, :data:`MAX_DEPTH`): past either, :class:`Abort` stops it. Smaller
problems (duplicate keys, unsupported tags) are collected in :attr:`Reader.problems` so the compiler
reports them with its own.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

from cosmos.errors import CosmosError

__all__ = ["MAX_DEPTH", "MAX_NODES", "Abort", "Loc", "Reader", "field_name"]

MAX_NODES: Final = 100_000  # bounds alias expansion ("billion laughs") as well as plain size
MAX_DEPTH: Final = 64

Loc = tuple[str | int, ...]
"""Where a value sits in the document: mapping keys and list indexes from the top."""


def field_name(loc: Loc) -> str:
    """``("workflow", "rules", 2, "when")`` → ``workflow.rules[2].when``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name


class Abort(CosmosError):
    """The document cannot be read further (too large, too deep)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))


class Reader:
    """Builds plain data from the composed node tree, recording the 1-based line of every location.

    Only standard YAML types are built (the safe loader's constructors); other tags are problems.
    Mapping keys are always their text (``on:`` stays ``"on"``, not YAML 1.1's ``True``).
    """

    def __init__(self, source: str) -> None:
        self.loader = yaml.SafeLoader(source)
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[Loc, str]] = []
        self.nodes = 0

    def read(self) -> Any:
        try:
            node = self.loader.get_single_node()
            return None if node is None else self.build(node, (), 0)
        finally:
            self.loader.dispose()

    def build(self, node: yaml.Node, loc: Loc, depth: int) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise Abort(loc, f"the document has more than {MAX_NODES} values (aliases count each time)")
        if depth > MAX_DEPTH:
            raise Abort(loc, f"values are nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                return self.unsupported(node, loc)
            return [self.build(item, (*loc, i), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node, loc)

    def mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> Any:
        if node.tag != "tag:yaml.org,2002:map":
            return self.unsupported(node, loc)
        self.loader.flatten_mapping(node)  # resolves "<<" merge keys the way the safe loader does
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    (loc, f"line {key_node.start_mark.line + 1}: keys must be plain strings")
                )
                continue
            key = str(key_node.value)
            child = (*loc, key)
            if key in result:
                self.problems.append((child, f"line {key_node.start_mark.line + 1}: duplicate key {key!r}"))
            self.lines[child] = key_node.start_mark.line + 1  # the key's line names the field best
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return str(node.value)  # dates stay text; the language has no date type
        if node.tag not in _SCALAR_TAGS:
            return self.unsupported(node, loc)
        try:
            return self.loader.construct_object(node)
        except ValueError:  # e.g. an integer beyond Python's digit limit
            self.problems.append(
                (loc, f"line {node.start_mark.line + 1}: unreadable value {node.value[:20]!r}")
            )
            return None

    def unsupported(self, node: yaml.Node, loc: Loc) -> None:
        self.problems.append((loc, f"line {node.start_mark.line + 1}: unsupported YAML tag {node.tag}"))
        return None
