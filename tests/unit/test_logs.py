"""Structured logs (SPEC 3.3): JSON lines, human text, handler set-up and odd field values."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import logs

Setup = Callable[..., io.StringIO]
HANDLER_NAME = "reconciler.logs"
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HUMAN_PREFIX = re.compile(r"\d\d:\d\d:\d\d (debug|info |warn |error|crit ) ")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.setup` changes process-wide logging; put it back for the tests that follow."""
    root = logging.getLogger()
    reconciler = logging.getLogger("reconciler")
    saved = (list(root.handlers), root.level, reconciler.level)
    yield
    for handler in root.handlers:
        if handler.get_name() == HANDLER_NAME:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    reconciler.setLevel(saved[2])


@pytest.fixture
def setup() -> Setup:
    """`logs.setup` writing to a fresh StringIO, which it returns."""

    def run(**options: Any) -> io.StringIO:
        stream = io.StringIO()
        logs.setup(stream=stream, **options)
        return stream

    return run


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in stream.getvalue().splitlines()]


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]


class Odd:
    def __str__(self) -> str:
        return "odd thing"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


# --- JSON lines ----------------------------------------------------------------------------


def test_json_lines_hold_one_object_per_event_with_ts_level_event_and_fields(
    setup: Setup,
) -> None:
    stream = setup(json_lines=True)
    log = logs.get("reconciler.cycle")
    before = datetime.now(UTC)
    log.info("cycle.done", result="converged", apps=2, ok=True, took=1.5, commit=None)
    log.warning("fetch.failed", remote="origin")
    after = datetime.now(UTC)
    first, second = json_lines(stream)
    assert first == {
        "ts": first["ts"],
        "level": "info",
        "event": "cycle.done",
        "result": "converged",
        "apps": 2,
        "ok": True,
        "took": 1.5,
        "commit": None,
    }
    assert list(first)[:3] == ["ts", "level", "event"]
    assert ISO_UTC_MS.fullmatch(first["ts"])
    logged = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= logged <= after
    assert second == {"ts": second["ts"], "level": "warning", "event": "fetch.failed"} | {
        "remote": "origin"
    }


def test_logs_event_takes_a_plain_stdlib_logger(setup: Setup) -> None:
    stream = setup(json_lines=True)
    logs.event(logging.getLogger("reconciler.x"), logging.ERROR, "apply.failed", app="gw")
    (line,) = json_lines(stream)
    assert (line["level"], line["event"], line["app"]) == ("error", "apply.failed", "gw")


def test_a_field_named_like_a_core_key_is_kept_beside_it(setup: Setup) -> None:
    stream = setup(json_lines=True)
    logs.get("reconciler.x").info("odd.names", ts="mine", level="high", event="other")
    (line,) = json_lines(stream)
    assert line["event"] == "odd.names"
    assert line["level"] == "info"
    assert ISO_UTC_MS.fullmatch(line["ts"])
    assert (line["ts_"], line["level_"], line["event_"]) == ("mine", "high", "other")


def test_values_json_cannot_hold_are_rendered_with_str_not_dropped(setup: Setup) -> None:
    stream = setup(json_lines=True)
    logs.get("reconciler.x").info(
        "odd.values",
        thing=Odd(),
        path=Path("/var/lib/reconciler"),
        error=ValueError("bad port"),
        tags={"b", "a"},
        pair=("x", 1),
        nested={"when": Odd(), "items": [Path("/a")]},
    )
    (line,) = json_lines(stream)
    assert line["thing"] == "odd thing"
    assert line["path"] == "/var/lib/reconciler"
    assert line["error"] == "ValueError: bad port"
    assert line["tags"] == ["a", "b"]
    assert line["pair"] == ["x", 1]
    assert line["nested"] == {"when": "odd thing", "items": ["/a"]}


def test_values_that_break_json_dumps_still_give_a_valid_line(setup: Setup) -> None:
    stream = setup(json_lines=True)
    looped: list[Any] = []
    looped.append(looped)
    logs.get("reconciler.x").info(
        "awkward.values",
        by_pair={("a", 1): "x"},
        missing=float("nan"),
        huge=float("inf"),
        broken=Unprintable(),
        looped=looped,
    )
    (line,) = json_lines(stream)
    assert line["by_pair"] == {"('a', 1)": "x"}
    assert (line["missing"], line["huge"]) == ("nan", "inf")
    assert line["broken"] == "<Unprintable whose str() failed>"
    assert "[...]" in json.dumps(line["looped"])


field_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=8)
    | st.builds(Odd)
    | st.builds(Unprintable),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4) | st.tuples(st.integers()), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(value=field_values)
def test_any_field_value_gives_exactly_one_parseable_line(value: Any) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("reconciler.test_logs.property")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.setLevel(logging.INFO)
        logs.event(logger, logging.INFO, "any.value", value=value)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    (line,) = json_lines(stream)
    assert line["event"] == "any.value"
    assert "value" in line


def test_log_exception_adds_the_traceback_as_the_exception_field(setup: Setup) -> None:
    stream = setup(json_lines=True)
    try:
        _ = {}["missing"]
    except KeyError:
        logs.get("reconciler.x").exception("cycle.crashed", step="apply", exception="mine")
    (line,) = json_lines(stream)
    assert line["level"] == "error"
    assert line["step"] == "apply"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in line["exception"]
    assert line["exception_"] == "mine"


