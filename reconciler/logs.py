"""Structured logging on the stdlib: one event name per step plus key-values (STYLE B4).

Owns the log format (SPEC 3.3): one JSON object per line when stderr is not a terminal, short
human text when it is. Call sites name an event and its fields, never an f-string message:
`logs.event(_log, logging.INFO, "cycle.done", result="converged")`, or through `logs.get(name)`:
`log.info("apply.replace", app="gw", reason="image changed")`. Must not: depend on structlog or
any other package, or drop a record it cannot serialise (odd values are rendered with `str`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from reconciler.text import utc_time

# Attribute names on the LogRecord; `extra` must not reuse LogRecord's own attributes.
_EVENT = "event"
_FIELDS = "fields"
_CORE_KEYS = frozenset({"ts", "level", "event"})
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_SHORT = {"warning": "warn", "critical": "crit"}  # human text keeps levels 5 wide
_HANDLER_NAME = "reconciler.logs"
# Deeper values (or a container holding itself) are rendered with `str` past this depth.
_MAX_DEPTH = 16


def event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    """Log event `name` with `fields`. The record's message is the human line, so plain
    handlers (pytest's caplog, a journal) still show every field."""
    _emit(logger, level, name, fields)


def _emit(logger: logging.Logger, level: int, name: str, fields: dict[str, Any]) -> None:
    # Called straight from `event` and the `EventLogger` methods, so stacklevel=3 names
    # their caller as the record's file and line (what caplog shows), not this module.
    if not logger.isEnabledFor(level):
        return
    exc_info = fields.pop("exc_info", None)
    logger.log(
        level,
        "%s",
        _human_fields(name, fields),
        exc_info=exc_info,
        extra={_EVENT: name, _FIELDS: fields},
        stacklevel=3,
    )


class EventLogger:
    """`log.info("apply.replace", app="gw")`: `event` bound to one logger."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def debug(self, name: str, /, **fields: Any) -> None:
        _emit(self.logger, logging.DEBUG, name, fields)

    def info(self, name: str, /, **fields: Any) -> None:
        _emit(self.logger, logging.INFO, name, fields)

    def warning(self, name: str, /, **fields: Any) -> None:
        _emit(self.logger, logging.WARNING, name, fields)

    def error(self, name: str, /, **fields: Any) -> None:
        _emit(self.logger, logging.ERROR, name, fields)

    def exception(self, name: str, /, **fields: Any) -> None:
        """An error with the exception being handled rendered as the `exception` field."""
        _emit(self.logger, logging.ERROR, name, {**fields, "exc_info": True})


def get(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name))


def setup(
    *,
    stream: TextIO | None = None,
    level: str = "info",
    json_lines: bool | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (default: stderr) in one format; returns the handler.

    `json_lines=None` picks JSON unless `stream` is a terminal. `level` applies to the
    `reconciler` loggers; other libraries' loggers speak only from warning up, so a debug run
    is not buried in HTTP chatter. Calling it again replaces the handler it installed before.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"level: expected one of {', '.join(_LEVELS)}, got {level!r}")
    out = stream if stream is not None else sys.stderr
    if json_lines is None:
        isatty = getattr(out, "isatty", None)
        json_lines = not (callable(isatty) and isatty())
    root = logging.getLogger()
    # Closed before the new one is named: closing unregisters a handler by name.
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if json_lines else HumanFormatter())
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("reconciler").setLevel(numeric)
    return handler


def record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and fields of `record`. A plain `logger.info("text %s", x)` record
    becomes event `<logger name>` with its text as `message`."""
    name = getattr(record, _EVENT, None)
    fields = getattr(record, _FIELDS, None)
    if isinstance(name, str) and isinstance(fields, Mapping):
        return name, dict(fields)
    return record.name, {"message": record.getMessage()}


class JsonFormatter(logging.Formatter):
    """`{"ts": "2024-05-01T12:00:01.123Z", "level": "info", "event": "cycle.done", ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        name, fields = record_fields(record)
        doc: dict[str, Any] = {
            "ts": utc_time(datetime.fromtimestamp(record.created, UTC), timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": name,
        }
        reserved = _CORE_KEYS | {"exception"} if record.exc_info else _CORE_KEYS
        for key, value in fields.items():
            # A field must never overwrite ts/level/event/exception, and must not vanish either.
            doc[f"{key}_" if key in reserved else key] = _jsonable(value)
        if record.exc_info:
            doc["exception"] = _exception_text(record.exc_info)
        return json.dumps(doc, allow_nan=False)


class HumanFormatter(logging.Formatter):
    """`12:00:01 info  cycle.done result=converged apps=2` (local time), traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        name, fields = record_fields(record)
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = record.levelname.lower()
        line = f"{clock} {_SHORT.get(level, level):<5} {_human_fields(name, fields)}"
        if record.exc_info:
            line += "\n" + _exception_text(record.exc_info).rstrip("\n")
        return line


def _human_fields(name: str, fields: Mapping[str, Any]) -> str:
    parts = [name, *(f"{key}={_human_value(value)}" for key, value in fields.items())]
    return " ".join(parts)


def _human_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        text = json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)
    elif isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=_safe_str) if isinstance(value, (set, frozenset)) else value
        text = ",".join(_text(v) for v in items)
    else:
        text = _text(value)
    # Lone surrogates (undecodable file names) would make the stream's write fail.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    # Quote anything that would blur the key=value layout or forge a second line.
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def _jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as something `json.dumps` always encodes: what JSON has no form for becomes
    text, so no value can make a record vanish (or raise into the code that logged it)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        # NaN and Infinity are not JSON; jq and most log shippers reject the line.
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        return {_json_key(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return [_jsonable(item, depth + 1) for item in sorted(value, key=_safe_str)]
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value]
    return _text(value)


def _json_key(key: Any) -> str | int | None:
    # json.dumps accepts these keys (a bool is an int); a tuple key would make it raise.
    return key if key is None or isinstance(key, (str, int)) else _text(key)


def _text(value: Any) -> str:
    """`str(value)`; an exception keeps its type name (`"ValueError: bad port"`)."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {_safe_str(value)}"
    return _safe_str(value)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the record
        return f"<{type(value).__name__} whose str() failed>"


def _exception_text(exc_info: Any) -> str:
    return "".join(traceback.format_exception(*exc_info))
