"""Generic field checks shared by the document parsers: the YAML files (settings, manifests,
inventory) and the JSON ones (release.json, state.json).

Owns the machinery every validator of a loaded document needs: collecting the Problems of one
file (`Report`), checking a mapping's keys against the allowed and required ones, the
`expected X, got Y` type checks, and showing found values in messages. Knows no schema: which keys
exist and what they mean stays with each parser. Pure: no I/O, values in, problems out.

Each file kind words its messages its own way (`Wording`): the wordings are the ones each parser
had when it was written, kept so that sharing this code changed no message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import errors
from reconciler.core import durations, labels

# Keys shown bare in a field path; any other key is JSON-quoted in brackets (join_quoted).
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_./-]+")


_KIND_NAMES: dict[type, str] = {list: "a list", dict: "a mapping"}


def _kind(value: object) -> str:
    """What a non-scalar is, for `got ...`: a list or mapping by its YAML name, else its type."""
    return _KIND_NAMES.get(type(value), type(value).__name__)


def show_json(value: object) -> str:
    """`null`, `true`, `integer 5`, `number 1.5`, `"text"` (JSON-quoted, so control characters
    stay visible; cut at 80 characters), `a list`, `a mapping`."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        kind = "integer" if isinstance(value, int) else "number"
        return f"{kind} {_cut(str(value))}"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 80 else value[:77] + "...")
    return _kind(value)


