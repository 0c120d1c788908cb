"""The fleet repo's optional `devices/inventory.yaml` (SPEC 2.1): known devices and their labels.

Used only for rollout previews (`reconciler plan --inventory`): it never decides what a device
runs, each device reads its own labels from its config. Pure: bytes in, values out; all problems
of the file are raised together in one `errors.ProblemsError`. An empty file lists no devices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler import errors, labels, safe_yaml

PATH = "devices/inventory.yaml"


@dataclass(frozen=True)
class InventoryDevice:
    """One listed device; `labels` are sorted (key, value) pairs, as `model.Selector` holds them."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()


def parse(data: bytes, *, path: str) -> tuple[InventoryDevice, ...]:
    """Validate an inventory file; devices keep the file's order. Raises ProblemsError."""
    doc = safe_yaml.load(data, file=path)
    if doc is None:
        return ()
    problems: list[errors.Problem] = []

    def problem(where: str, message: str) -> None:
        problems.append(errors.Problem(file=path, field=where, message=message))

    entries: object = []
    if not isinstance(doc, dict):
        problem("", f"expected a mapping with a devices list, got {_show(doc)}")
    else:
        for key in doc:
            if key != "devices":
                problem(str(key), f"unknown field {_show(key)}; allowed: devices")
        if "devices" not in doc:
            problem("devices", "required field is missing")
        entries = doc.get("devices", [])
    if not isinstance(entries, list):
        problem("devices", f"expected a list, got {_show(entries)}")
        entries = []
    devices: list[InventoryDevice] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"devices[{i}]"
        before = len(problems)
        if not isinstance(entry, dict):
            problem(where, f"expected a mapping with name and labels, got {_show(entry)}")
            continue
        for key in entry:
            if key not in ("name", "labels"):
                problem(f"{where}.{key}", f"unknown field {_show(key)}; allowed: name, labels")
        name = entry.get("name")
        if name is None:
            problem(f"{where}.name", "required field is missing")
        elif message := labels.dns_label_error(name):
            problem(f"{where}.name", message)
        elif name in seen:
            problem(f"{where}.name", f'duplicate device name "{name}" (also {seen[name]})')
        else:
            seen[name] = where
        pairs: list[tuple[str, str]] = []
        raw = entry.get("labels", {})
        if not isinstance(raw, dict):
            problem(f"{where}.labels", f"expected a mapping, got {_show(raw)}")
            raw = {}
        for key, value in raw.items():
            if message := labels.label_key_error(key) or labels.label_value_error(value):
                problem(f"{where}.labels.{key}", message)
            else:
                pairs.append((str(key), str(value)))
        if len(problems) == before:
            devices.append(InventoryDevice(name=str(name), labels=tuple(sorted(pairs))))
    if problems:
        raise errors.ProblemsError(problems)
    return tuple(devices)


def _show(value: object) -> str:
    """A value as messages show it; strings JSON-quoted so control characters stay visible."""
    if isinstance(value, str) or value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
