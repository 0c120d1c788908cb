"""The fleet repo's optional `.fleet/rollout.yaml` (SPEC 2.3): paused and aborted rollouts.

```yaml
apps:
  web: {paused: true}
  gw: {abort: "3f2a9c01b7e4"}     # a revision: its sha256, or a prefix of at least 12 hex digits
```

Owns the file's schema, its error messages and its edits (`edit`): pause, resume (the entry goes)
and abort. Edits keep the file's comments and other entries: the entry's line is changed, added
or removed as text, and the result is parsed again; only a layout this line editor does not
understand (an entry spread over lines in an unusual way) makes it write the file anew, and then
`Edited.rewritten` says so, so the caller can tell the operator comments were lost.

Pure: bytes in, values out. Which app names exist and which full revision a prefix names is the
caller's to decide (`fleet.rollout_file` reads the manifests and their history from Git).
An app may be both paused and aborted (abort an old revision while the newest is paused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler import errors
from reconciler.core import _checks, labels, safe_yaml

PATH = ".fleet/rollout.yaml"
MIN_PREFIX = 12
_PREFIX = re.compile(r"[0-9a-f]{12,64}")
_HEADER = (
    "# Rollout control (SPEC 2.3), carried into the next signed release by `reconciler release`.\n"
    "# paused: devices not yet on the newest revision keep what they run.\n"
    "# abort: devices running that revision return to their previous one and hold it back.\n"
    "# Resuming is removing the entry (`reconciler rollout resume APP`).\n"
)
_APPS_LINE = re.compile(r"apps:[ \t]*(?P<empty>\{\})?[ \t]*(?P<rest>#.*)?")
_ENTRY_LINE = re.compile(
    r"(?P<indent>[ \t]+)(?P<name>[^\s:#]+):(?P<value>[^#]*?)(?P<rest>[ \t]+#.*)?"
)


@dataclass(frozen=True)
class Control:
    """One app's entry: paused, and the revision (sha256 or prefix, lower-case hex) to abort."""

    paused: bool = False
    abort: str | None = None

    @property
    def empty(self) -> bool:
        return not self.paused and self.abort is None


@dataclass(frozen=True)
class Edited:
    """The file after an edit: its bytes, whether anything changed, and whether it had to be
    written anew (comments and layout lost) because the line editor could not place the edit."""

    data: bytes
    changed: bool
    rewritten: bool


def parse(data: bytes | None, *, path: str = PATH) -> dict[str, Control]:
    """App name -> control, sorted by name; no file or an empty one controls nothing.

    Raises ProblemsError naming the file, the field and why, every problem at once.
    """
    if data is None:
        return {}
    doc = safe_yaml.load(data, file=path)
    if doc is None:
        return {}
    r = _checks.Report(path, _checks.INVENTORY_WORDING)
    entries = r.fields("", doc, allowed=("apps",))
    raw_apps = (entries or {}).get("apps") or {}
    if not isinstance(raw_apps, dict):
        r.expected("apps", "a mapping of app name -> {paused: true} or {abort: REVISION}", raw_apps)
        raw_apps = {}
    controls: dict[str, Control] = {}
    for name, raw in raw_apps.items():
        where = f"apps.{name}"
        before = len(r.problems)
        if not isinstance(name, str) or (why := labels.dns_label_error(name)) is not None:
            r.add(where, f"app name {why or 'must be a string'}")
            continue
        entry = r.fields(where, raw, allowed=("paused", "abort"))
        if entry is None:
            continue
        if not entry:
            r.add(where, "expected paused: true or abort: REVISION; to resume, remove the entry")
            continue
        paused = entry.get("paused", False)
        if "paused" in entry and paused is not True:
            r.expected(f"{where}.paused", "true (to resume, remove the entry)", paused)
        abort = entry.get("abort")
        if "abort" in entry and (not isinstance(abort, str) or not _PREFIX.fullmatch(abort)):
            hint = ' (quote it: "...")' if isinstance(abort, int | float) else ""
            r.expected(
                f"{where}.abort",
                f"a revision: its sha256 or a prefix of {MIN_PREFIX} to 64 lower-case hex digits",
                abort,
                hint=hint,
            )
        if len(r.problems) == before:
            controls[name] = Control(paused=paused is True, abort=abort)
    if r.problems:
        raise errors.ProblemsError(r.problems)
    return dict(sorted(controls.items()))


