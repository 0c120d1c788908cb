"""The fleet repo's optional `devices/inventory.yaml` (SPEC 2.1): known devices and their labels.

Used only for rollout previews (`reconciler plan --inventory`): it never decides what a device
runs, each device reads its own labels from its config. Pure: bytes in, values out; all problems
of the file are raised together in one `errors.ProblemsError`. An empty file lists no devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler import errors
from reconciler.core import _checks, labels, safe_yaml

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
    r = _checks.Report(path, _checks.INVENTORY_WORDING)
    entries: object = []
    if not isinstance(doc, dict):
        r.expected("", "a mapping with a devices list", doc)
    else:
        r.fields("", doc, allowed=("devices",), required=("devices",))
        entries = doc.get("devices", [])
    devices: list[InventoryDevice] = []
    seen: dict[str, str] = {}
    for where, entry in r.entries("devices", entries):
        before = len(r.problems)
        if not isinstance(entry, dict):
            r.expected(where, "a mapping with name and labels", entry)
            continue
        r.fields(where, entry, allowed=("name", "labels"))
        # Not `required`: a name written with no value is missing too.
        name = entry.get("name")
        if name is None:
            r.add(f"{where}.name", r.wording.missing)
        elif message := labels.dns_label_error(name):
            r.add(f"{where}.name", message)
        elif name in seen:
            r.add(f"{where}.name", f'duplicate device name "{name}" (also {seen[name]})')
        else:
            seen[name] = where
        pairs = _checks.label_pairs(r, f"{where}.labels", entry.get("labels", {}))
        if len(r.problems) == before:
            devices.append(InventoryDevice(name=str(name), labels=pairs))
    if r.problems:
        raise errors.ProblemsError(r.problems)
    return tuple(devices)
