"""`.fleet/rollout.yaml` and `--max-failures` as fuzzed input: any bytes or text is a value or the
documented error (ProblemsError / ValueError) with one-line, bounded messages; an edit of any
valid file parses back to exactly the wanted entries."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import errors
from reconciler.core import fleet_status, rollout_control

FAST = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MESSAGE_LIMIT = 1100

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.from_regex(r"[0-9a-f]{10,66}", fullmatch=True),
)
entries = (
    st.dictionaries(st.sampled_from(["paused", "abort", "pause", "x"]), scalars, max_size=3)
    | scalars
)
documents = st.one_of(
    st.dictionaries(
        st.sampled_from(["apps", "other"]),
        st.dictionaries(st.text(max_size=12), entries, max_size=4) | scalars,
        max_size=2,
    ),
    scalars,
    st.lists(scalars, max_size=3),
)


def _check(data: bytes) -> None:
    try:
        rollout_control.parse(data)
    except errors.ProblemsError as exc:
        for problem in exc.problems:
            line = str(problem)
            assert "\n" not in line and len(line) <= MESSAGE_LIMIT
            assert problem.file == rollout_control.PATH


@FAST
@given(documents)
def test_structured_documents_are_a_value_or_problems(doc):
    _check(yaml.safe_dump(doc).encode())


@FAST
@given(st.binary(max_size=300))
def test_raw_bytes_are_a_value_or_problems(data):
    _check(data)


@FAST
@given(
    documents, st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True), st.booleans()
)
def test_edits_of_valid_files_parse_back_to_the_wanted_entries(doc, app, pause):
    data = yaml.safe_dump(doc).encode()
    try:
        current = rollout_control.parse(data)
    except errors.ProblemsError:
        return
    control = rollout_control.Control(paused=pause)
    edited = rollout_control.edit(data, app, control)
    wanted = dict(current)
    if control.empty:
        wanted.pop(app, None)
    else:
        wanted[app] = control
    assert rollout_control.parse(edited.data) == dict(sorted(wanted.items()))


@FAST
@given(st.text(max_size=12))
def test_max_failures_is_a_threshold_or_a_value_error(text):
    try:
        threshold = fleet_status.parse_threshold(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert threshold.exceeded(0, 0) is False