def serialize(controls: Mapping[str, Control]) -> bytes:
    """A fresh file for `controls` (empty entries left out): the header comment, then one
    flow-style line per app, sorted."""
    lines = [_HEADER, "apps:"]
    kept = {name: c for name, c in sorted(controls.items()) if not c.empty}
    if not kept:
        lines[-1] = "apps: {}"
    lines += [f"  {name}: {_flow(control)}" for name, control in kept.items()]
    return ("\n".join(lines) + "\n").encode("utf-8")


def edit(data: bytes | None, app: str, control: Control, *, path: str = PATH) -> Edited:
    """Set `app`'s entry to `control` (an empty control removes the entry: resume).

    Idempotent: setting what is there already leaves the bytes as they are. Raises
    ProblemsError when the current file is invalid (it is never edited blind).
    """
    current = parse(data, path=path)
    wanted = dict(current)
    if control.empty:
        wanted.pop(app, None)
    else:
        wanted[app] = control
    if wanted == current and data is not None:
        return Edited(data, changed=False, rewritten=False)
    if data is None or not data.strip():
        return Edited(serialize(wanted), changed=True, rewritten=False)
    text = data.decode("utf-8")
    edited = _edit_lines(text, app, control)
    if edited is not None:
        try:
            if parse(edited.encode("utf-8"), path=path) == wanted:
                return Edited(edited.encode("utf-8"), changed=True, rewritten=False)
        except errors.ProblemsError:
            pass  # the line edit misread the layout: fall back to a fresh file
    return Edited(serialize(wanted), changed=True, rewritten=True)


def _flow(control: Control) -> str:
    parts = []
    if control.paused:
        parts.append("paused: true")
    if control.abort is not None:
        # Quoted: an all-digit revision prefix would otherwise be read as a YAML integer.
        parts.append(f"abort: {json.dumps(control.abort)}")
    return "{" + ", ".join(parts) + "}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _is_note(line: str) -> bool:
    """Blank or comment-only: belongs to no entry by itself."""
    return not line.strip() or line.lstrip().startswith("#")


def _edit_lines(text: str, app: str, control: Control) -> str | None:
    """The text with `app`'s entry set, added or removed line by line; None when the layout is
    not the plain `apps:` block this understands (the caller then writes the file anew)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _APPS_LINE.fullmatch(line)]
    if len(starts) != 1:
        return None
    top = starts[0]
    # The block: every line after `apps:` up to the next line at column 0 that is not a note.
    end = top + 1
    while end < len(lines) and (_is_note(lines[end]) or _indent(lines[end]) > 0):
        end += 1
    while end > top + 1 and not lines[end - 1].strip():
        end -= 1  # trailing blank lines stay after the block
    content = [i for i in range(top + 1, end) if not _is_note(lines[i])]
    entry_indent = _indent(lines[content[0]]) if content else 2
    entries: dict[str, tuple[int, int]] = {}  # name -> (first line, line after the entry)
    for i in content:
        if _indent(lines[i]) != entry_indent:
            continue
        match = _ENTRY_LINE.fullmatch(lines[i])
        if match is None:
            return None
        last = i + 1
        while last < end and (not lines[last].strip() or _indent(lines[last]) > entry_indent):
            last += 1
        while last > i + 1 and not lines[last - 1].strip():
            last -= 1
        entries[match["name"]] = (i, last)
    new = None if control.empty else f"{' ' * entry_indent}{app}: {_flow(control)}"
    if app in entries:
        first, after = entries[app]
        if new is None:
            del lines[first:after]
        else:
            match = _ENTRY_LINE.fullmatch(lines[first])
            assert match is not None
            # The entry's own comments (on its line, or indented below it) are kept.
            # A dropped value line's own comment stays, as a comment line where it was.
            notes = [
                line if _is_note(line) else f"{line[: _indent(line)]}#{line.split('#', 1)[1]}"
                for line in lines[first + 1 : after]
                if _is_note(line) or "#" in line
            ]
            lines[first:after] = [new + (match["rest"] or ""), *notes]
    elif new is not None:
        apps_line = _APPS_LINE.fullmatch(lines[top])
        assert apps_line is not None
        if apps_line["empty"]:  # `apps: {}` becomes a block holding the new entry
            lines[top] = "apps:" + (f"  {apps_line['rest']}" if apps_line["rest"] else "")
        lines.insert(end, new)
    return "\n".join(lines) + "\n"
