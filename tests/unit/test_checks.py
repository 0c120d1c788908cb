"""The generic field checks shared by settings, manifests and inventory (`reconciler._checks`)."""

from __future__ import annotations

import pytest

from reconciler import errors
from reconciler.core import _checks

FILE = "some/file.yaml"


def report(wording: _checks.Wording = _checks.MANIFEST_WORDING) -> _checks.Report:
    return _checks.Report(FILE, wording)


def said(r: _checks.Report) -> list[tuple[str, str]]:
    assert all(p.file == FILE for p in r.problems)
    return [(p.field, p.message) for p in r.problems]


@pytest.mark.parametrize(
    ("value", "json", "typed", "literal"),
    [
        (None, "null", "null", "null"),
        (True, "true", "boolean true", "true"),
        (5, "integer 5", "number 5", "5"),
        (1.5, "number 1.5", "number 1.5", "1.5"),
        ("a\tb", '"a\\tb"', 'string "a\tb"', '"a\\tb"'),
        ([1], "a list", "a list", "a list"),
        ({"a": 1}, "a mapping", "a mapping", "a mapping"),
        (b"x", "bytes", "bytes", "bytes"),
    ],
)
def test_each_wording_shows_found_values_its_own_way(
    value: object, json: str, typed: str, literal: str
) -> None:
    assert _checks.show_json(value) == json
    assert _checks.show_typed(value) == typed
    assert _checks.show_literal(value) == literal


def test_json_shown_strings_are_cut_at_80_characters() -> None:
    assert _checks.show_json("x" * 80) == f'"{"x" * 80}"'
    assert _checks.show_json("x" * 81) == f'"{"x" * 77}..."'


def test_quoted_paths_bracket_keys_with_other_characters() -> None:
    assert _checks.join_quoted("", "spec") == "spec"
    assert _checks.join_quoted("env", "A_1") == "env.A_1"
    assert _checks.join_quoted("env", "bad key") == 'env["bad key"]'
    assert _checks.join_quoted("env", 5) == 'env["5"]'
    assert _checks.join_dotted("labels", "bad key") == "labels.bad key"
    assert _checks.join_dotted("", 5) == "5"


def test_fields_reports_unknown_then_missing_keys_in_manifest_wording() -> None:
    r = report()
    body = {"b": 1, "zz": 2}
    assert r.fields("spec", body, allowed=("b", "a"), required=("a",)) is body
    assert said(r) == [
        ("spec.zz", 'unknown field "zz"; allowed: b, a'),
        ("spec.a", "required field is missing"),
    ]


def test_fields_reports_unknown_keys_sorted_in_config_wording() -> None:
    r = report(_checks.CONFIG_WORDING)
    r.fields("source", {"zz": 2}, allowed=("url", "branch"), required=("url",))
    assert said(r) == [
        ("source.zz", "unknown key; expected one of branch, url"),
        ("source.url", "missing required key"),
    ]


def test_fields_of_a_non_mapping_is_none_with_the_top_level_named() -> None:
    r = report()
    assert r.fields("", [1], allowed=()) is None
    assert r.fields("spec", "x", allowed=()) is None
    assert said(r) == [
        ("", "expected a mapping at the top level, got a list"),
        ("spec", 'expected a mapping, got "x"'),
    ]


def test_known_treats_null_as_absent_for_the_mapping_and_for_its_keys() -> None:
    r = report(_checks.CONFIG_WORDING)
    assert r.known("trust", None, allowed=("a",), required=("a",)) == {}
    assert r.problems == []
    found = r.known("id", {"a": None, "b": "x", "c": 1}, allowed=("a", "b"), required=("a",))
    assert found == {"b": "x"}
    assert said(r) == [
        ("id.c", "unknown key; expected one of a, b"),
        ("id.a", "missing required key"),
    ]


def test_entries_name_each_item_by_index_and_can_reject_an_empty_list() -> None:
    r = report()
    assert r.entries("ports", ["a", "b"]) == [("ports[0]", "a"), ("ports[1]", "b")]
    assert r.entries("ports", [], empty="expected at least one") == []
    assert r.entries("ports", "80:80") == []
    assert said(r) == [
        ("ports", "expected at least one"),
        ("ports", 'expected a list, got "80:80"'),
    ]


def test_items_give_each_key_its_path_in_the_reports_wording() -> None:
    r = report()
    assert r.items("env", {"A": 1, "b c": 2}) == [("A", 1, "env.A"), ("b c", 2, 'env["b c"]')]
    assert r.items("env", 5) == []
    assert said(r) == [("env", "expected a mapping, got integer 5")]


def test_expected_adds_the_hint_after_the_shown_value() -> None:
    r = report(_checks.INVENTORY_WORDING)
    r.expected("devices[0]", "a mapping with name and labels", 7, hint="; quote it")
    assert said(r) == [("devices[0]", "expected a mapping with name and labels, got 7; quote it")]
    assert str(r.problems[0]) == (
        "some/file.yaml: devices[0]: expected a mapping with name and labels, got 7; quote it"
    )
    assert isinstance(r.problems[0], errors.Problem)


