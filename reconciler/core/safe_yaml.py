"""Bounded, safe YAML loading for files that come from Git or from an operator.

Pure (bytes in, plain data out) and total: any byte string yields a value or one ProblemsError
naming the file, never another exception. Guards, in order, before anything grows in memory:
size cap on the raw bytes, strict UTF-8, a safe loader only (no Python tags), nesting depth
bounded while the node graph is composed (PyYAML's own composer recurses and would hit Python's
recursion limit near 500 levels; libyaml stops at 1000), duplicate keys rejected (PyYAML would
silently keep the last one), and alias expansion bounded: anchors are shared references in the
composed graph, so it is as small as the text, and its expanded size is counted with memoisation
before any object is built. A "billion laughs" file therefore fails in milliseconds with a clear
message instead of exhausting memory in whatever walks the result later.

Scalars are built strictly: a value its tag cannot hold (`!!int abc`, `!!bool maybe`,
`!!timestamp text`, month 13, an integer of thousands of digits) is a YAML error at its line,
not a ValueError, KeyError or AttributeError from deep inside PyYAML. libyaml's parser is used
when PyYAML has it (a 1 MiB manifest in a fraction of a second instead of seconds).
"""

from __future__ import annotations

from typing import Any, ClassVar

import yaml
from yaml.constructor import ConstructorError

from reconciler import text
from reconciler.errors import Problem, ProblemsError

MAX_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 100_000
# Deeper than any real config or manifest (they nest under ten levels), far below the depth at
# which a recursive walk of the result could exhaust Python's stack.
MAX_DEPTH = 64
# An integer scalar longer than this is refused before int() sees it: int() stops at 4,300
# digits, and base-60 scalars (`1:2:3:...`) cost quadratic time long before that.
MAX_INT_CHARS = 100
_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "timestamp": "date or time"}


class _StrictConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor whose scalar conversions fail as YAML errors, at the scalar's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        # PyYAML's scalar constructors assume text their tag can hold: `!!int ""` is an
        # IndexError, `!!bool maybe` a KeyError, `!!timestamp x` an AttributeError.
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):
            shown = node.value if isinstance(node, yaml.ScalarNode) else ""
            kind = node.tag.rpartition(":")[2]
            raise ConstructorError(
                None,
                None,
                f'"{text.one_line(str(shown), 80)}" is not a valid {_KINDS.get(kind, kind)}',
                node.start_mark,
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if isinstance(node.value, str) and len(node.value) > MAX_INT_CHARS:
            raise ConstructorError(
                None,
                None,
                f"integer of {len(node.value)} characters, over the limit of {MAX_INT_CHARS}",
                node.start_mark,
            )
        return int(super().construct_yaml_int(node))

    # PyYAML finds a tag's constructor in this class-level table: this class's own copy (what
    # add_constructor makes), so SafeConstructor's table stays PyYAML's.
    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        **yaml.constructor.SafeConstructor.yaml_constructors,
        "tag:yaml.org,2002:int": construct_yaml_int,
    }


class _TooDeep(yaml.YAMLError):
    """The document nests deeper than MAX_DEPTH (valid YAML, refused all the same)."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__()
        self.mark = mark


class _PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _StrictConstructor,
    yaml.resolver.Resolver,
):
    """The pure-Python loader, its composer's recursion bounded to MAX_DEPTH levels."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _StrictConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
                raise _TooDeep(event.start_mark)
            # types-PyYAML: `index: int`, but PyYAML passes an item's index, a key node or None.
            return super().compose_node(parent, index)  # type: ignore[arg-type]  # stub too narrow
        finally:
            self._depth -= 1


_LOADERS: list[type] = [_PyLoader]
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser  # present only when PyYAML was built with libyaml

    class _CLoader(CParser, _StrictConstructor, yaml.resolver.Resolver):
        """libyaml's parser (it stops at 1000 levels itself; _check_graph enforces MAX_DEPTH)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _LOADERS.insert(0, _CLoader)


def load(
    data: bytes,
    *,
    file: str,
    max_bytes: int = MAX_BYTES,
    max_expanded_nodes: int = MAX_EXPANDED_NODES,
    pure_python: bool = False,
) -> Any:
    """Parse one YAML document; raise ProblemsError naming `file` on any rejection.

    `pure_python` forces PyYAML's own parser (the one used where libyaml is missing).
    """
    if len(data) > max_bytes:
        raise _rejected(file, f"file is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _rejected(file, f"not valid UTF-8 (byte offset {exc.start})") from None
    loader_class = _LOADERS[-1] if pure_python else _LOADERS[0]
    loader = None
    try:
        loader = loader_class(decoded)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, file=file, limit=max_expanded_nodes)
        return loader.construct_document(node)
    except _TooDeep as exc:
        raise _too_deep(file, exc.mark) from None
    except yaml.YAMLError as exc:
        raise _rejected(file, f"invalid YAML: {_describe(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_graph(root: yaml.Node, *, file: str, limit: int) -> None:
    """Count the nodes the document expands to; reject cycles, depth, duplicate keys, excess."""
    expanded: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in on_path:
            raise _rejected(file, f"recursive alias at {_mark(node)}")
        if depth > MAX_DEPTH:
            raise _too_deep(file, node.start_mark)
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                # Scalars, most of any document, without a call: a 1 MiB list stays fast.
                total += 1 if type(child) is yaml.ScalarNode else size(child, depth + 1)
                if total > limit:
                    break
        elif isinstance(node, yaml.MappingNode):
            seen: set[object] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        shown = text.one_line(key_node.value, 80)
                        raise _rejected(file, f"duplicate key {shown!r} at {_mark(key_node)}")
                    seen.add(key_node.value)
                total += size(key_node, depth + 1) + size(value_node, depth + 1)
                if total > limit:
                    break
        on_path.discard(key)
        if total > limit:
            raise _rejected(
                file,
                f"the document expands to more than {limit} nodes (near {_mark(node)}); a "
                "document this large is refused, and aliases may only be used for small reuse",
            )
        expanded[key] = total
        return total

    size(root, 1)


def _mark(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _too_deep(file: str, mark: yaml.Mark) -> ProblemsError:
    return _rejected(
        file,
        f"nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}",
    )


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.reader.ReaderError):
        # "unacceptable character #x0000: ..." with the offset: no raw text of the file.
        return f"{exc.reason} (character #x{exc.character:04x} at offset {exc.position})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _rejected(file: str, message: str) -> ProblemsError:
    return ProblemsError([Problem(file=file, field="", message=message)])