def test_a_plain_stdlib_record_becomes_an_event_named_after_its_logger(setup: Setup) -> None:
    stream = setup(json_lines=True)
    logging.getLogger("urllib3.connectionpool").warning("Retrying (%d left)", 2)
    (line,) = json_lines(stream)
    assert line["event"] == "urllib3.connectionpool"
    assert line["level"] == "warning"
    assert line["message"] == "Retrying (2 left)"


# --- human text ----------------------------------------------------------------------------


def test_human_format_is_time_level_event_then_key_values(setup: Setup) -> None:
    stream = setup(json_lines=False, level="debug")
    log = logs.get("reconciler.cycle")
    log.info("cycle.done", result="converged", apps=2, ok=True, commit=None)
    log.debug("plan.made", actions=["pull", "start"])
    log.warning("fetch.failed", remote="origin")
    lines = stream.getvalue().splitlines()
    assert [HUMAN_PREFIX.sub("", line, count=1) for line in lines] == [
        "cycle.done result=converged apps=2 ok=true commit=null",
        "plan.made actions=pull,start",
        "fetch.failed remote=origin",
    ]
    assert [line[9:14] for line in lines] == ["info ", "debug", "warn "]
    assert time.strptime(lines[0][:8], "%H:%M:%S")


def test_human_values_that_would_blur_the_layout_are_quoted(setup: Setup) -> None:
    stream = setup(json_lines=False)
    logs.get("reconciler.x").info(
        "apply.replace", reason="image changed", expr="a=b", empty="", forged="x\ninfo  evil"
    )
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(
        'apply.replace reason="image changed" expr="a=b" empty="" forged="x\\ninfo  evil"'
    )


def test_human_format_renders_odd_values_with_str(setup: Setup) -> None:
    stream = setup(json_lines=False)
    logs.get("reconciler.x").info(
        "odd.values", thing=Odd(), broken=Unprintable(), by_pair={("a", 1): 2}, tags={"b", "a"}
    )
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(
        'odd.values thing="odd thing" broken="<Unprintable whose str() failed>" '
        'by_pair="{\\"(\'a\', 1)\\": 2}" tags=a,b'
    )


def test_human_format_puts_the_traceback_under_the_line(setup: Setup) -> None:
    stream = setup(json_lines=False)
    try:
        raise RuntimeError("engine went away")
    except RuntimeError:
        logs.get("reconciler.x").exception("cycle.crashed", step="apply")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("error cycle.crashed step=apply")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: engine went away"


def test_the_format_follows_whether_the_stream_is_a_terminal() -> None:
    controller, terminal_fd = os.openpty()
    try:
        with open(terminal_fd, "w", encoding="utf-8", closefd=True) as terminal:
            logs.setup(stream=terminal)
            logs.get("reconciler.x").info("tty.check", n=1)
            terminal.flush()
            shown = os.read(controller, 4096).decode()
        assert HUMAN_PREFIX.match(shown)
        assert "tty.check n=1" in shown
    finally:
        os.close(controller)
        for handler in our_handlers():
            logging.getLogger().removeHandler(handler)
    piped = io.StringIO()
    logs.setup(stream=piped)
    logs.get("reconciler.x").info("pipe.check", n=1)
    assert json.loads(piped.getvalue())["event"] == "pipe.check"


# --- set-up --------------------------------------------------------------------------------


def test_setup_called_twice_leaves_one_handler_writing_to_the_new_stream(setup: Setup) -> None:
    first = setup(json_lines=True)
    second = setup(json_lines=False)
    assert len(our_handlers()) == 1
    logs.get("reconciler.x").info("once.only", n=1)
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_setup_returns_the_handler_it_installed(setup: Setup) -> None:
    handler = logs.setup(stream=io.StringIO(), json_lines=True)
    assert our_handlers() == [handler]
    assert isinstance(handler.formatter, logs.JsonFormatter)


def test_the_level_filters_our_events(setup: Setup) -> None:
    stream = setup(json_lines=True, level="WARNING")
    log = logs.get("reconciler.x")
    log.info("not.shown")
    log.warning("shown")
    assert [line["event"] for line in json_lines(stream)] == ["shown"]


def test_debug_is_for_our_loggers_while_libraries_speak_from_warning_up(setup: Setup) -> None:
    stream = setup(json_lines=True, level="debug")
    logs.get("reconciler.x").debug("ours.debug")
    logging.getLogger("docker.api").info("library chatter")
    logging.getLogger("docker.api").warning("library warning")
    assert [line["event"] for line in json_lines(stream)] == ["ours.debug", "docker.api"]


def test_an_unknown_level_is_refused_with_the_choices_named(setup: Setup) -> None:
    with pytest.raises(ValueError, match="level") as refused:
        setup(level="verbose")
    message = str(refused.value)
    assert "'verbose'" in message
    for choice in ("debug", "info", "warning", "error", "critical"):
        assert choice in message
    assert our_handlers() == []


# --- records for plain handlers ------------------------------------------------------------


def test_records_carry_the_human_line_and_point_at_the_calling_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="reconciler"):
        logs.get("reconciler.x").info("via.get", app="gw")
        logs.event(logging.getLogger("reconciler.x"), logging.INFO, "via.event", app="db")
    assert caplog.messages == ["via.get app=gw", "via.event app=db"]
    for record in caplog.records:
        assert record.filename == "test_logs.py"
        assert record.funcName == "test_records_carry_the_human_line_and_point_at_the_calling_code"
    assert logs.record_fields(caplog.records[0]) == ("via.get", {"app": "gw"})


def test_an_event_below_the_level_is_never_built(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reconciler"):
        logs.get("reconciler.x").debug("too.chatty", value=Unprintable())
    assert caplog.records == []