def show_typed(value: object) -> str:
    """`null`, `boolean true`, `number 5`, `string "text"`, `a list`, `a mapping`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {_cut(str(value))}"
    if isinstance(value, str):
        return f'string "{_cut(value)}"'
    return _kind(value)


def show_literal(value: object) -> str:
    """Scalars as JSON literals (`null`, `true`, `5`, `"text"`), else `a list`, `a mapping`."""
    if value is None or isinstance(value, str | bool | int | float):
        return _cut(json.dumps(value))
    return _kind(value)


def show_kind(value: object) -> str:
    """What a value is, never the value: `null`, `a boolean`, `an integer`, `a string`, `a list`,
    `an object`, else its type's name (state.json: the device's own file, echoed in no message)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _STATE_KIND_NAMES.get(type(value), type(value).__name__)


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words: `null`, `a boolean`, `a number`, `a string`,
    `an array`, `an object` (release.json)."""
    if value is None:
        return "null"
    return _JSON_KIND_NAMES.get(type(value), "a number")


def show_json_literal(value: object) -> str:
    """Scalars as JSON literals (`null`, `true`, `5`, `"text"`, cut at 80 characters), else
    `json_kind` (release.json)."""
    if value is None or isinstance(value, str | int | float | bool):
        return _cut(json.dumps(value))
    return json_kind(value)


_JSON_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
}
_STATE_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
}


def _cut(shown: str, limit: int = 80) -> str:
    """`shown` cut to `limit` characters: a found value is echoed, never a megabyte of it."""
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def join_dotted(where: str, key: object) -> str:
    """The path of `key` inside `where`: `where.key`, or `key` at the top."""
    return f"{where}.{key}" if where else str(key)


def join_quoted(where: str, key: object) -> str:
    """Like join_dotted, but a key with other characters is written `where["key"]`."""
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(str(key))}]"


@dataclass(frozen=True)
class Wording:
    """How one file kind words the shared messages.

    `unknown` is formatted with `key` (the key as `show` shows it) and `allowed` (the allowed
    keys, comma-separated, sorted when `sort_allowed`); `missing` is said of an absent required key.
    """

    show: Callable[[object], str]
    join: Callable[[str, object], str]
    unknown: str
    missing: str
    sort_allowed: bool = False


# The device config's wording (settings).
CONFIG_WORDING = Wording(
    show=show_typed,
    join=join_dotted,
    unknown="unknown key; expected one of {allowed}",
    missing="missing required key",
    sort_allowed=True,
)
# The fleet repo's wording: app manifests, and inventory files with scalars shown plainer.
MANIFEST_WORDING = Wording(
    show=show_json,
    join=join_quoted,
    unknown="unknown field {key}; allowed: {allowed}",
    missing="required field is missing",
)
INVENTORY_WORDING = Wording(
    show=show_literal,
    join=join_dotted,
    unknown=MANIFEST_WORDING.unknown,
    missing=MANIFEST_WORDING.missing,
)
# The signed release.json (core.release): JSON's words.
RELEASE_WORDING = Wording(
    show=show_json_literal, join=join_dotted, unknown="unknown key", missing="missing"
)
# The device's state.json (core.state): the reconciler's own file, so terse.
STATE_WORDING = Wording(show=show_kind, join=join_dotted, unknown="unknown key", missing="missing")


@dataclass
class Report:
    """Problems of one file, collected while walking it (mutable on purpose, never returned)."""

    file: str
    wording: Wording
    problems: list[errors.Problem] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(errors.Problem(file=self.file, field=where, message=message))

    def expected(self, where: str, what: str, value: object, *, hint: str = "") -> None:
        """Record `expected <what>, got <value as shown><hint>` at `where`."""
        self.add(where, f"expected {what}, got {self.wording.show(value)}{hint}")

    def at(self, where: str, key: object) -> str:
        """The field path of `key` inside the mapping at `where`."""
        return self.wording.join(where, key)

    def fields(
        self,
        where: str,
        value: object,
        *,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[Any, Any] | None:
        """The mapping at `where`, after reporting unknown and missing keys; None if no mapping."""
        if not isinstance(value, dict):
            self.expected(where, "a mapping" if where else "a mapping at the top level", value)
            return None
        names = tuple(allowed)
        listed = ", ".join(sorted(names) if self.wording.sort_allowed else names)
        for key in value:
            if key not in names:
                message = self.wording.unknown.format(key=self.wording.show(key), allowed=listed)
                self.add(self.at(where, key), message)
        for key in required:
            if key not in value:
                self.add(self.at(where, key), self.wording.missing)
        return value

    def known(
        self,
        where: str,
        value: object,
        *,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[Any, Any]:
        """The allowed, non-null entries of the mapping at `where`; unknown keys are problems.

        Null counts as absent, both for the whole mapping (no problem, no entries) and for a key
        (a required key written with no value is missing).
        """
        if value is None:
            return {}
        names = tuple(allowed)
        body = self.fields(where, value, allowed=names)
        if body is None:
            return {}
        found = {key: item for key, item in body.items() if key in names and item is not None}
        for key in required:
            if key not in found:
                self.add(self.at(where, key), self.wording.missing)
        return found

    def entries(self, where: str, value: object, *, empty: str = "") -> list[tuple[str, Any]]:
        """(`where[i]`, item) pairs of the list at `where`; `empty` reports an empty list."""
        if not isinstance(value, list):
            self.expected(where, "a list", value)
            return []
        if empty and not value:
            self.add(where, empty)
        return [(f"{where}[{i}]", item) for i, item in enumerate(value)]

    def items(self, where: str, value: object) -> list[tuple[object, object, str]]:
        """(key, value, path of the key) triples of the mapping at `where`."""
        if not isinstance(value, dict):
            self.expected(where, "a mapping", value)
            return []
        return [(key, item, self.at(where, key)) for key, item in value.items()]


# A check validates the value at a field path, records its problems in the report, and returns
# the value to build from (None, or a placeholder, after a problem).
Check = Callable[[Report, str, Any], Any]


def checked(r: Report, where: str, value: object, *, checks: Mapping[str, Check]) -> dict[str, Any]:
    """Run `checks[key]` on each known, non-null entry of the optional mapping at `where`."""
    found = r.known(where, value, allowed=checks)
    return {key: checks[key](r, r.at(where, key), item) for key, item in found.items()}


def each(check: Check) -> Check:
    """A check of a list whose result keeps only the items `check` accepted; () if no list."""

    def run(r: Report, where: str, value: object) -> tuple[Any, ...]:
        return tuple(v for at, item in r.entries(where, value) if (v := check(r, at, item)))

    return run


def list_of(check: Check) -> Check:
    """A check of a list whose result keeps every item's result; None if no list."""

    def run(r: Report, where: str, value: object) -> tuple[Any, ...] | None:
        found = tuple(check(r, at, item) for at, item in r.entries(where, value))
        return found if isinstance(value, list) else None

    return run


