"""`.fleet/rollout.yaml` (SPEC 2.3): strict parsing, and edits that keep comments and order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import errors
from reconciler.core import rollout_control
from reconciler.core.rollout_control import Control

REV = "3f2a9c01b7e4" + "5" * 52
SPEC_EXAMPLE = b"""\
apps:
  web: {paused: true}            # devices not yet on the newest revision keep what they run
  gw: {abort: 3f2a9c01b7e4}      # revision (sha256 prefix, >= 12 hex): devices running it return
                                 # to their previous revision and hold it back; others never take it
"""


def problems_of(data):
    with pytest.raises(errors.ProblemsError) as caught:
        rollout_control.parse(data)
    return {p.field: p.message for p in caught.value.problems}


def test_parse_reads_the_spec_example():
    assert rollout_control.parse(SPEC_EXAMPLE) == {
        "gw": Control(abort="3f2a9c01b7e4"),
        "web": Control(paused=True),
    }


@pytest.mark.parametrize("data", [None, b"", b"# nothing yet\n", b"apps:\n", b"apps: {}\n"])
def test_no_file_or_no_entries_controls_nothing(data):
    assert rollout_control.parse(data) == {}


def test_an_app_may_be_paused_and_abort_an_older_revision():
    data = b'apps:\n  gw: {paused: true, abort: "' + REV.encode() + b'"}\n'
    assert rollout_control.parse(data) == {"gw": Control(paused=True, abort=REV)}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (b"apps:\n  web: {paused: false}\n", "apps.web.paused", "expected true (to resume"),
        (b"apps:\n  web: {paused: yes please}\n", "apps.web.paused", "expected true"),
        (b"apps:\n  web: {pause: true}\n", "apps.web.pause", "unknown field"),
        (b"apps:\n  web: {}\n", "apps.web", "to resume, remove the entry"),
        (b"apps:\n  web: true\n", "apps.web", "expected a mapping"),
        (b"apps:\n  Web: {paused: true}\n", "apps.Web", "app name"),
        (b"apps:\n  gw: {abort: 3f2a9c01b7e}\n", "apps.gw.abort", "prefix of 12 to 64"),
        (b"apps:\n  gw: {abort: 3F2A9C01B7E4}\n", "apps.gw.abort", "lower-case hex"),
        (b"apps:\n  gw: {abort: 123456789012}\n", "apps.gw.abort", '(quote it: "...")'),
        (b"apps:\n  gw: {abort: " + REV.encode() + b"0}\n", "apps.gw.abort", "64"),
        (b"apps: [web]\n", "apps", "expected a mapping of app name"),
        (b"apps: {}\npaused: [web]\n", "paused", "unknown field"),
        (b"- web\n", "", "expected a mapping"),
    ],
)
def test_bad_entries_name_the_file_field_and_reason(data, field, words):
    with pytest.raises(errors.ProblemsError) as caught:
        rollout_control.parse(data)
    (problem,) = caught.value.problems
    assert problem.file == ".fleet/rollout.yaml"
    assert problem.field == field
    assert words in problem.message


def test_every_problem_is_reported_at_once():
    data = b"apps:\n  web: {paused: 1}\n  gw: {abort: x}\n  ok: {paused: true}\n"
    assert set(problems_of(data)) == {"apps.web.paused", "apps.gw.abort"}


def test_yaml_that_is_not_yaml_is_refused_with_the_file_named():
    with pytest.raises(errors.ProblemsError) as caught:
        rollout_control.parse(b"apps: {web: [\n")
    assert caught.value.problems[0].file == ".fleet/rollout.yaml"


# --- edits ---------------------------------------------------------------------------------


def test_pausing_in_a_missing_file_writes_a_commented_fresh_one():
    result = rollout_control.edit(None, "web", Control(paused=True))
    assert result.changed and not result.rewritten
    assert result.data.startswith(b"# Rollout control")
    assert rollout_control.parse(result.data) == {"web": Control(paused=True)}


def test_edits_keep_comments_and_the_other_entries_in_place():
    paused = rollout_control.edit(SPEC_EXAMPLE, "db", Control(paused=True))
    assert not paused.rewritten
    assert paused.data == SPEC_EXAMPLE + b"  db: {paused: true}\n"
    resumed = rollout_control.edit(paused.data, "web", rollout_control.Control())
    assert resumed.data == b"apps:\n" + SPEC_EXAMPLE.split(b"\n", 2)[2] + b"  db: {paused: true}\n"
    assert rollout_control.parse(resumed.data) == {
        "db": Control(paused=True),
        "gw": Control(abort="3f2a9c01b7e4"),
    }


def test_changing_an_entry_keeps_its_comments():
    result = rollout_control.edit(SPEC_EXAMPLE, "gw", Control(abort=REV))
    lines = result.data.decode().splitlines()
    assert lines[2].startswith(f'  gw: {{abort: "{REV}"}}      # revision (sha256 prefix')
    assert lines[3].strip().startswith("# to their previous revision")
    assert not result.rewritten


def test_removing_an_entry_removes_its_own_comment_lines():
    result = rollout_control.edit(SPEC_EXAMPLE, "gw", Control())
    assert result.data == SPEC_EXAMPLE.split(b"  gw:")[0]


def test_edits_are_idempotent():
    once = rollout_control.edit(SPEC_EXAMPLE, "web", Control(paused=True))
    assert not once.changed and once.data == SPEC_EXAMPLE
    gone = rollout_control.edit(SPEC_EXAMPLE, "nothing", Control())
    assert not gone.changed and gone.data == SPEC_EXAMPLE
    paused = rollout_control.edit(b"apps: {}\n", "web", Control(paused=True))
    assert paused.data == b"apps:\n  web: {paused: true}\n"
    again = rollout_control.edit(paused.data, "web", Control(paused=True))
    assert not again.changed


def test_block_style_entries_are_edited_too():
    data = (
        b"# ours\napps:\n  web:\n    paused: true   # till Monday\n  gw:\n    abort: 3f2a9c01b7e4\n"
    )
    result = rollout_control.edit(data, "web", Control(abort=REV))
    assert not result.rewritten
    assert result.data.startswith(b"# ours\napps:\n  web: {abort: ")
    assert b"# till Monday" in result.data
    assert rollout_control.parse(result.data) == {
        "web": Control(abort=REV),
        "gw": Control(abort="3f2a9c01b7e4"),
    }


def test_a_layout_the_line_editor_does_not_know_is_rewritten_and_says_so():
    data = b"apps: {web: {paused: true}}  # flow style\n"
    result = rollout_control.edit(data, "gw", Control(paused=True))
    assert result.changed and result.rewritten
    assert rollout_control.parse(result.data) == {
        "gw": Control(paused=True),
        "web": Control(paused=True),
    }


def test_an_invalid_file_is_never_edited():
    with pytest.raises(errors.ProblemsError):
        rollout_control.edit(b"apps:\n  web: {paused: no}\n", "gw", Control(paused=True))


names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
controls = st.builds(
    Control,
    paused=st.booleans(),
    abort=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{12,64}", fullmatch=True)),
)


@given(st.lists(st.tuples(names, controls), max_size=8))
def test_any_sequence_of_edits_ends_in_exactly_the_wanted_entries(steps):
    data = None
    wanted = {}
    for name, control in steps:
        data = rollout_control.edit(data, name, control).data
        if control.empty:
            wanted.pop(name, None)
        else:
            wanted[name] = control
        assert rollout_control.parse(data) == dict(sorted(wanted.items()))
