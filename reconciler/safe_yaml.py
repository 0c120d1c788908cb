"""Bounded, safe YAML loading for files that come from Git or from an operator.

Pure (bytes in, plain data out). Guards, in order, before anything grows in memory:
size cap on the raw bytes, strict UTF-8, a safe loader only (no Python tags), duplicate keys
rejected (PyYAML would silently keep the last one), and alias expansion bounded: the node graph
is composed first (anchors are shared references there, so it is as small as the text) and its
expanded size is counted with memoisation before any object is built. A "billion laughs" file
therefore fails in milliseconds with a clear message instead of exhausting memory in whatever
walks the result later.
"""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.errors import Problem, ProblemsError

MAX_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composed graph we inspect before constructing objects."""


def load(
    data: bytes,
    *,
    file: str,
    max_bytes: int = MAX_BYTES,
    max_expanded_nodes: int = MAX_EXPANDED_NODES,
) -> Any:
    """Parse one YAML document; raise ProblemsError naming `file` on any rejection."""
    if len(data) > max_bytes:
        raise _rejected(file, f"file is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _rejected(file, f"not valid UTF-8 (byte offset {exc.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, file=file, limit=max_expanded_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _rejected(file, f"invalid YAML: {_describe(exc)}") from None
    finally:
        loader.dispose()


def _check_graph(root: yaml.Node, *, file: str, limit: int) -> None:
    """Count the nodes the document expands to; reject cycles, duplicate keys and excess."""
    expanded: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in on_path:
            raise _rejected(file, f"recursive alias at {_mark(node)}")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, yaml.MappingNode):
            seen: set[object] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        raise _rejected(
                            file, f"duplicate key {key_node.value!r} at {_mark(key_node)}"
                        )
                    seen.add(key_node.value)
                total += size(key_node) + size(value_node)
                if total > limit:
                    break
        on_path.discard(key)
        if total > limit:
            raise _rejected(
                file,
                f"aliases expand to more than {limit} nodes (near {_mark(node)}); "
                "anchors and aliases may only be used for small, bounded reuse",
            )
        expanded[key] = total
        return total

    size(root)


def _mark(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _rejected(file: str, message: str) -> ProblemsError:
    return ProblemsError([Problem(file=file, field="", message=message)])
