"""`devices/inventory.yaml` parsing (SPEC 2.1)."""

from __future__ import annotations

import pytest

from reconciler import errors
from reconciler.core import inventory

PATH = "devices/inventory.yaml"


def problems_of(data: bytes) -> list[tuple[str, str]]:
    with pytest.raises(errors.ProblemsError) as caught:
        inventory.parse(data, path=PATH)
    assert all(p.file == PATH for p in caught.value.problems)
    return [(p.field, p.message) for p in caught.value.problems]


def test_spec_example_parses_with_sorted_labels() -> None:
    data = b"""\
devices:
  - name: gw-berlin-01
    labels: {site: berlin, role: gateway, ring: canary}
  - name: kiosk-7
"""
    assert inventory.parse(data, path=PATH) == (
        inventory.InventoryDevice(
            "gw-berlin-01", (("ring", "canary"), ("role", "gateway"), ("site", "berlin"))
        ),
        inventory.InventoryDevice("kiosk-7", ()),
    )


@pytest.mark.parametrize("data", [b"", b"# no devices yet\n", b"devices: []\n"])
def test_an_empty_inventory_lists_no_devices(data: bytes) -> None:
    assert inventory.parse(data, path=PATH) == ()


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        (b"- name: a\n", "", "expected a mapping with a devices list, got a list"),
        (b"hosts: []\n", "hosts", 'unknown field "hosts"; allowed: devices'),
        (b"hosts: []\n", "devices", "required field is missing"),
        (b"devices: {a: 1}\n", "devices", "expected a list, got a mapping"),
        (b"devices: [gw-1]\n", "devices[0]", 'got "gw-1"'),
        (b"devices: [{labels: {}}]\n", "devices[0].name", "required field is missing"),
        (b"devices: [{name: GW_1}]\n", "devices[0].name", "not a DNS label"),
        (b"devices: [{name: a, site: x}]\n", "devices[0].site", "allowed: name, labels"),
        (b"devices: [{name: a, labels: [x]}]\n", "devices[0].labels", "expected a mapping"),
        (b"devices: [{name: a, labels: {-x: a}}]\n", "devices[0].labels.-x", "label key"),
        (b"devices: [{name: a, labels: {ring: 1}}]\n", "devices[0].labels.ring", "got int"),
    ],
)
def test_invalid_inventory_is_rejected_with_the_field_path(
    data: bytes, field: str, fragment: str
) -> None:
    assert any(where == field and fragment in message for where, message in problems_of(data))


def test_duplicate_device_names_are_rejected_on_the_later_entry() -> None:
    data = b"devices: [{name: a}, {name: b}, {name: a}]\n"
    assert problems_of(data) == [("devices[2].name", 'duplicate device name "a" (also devices[0])')]


def test_every_problem_of_the_file_is_reported_at_once() -> None:
    data = b"devices:\n  - {name: A}\n  - {name: b, labels: {ring: [x]}}\n  - {name: c, x: 1}\n"
    assert [field for field, _ in problems_of(data)] == [
        "devices[0].name",
        "devices[1].labels.ring",
        "devices[2].x",
    ]


def test_alias_bomb_and_non_utf8_are_rejected_by_the_bounded_loader() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]

    assert "expands to more than" in problems_of("\n".join(lines).encode())[0][1]
    assert "not valid UTF-8" in problems_of(b"devices: [{name: \xff}]\n")[0][1]
