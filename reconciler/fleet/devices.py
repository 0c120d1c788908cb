"""The devices `plan` plans for: from `--labels` (one device) or an inventory file.

Turns command-line text and inventory files into `Device` values, raising ValueError or
ProblemsError that name the bad item; `cli` prints them (exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.adapters import checkout
from reconciler.core import inventory, labels, release
from reconciler.errors import Problem, ProblemsError
from reconciler.fleet.printing import safe


@dataclass(frozen=True)
class Device:
    """A device to plan for: its name (seeds rollout buckets) and labels (match selectors)."""

    name: str
    labels: Mapping[str, str]

    def __post_init__(self) -> None:
        if problem := labels.dns_label_error(self.name):
            raise ValueError(f"device name {problem}")


def parse_label_list(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as given to `plan --labels`; raises ValueError naming the bad item."""
    result: dict[str, str] = {}
    if not text.strip():
        return result
    # As Kubernetes' selector syntax: an empty item ("a=b,", ",") is an error, not "no labels".
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f'--labels: empty item in "{safe(text)}"; expected key=value,...')
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f'--labels: expected key=value, got "{safe(item)}"')
        if problem := labels.label_key_error(key) or labels.label_value_error(value):
            raise ValueError(f"--labels: {safe(problem)}")
        if key in result:
            raise ValueError(f'--labels: "{safe(key)}" is given twice')
        result[key] = value
    return result


def inventory_devices(path: Path) -> list[Device]:
    """Devices of an inventory file (`devices/inventory.yaml` shape); raises ProblemsError."""
    name = str(path)
    try:
        data = checkout.read_capped(path, release.MAX_BYTES + 1)
    except OSError as exc:
        raise ProblemsError([Problem(name, "", f"cannot be read: {exc.strerror or exc}")]) from None
    return [Device(d.name, dict(d.labels)) for d in inventory.parse(data, path=name)]
