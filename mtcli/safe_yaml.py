"""YAML loading that cannot exhaust the machine: nesting depth and alias expansion are capped.

`yaml.safe_load` runs no code, but it does not bound the work: aliases share one Python object,
so a 400-byte file of nested aliases ("billion laughs") loads at once and then explodes in
whatever walks it (validation, `${VAR}` expansion, dumping), and thousands of nested brackets
overflow the composer's recursion. Here the event stream is checked for depth first (the parser
itself keeps an explicit stack), then the composed node graph is measured as if every alias were
copied, before anything is constructed. Ordinary anchors and merge keys keep working.
"""

from __future__ import annotations

from typing import Any

import yaml

from mtcli.errors import MtcliError

MAX_DEPTH = 64  # a config nests 4 levels; bundle configs the same
MAX_NODES = 100_000  # expanded scalars, sequences and mappings; a full config has ~150
MAX_BYTES = 1 << 20


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise MtcliError(f"{source}: line {line}: YAML nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def expanded_size(node: yaml.Node, source: str) -> int:
    """Nodes the document would have with every alias copied out (memoized, so it is fast)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node, depth: int) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        line = n.start_mark.line + 1
        if key in open_nodes:
            raise MtcliError(f"{source}: line {line}: a YAML alias refers to itself")
        if depth > MAX_DEPTH:  # aliases of aliases nest without brackets
            raise MtcliError(f"{source}: line {line}: YAML nested deeper than {MAX_DEPTH} levels (through aliases)")
        open_nodes.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total = min(total, MAX_NODES + 1)  # saturate: the numbers stay small
        return total

    return size(node, 0)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely; errors name `source` (and the line where one is known)."""
    if len(text) > MAX_BYTES:
        raise MtcliError(f"{source}: {len(text):,} bytes is too large for a YAML config (limit {MAX_BYTES:,})")
    try:
        _check_depth(text, source)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if expanded_size(node, source) > MAX_NODES:
                raise MtcliError(f"{source}: YAML aliases expand to more than {MAX_NODES:,} values; "
                                 "refusing it (an alias bomb?)")  # fmt: skip
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise MtcliError(f"{source}:{where} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