def test_each_keeps_only_accepted_items_and_list_of_keeps_every_result() -> None:
    r = report(_checks.CONFIG_WORDING)
    assert _checks.each(_checks.flag)(r, "a", [True, "x", True]) == (True, True)
    assert _checks.list_of(_checks.flag)(r, "b", [True, "x"]) == (True, None)
    assert _checks.each(_checks.flag)(r, "c", None) == ()
    assert _checks.list_of(_checks.flag)(r, "d", None) is None
    assert said(r) == [
        ("a[1]", 'expected true or false, got string "x"'),
        ("b[1]", 'expected true or false, got string "x"'),
        ("c", "expected a list, got null"),
        ("d", "expected a list, got null"),
    ]


def test_checked_runs_each_keys_check_on_its_known_non_null_entries() -> None:
    r = report(_checks.CONFIG_WORDING)
    checks = {"on": _checks.flag, "name": _checks.string, "wait": _checks.duration}
    found = _checks.checked(r, "s", {"on": True, "name": None, "wait": "5m", "x": 1}, checks=checks)
    assert found == {"on": True, "wait": 300.0}
    assert said(r) == [("s.x", "unknown key; expected one of name, on, wait")]


def test_rule_adds_the_rules_reason_only_for_text_the_base_check_kept() -> None:
    r = report(_checks.CONFIG_WORDING)
    check = _checks.rule(_checks.nonblank, lambda text: None if text == "ok" else "not ok")
    assert check(r, "a", "ok") == "ok"
    assert check(r, "b", "bad") == "bad"
    assert check(r, "c", " ") is None
    assert check(r, "d", 5) is None
    assert said(r) == [
        ("b", "not ok"),
        ("c", "must not be empty"),
        ("d", "expected a string, got number 5"),
    ]


def test_numbers_are_checked_against_their_ranges() -> None:
    r = report()
    assert _checks.int_in(r, "a", 5, low=1, high=10) == 5
    assert _checks.int_in(r, "b", True, low=0, high=10) is None
    assert _checks.int_in(r, "c", 11, low=1, high=10) is None
    assert _checks.fraction(r, "d", 1) == 1.0
    assert _checks.fraction(r, "e", 2) is None
    assert _checks.fraction(r, "f", "x") is None
    assert said(r) == [
        ("b", "expected an integer 0..10, got true"),
        ("c", "expected an integer 1..10, got integer 11"),
        ("e", "must be from 0 to 1, got 2"),
        ("f", 'expected a number from 0 to 1, got "x"'),
    ]


def test_a_huge_fraction_is_refused_without_overflowing() -> None:
    r = report()
    assert _checks.fraction(r, "g", 10**99) is None  # compared, never float(): it overflows
    assert _checks.fraction(r, "h", float("nan")) is None
    assert [field for field, _ in said(r)] == ["g", "h"]


def test_durations_must_have_a_unit_and_positive_ones_be_above_zero() -> None:
    r = report()
    assert _checks.duration(r, "a", "1h30m") == 5400.0
    assert _checks.duration(r, "b", 60) is None
    assert _checks.positive_duration(r, "c", "0s") == 0.0
    assert said(r) == [
        ("b", "expected a duration like 60s, got 60"),
        ("c", 'must be greater than 0, got "0s"'),
    ]


def test_choice_and_dns_label_keep_the_text_and_report_why_it_is_wrong() -> None:
    r = report()
    assert _checks.choice("no", "always")(r, "restart", "never") == "never"
    assert _checks.dns_label(r, "name", "web-1") == "web-1"
    assert _checks.dns_label(r, "name", "Web") == "Web"
    assert [field for field, _ in said(r)] == ["restart", "name"]
    assert said(r)[0][1] == 'expected one of no, always, got "never"'
    assert said(r)[1][1].startswith('"Web" is not a DNS label')


def test_label_pairs_are_sorted_and_a_bad_pair_is_left_out_with_one_problem() -> None:
    r = report()
    pairs = _checks.label_pairs(r, "labels", {"site": "b", "ring": "a", "bad key": 5})
    assert pairs == (("ring", "a"), ("site", "b"))
    assert [field for field, _ in said(r)] == ['labels["bad key"]']
    assert said(r)[0][1].startswith('label key "bad key" is invalid')


def test_a_duration_no_sleep_can_take_is_refused_with_a_bounded_message() -> None:
    r = report()
    assert _checks.duration(r, "a", "999999999999d") is None
    assert _checks.duration(r, "b", "9" * 400 + "s") is None  # would be inf as a float
    assert _checks.duration(r, "c", "36500d") == 36500 * 86400.0  # 100 years: still sleepable
    assert [field for field, _ in said(r)] == ["a", "b"]
    assert all(len(message) < 200 for _, message in said(r))