def rule(base: Check, problem_of: Callable[[str], str | None]) -> Check:
    """`base` (a check returning text or None), then a rule that says why the text is wrong."""

    def run(r: Report, where: str, value: object) -> str | None:
        text: str | None = base(r, where, value)
        if text is not None and (problem := problem_of(text)):
            r.add(where, problem)
        return text

    return run


def choice(*choices: str) -> Check:
    """A check that the value is one of `choices`."""

    def run(r: Report, where: str, value: object) -> str:
        if value not in choices:
            r.expected(where, f"one of {', '.join(choices)}", value)
        return str(value)

    return run


def of_type(kind: type, what: str) -> Check:
    """A check that the value is a `kind`, kept as it is; `expected <what>` and None if not."""

    def run(r: Report, where: str, value: object) -> Any:
        if isinstance(value, kind):
            return value
        r.expected(where, what, value)
        return None

    return run


flag = of_type(bool, "true or false")


def string(r: Report, where: str, value: object) -> str | None:
    """A string without NUL bytes (no path, argument or name the kernel takes can hold one)."""
    text = of_type(str, "a string")(r, where, value)
    return text if text is None or no_nul(r, where, text) else None


def nonblank(r: Report, where: str, value: object) -> str | None:
    """A string with more than white space in it."""
    text = string(r, where, value)
    if text is not None and not text.strip():
        r.add(where, "must not be empty")
        return None
    return text


def no_nul(r: Report, where: str, text: str) -> bool:
    """True when `text` holds no NUL byte; else a problem (C strings, argv and paths end there)."""
    if "\x00" in text:
        r.add(where, "must not contain a NUL byte")
        return False
    return True


def int_in(r: Report, where: str, value: object, *, low: int, high: int) -> int | None:
    if type(value) is not int or not low <= value <= high:  # bool is an int, but not a number here
        r.expected(where, f"an integer {low}..{high}", value)
        return None
    return value


def duration(r: Report, where: str, value: object) -> float | None:
    """Seconds of a duration like `90s` or `1h30m` (durations.parse_duration's message if not)."""
    try:
        return durations.parse_duration(value)
    except ValueError as exc:
        r.add(where, str(exc))
        return None


def positive_duration(r: Report, where: str, value: object) -> float | None:
    seconds = duration(r, where, value)
    if seconds is not None and seconds <= 0:
        r.add(where, f'must be greater than 0, got "{value}"')
    return seconds


def fraction(r: Report, where: str, value: object) -> float | None:
    """A number from 0 to 1, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        r.expected(where, "a number from 0 to 1", value)
        return None
    if not 0 <= value <= 1:  # also false for NaN; checked before float(), which overflows
        r.add(where, f"must be from 0 to 1, got {show_json(value).split()[-1]}")
        return None
    return float(value)


def dns_label(r: Report, where: str, value: object) -> str:
    if problem := labels.dns_label_error(value):
        r.add(where, problem)
    return str(value)


def label_pairs(r: Report, where: str, value: object) -> tuple[tuple[str, str], ...]:
    """Sorted (key, value) pairs of the flat label mapping at `where`; each bad one is left out
    with a problem (its key's if both are wrong)."""
    pairs: list[tuple[str, str]] = []
    for key, item, at in r.items(where, value):
        if problem := labels.label_key_error(key) or labels.label_value_error(item):
            r.add(at, problem)
        else:
            pairs.append((str(key), str(item)))
    return tuple(sorted(pairs))
