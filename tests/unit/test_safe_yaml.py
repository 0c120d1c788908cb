"""safe_yaml: any bytes are a value or one ProblemsError naming the file, with either parser."""

from __future__ import annotations

import datetime as dt

import pytest

from reconciler import errors
from reconciler.core import safe_yaml

PARSERS = pytest.mark.parametrize("pure_python", [False, True], ids=["libyaml", "python"])


def refusal(data: bytes, *, pure_python: bool) -> str:
    with pytest.raises(errors.ProblemsError) as caught:
        safe_yaml.load(data, file="f.yaml", pure_python=pure_python)
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == ("f.yaml", "")
    return problem.message


@PARSERS
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a: \x00", "invalid YAML: "),
        (b"a: \x1b[31m", "invalid YAML: "),
        ("a: b".encode("utf-16"), "not valid UTF-8 (byte offset 0)"),
        (b"[" * 100 + b"]" * 100, "nested deeper than 64 levels at line 1, column 65"),
        (b"[" * 5000, ""),  # libyaml stops at 1000 levels, ours at 64: refused either way
        (b"a: " + b"9" * 5000, "invalid YAML: integer of 5000 characters, over the limit of 100"),
        (b"a: 1" + b":1" * 50_000, "invalid YAML: integer of 100001 characters"),
        (b"a: !!int abc", 'invalid YAML: "abc" is not a valid integer at line 1, column 4'),
        (b"!!int : x", 'invalid YAML: "" is not a valid integer'),
        (b"a: !!int", 'invalid YAML: "" is not a valid integer'),
        (b"a: !!float abc", 'invalid YAML: "abc" is not a valid number'),
        (b"a: !!bool maybe", 'invalid YAML: "maybe" is not a valid boolean'),
        (b"a: !!timestamp text", 'invalid YAML: "text" is not a valid date or time'),
        (b"a: 2020-13-01", 'invalid YAML: "2020-13-01" is not a valid date or time'),
        (b"a: 2020-02-30", 'invalid YAML: "2020-02-30" is not a valid date or time'),
        (b"a: 2020-01-01 25:00:00", 'invalid YAML: "2020-01-01 25:00:00" is not a valid date'),
        (b"a: 1\na: 2", "duplicate key 'a' at line 2, column 1"),
        (b"a: !!python/object/apply:os.system [true]", "invalid YAML: could not determine"),
    ],
)
def test_hostile_input_is_one_problem_naming_the_file(data, expected, pure_python):
    assert refusal(data, pure_python=pure_python).startswith(expected)


@PARSERS
def test_valid_documents_load_the_same_with_either_parser(pure_python):
    data = b"a: [1, 2.5, true, null, 2020-01-02]\nb: {c: '0x10', d: 0x10}\n"
    assert safe_yaml.load(data, file="f", pure_python=pure_python) == {
        "a": [1, 2.5, True, None, dt.date(2020, 1, 2)],
        "b": {"c": "0x10", "d": 16},
    }


@PARSERS
def test_sixty_four_levels_are_fine(pure_python):
    data = b"[" * 64 + b"]" * 64
    assert safe_yaml.load(data, file="f", pure_python=pure_python) is not None
