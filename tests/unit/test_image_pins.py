"""image_pins: tags of a checkout resolved to digests, with every failure named."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ProblemsError
from reconciler.fleet import image_pins
from testkit.fleet_repos import FleetRepo

DIGEST = "sha256:" + "ab" * 32


def write(root: Path, name: str, *images: str) -> None:
    """Commit a manifest: images are resolved for the committed manifests `release` pins."""
    containers = "\n".join(
        f"    - {{name: c{i}, image: '{image}'}}" for i, image in enumerate(images)
    )
    fleet = FleetRepo(root)  # `git init` again in an existing repo changes nothing
    fleet.write(
        f"apps/{name}/app.yaml",
        f"apiVersion: reconciler/v1\nkind: App\nmetadata: {{name: {name}}}\n"
        f"spec:\n  selector: {{}}\n  containers:\n{containers}\n",
    )
    fleet.commit(name)


def test_tags_become_digests_and_digests_stay(tmp_path: Path):
    write(tmp_path, "gw", "127.0.0.1:5000/gw:1.4", f"127.0.0.1:5000/side@{DIGEST}")
    asked = []
    pins = image_pins.resolve(tmp_path, resolver=lambda ref: asked.append(ref) or DIGEST)
    assert pins == {"apps/gw/app.yaml": {"c0": f"127.0.0.1:5000/gw@{DIGEST}"}}
    assert asked == ["127.0.0.1:5000/gw:1.4"]


def test_an_image_used_twice_is_asked_once(tmp_path: Path):
    write(tmp_path, "a", "registry.example/x:1")
    write(tmp_path, "b", "registry.example/x:1")
    asked = []
    image_pins.resolve(tmp_path, resolver=lambda ref: asked.append(ref) or DIGEST)
    assert asked == ["registry.example/x:1"]


def test_an_untagged_image_keeps_its_repository(tmp_path: Path):
    write(tmp_path, "gw", "127.0.0.1:5000/gw")
    pins = image_pins.resolve(tmp_path, resolver=lambda ref: DIGEST)
    assert pins["apps/gw/app.yaml"]["c0"] == f"127.0.0.1:5000/gw@{DIGEST}"


def test_every_tag_that_cannot_be_resolved_is_named(tmp_path: Path):
    write(tmp_path, "gw", "r.example/a:1", "r.example/b:2")

    def unreachable(ref: str) -> str:
        raise ConnectionError(f"{ref.split('/', maxsplit=1)[0]} unreachable")

    with pytest.raises(ProblemsError) as caught:
        image_pins.resolve(tmp_path, resolver=unreachable)
    lines = str(caught.value).splitlines()
    assert lines == [
        "apps/gw/app.yaml: spec.containers[0].image: cannot resolve r.example/a:1: "
        "r.example unreachable",
        "apps/gw/app.yaml: spec.containers[1].image: cannot resolve r.example/b:2: "
        "r.example unreachable",
    ]


def test_only_committed_manifests_are_resolved(tmp_path: Path):
    write(tmp_path, "gw", "127.0.0.1:5000/gw:1")
    (tmp_path / "apps/gw/app.yaml").write_text("edited, not committed\n")
    asked = []
    pins = image_pins.resolve(tmp_path, resolver=lambda ref: asked.append(ref) or DIGEST)
    assert asked == ["127.0.0.1:5000/gw:1"]
    assert pins == {"apps/gw/app.yaml": {"c0": f"127.0.0.1:5000/gw@{DIGEST}"}}
