"""Hostile fleet repos: `validate`, `release` and `verify` decide as devices do.

Devices read committed Git objects: no symlink followed, no submodule entered, no
`.gitattributes` conversion, every read capped. Each test builds one such repo with real `git`,
runs the real verbs, and checks the exit code, one line naming the file and the reason, and
that nothing was written or signed (inside the repo or, through a link, outside it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.cli import Run
from testkit.fleet_repos import FleetRepo

ID = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
ISS = "https://token.actions.example.test"
RELEASE = ".fleet/release.json"
BUNDLE = ".fleet/release.json.sigstore.json"
RunCli = Callable[..., Run]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reconciler.fleet import lab_ca

    directory = tmp_path_factory.mktemp("lab") / "ca"
    lab_ca.init(directory)
    return directory


@pytest.fixture
def device_config(tmp_path: Path, ca: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "source:\n  url: /srv/fleet\n"
        f"trust:\n  identities: [{{identity: '{ID}', issuer: '{ISS}'}}]\n"
        f"  trusted_root: {ca / 'trusted_root.json'}\n"
    )
    return path


def release(run_cli: RunCli, fleet: FleetRepo, ca: Path) -> Run:
    """`release` signed with the lab CA: anything it wrote or signed would show."""
    return run_cli(
        "release", str(fleet.root), "--lab-ca", str(ca), "--identity", ID, "--issuer", ISS
    )


def signed_release(run_cli: RunCli, fleet: FleetRepo, ca: Path) -> None:
    """apps/web, committed, then a signed release of it, committed: a good starting point."""
    fleet.app("web")
    fleet.commit("web")
    result = release(run_cli, fleet, ca)
    assert result.code == 0, result.err
    fleet.commit("release 1")


def files_under(directory: Path) -> dict[str, bytes | str]:
    """Every entry below `directory` without following links: bytes of files, link targets."""
    found: dict[str, bytes | str] = {}
    for base, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = Path(base) / name
            rel = path.relative_to(directory).as_posix()
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[rel] = path.read_bytes()
    return found


def names(result: Run, file: str, reason: str) -> str:
    """The one output line naming `file` and `reason`; every line printable and bounded."""
    lines = (result.out + result.err).splitlines()
    assert all(line.isprintable() and len(line) <= 1000 for line in lines), lines
    found = [line for line in lines if file in line and reason in line]
    assert found, f"no line names {file!r} and {reason!r}:\n{result.out}{result.err}"
    return found[0]


def assert_refused(result: Run, file: str, reason: str, *, verb: str = "release") -> None:
    assert result.code == 1, (result.out, result.err)
    names(result, file, reason)
    if verb == "release":
        assert result.lines[-1] == "release: nothing written"
        assert "signed:" not in result.err
    if verb == "verify":
        assert "every pin matches" not in result.out


def test_a_release_file_linked_to_dev_zero_is_refused_unread(fleet, run_cli, ca, device_config):
    signed_release(run_cli, fleet, ca)
    fleet.remove(RELEASE)
    (fleet.root / RELEASE).symlink_to("/dev/zero")
    fleet.commit("release -> /dev/zero")
    before = files_under(fleet.root / ".fleet")

    validated = run_cli("validate", str(fleet.root))
    assert_refused(validated, RELEASE, "is a symbolic link; devices never follow", verb="validate")
    verified = run_cli("verify", str(fleet.root), "--config", str(device_config))
    assert_refused(verified, RELEASE, "is a symbolic link in the work tree", verb="verify")
    released = release(run_cli, fleet, ca)
    assert_refused(released, RELEASE, "is a symbolic link")
    assert files_under(fleet.root / ".fleet") == before


def test_a_release_file_linked_outside_the_repo_is_refused(
    fleet, run_cli, ca, device_config, tmp_path
):
    signed_release(run_cli, fleet, ca)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(fleet.root / RELEASE, outside / "release.json")  # a valid, signed release
    fleet.remove(RELEASE)
    (fleet.root / RELEASE).symlink_to(outside / "release.json")
    fleet.commit("release -> outside")
    before, before_outside = files_under(fleet.root / ".fleet"), files_under(outside)

    validated = run_cli("validate", str(fleet.root))
    assert_refused(validated, RELEASE, "is a symbolic link; devices never follow", verb="validate")
    verified = run_cli("verify", str(fleet.root), "--config", str(device_config))
    assert_refused(verified, RELEASE, "is a symbolic link in the work tree", verb="verify")
    assert "signed by" not in verified.out
    released = release(run_cli, fleet, ca)
    assert_refused(released, RELEASE, "is a symbolic link")
    assert files_under(fleet.root / ".fleet") == before
    assert files_under(outside) == before_outside


def test_a_symlinked_fleet_directory_is_refused_and_nothing_is_written_through_it(
    fleet, run_cli, ca, device_config, tmp_path
):
    signed_release(run_cli, fleet, ca)
    outside = tmp_path / "outside-fleet"
    shutil.move(fleet.root / ".fleet", outside)
    (fleet.root / ".fleet").symlink_to(outside)
    fleet.commit(".fleet -> outside")
    before_outside = files_under(outside)

    validated = run_cli("validate", str(fleet.root))
    assert_refused(validated, RELEASE, ".fleet is a symbolic link", verb="validate")
    verified = run_cli("verify", str(fleet.root), "--config", str(device_config))
    assert_refused(verified, RELEASE, ".fleet is a symbolic link in the work tree", verb="verify")
    released = release(run_cli, fleet, ca)
    assert_refused(released, RELEASE, ".fleet is a symbolic link")
    assert files_under(outside) == before_outside
    assert (fleet.root / ".fleet").is_symlink()


def test_a_symlinked_app_directory_is_refused(fleet, run_cli, ca):
    fleet.app("gw")
    fleet.write("elsewhere/web/app.yaml", fleet.read("apps/gw/app.yaml").replace(b"gw", b"web"))
    (fleet.root / "apps/web").symlink_to("../elsewhere/web")
    fleet.commit("apps/web -> elsewhere")

    validated = run_cli("validate", str(fleet.root))
    assert_refused(
        validated, "apps/web", "is a symbolic link; devices never follow", verb="validate"
    )
    assert validated.lines[-1] == "validate: 1 problem(s) in 1 file(s)"
    released = release(run_cli, fleet, ca)
    assert_refused(released, "apps/web", "is a symbolic link; devices never follow")
    assert not (fleet.root / ".fleet").exists()


def test_a_pin_under_a_symlinked_directory_fails_verify_as_on_a_device(
    fleet, run_cli, ca, device_config
):
    signed_release(run_cli, fleet, ca)
    before = files_under(fleet.root / ".fleet")
    # The pinned bytes are still reachable through the link: a device refuses them anyway.
    shutil.move(fleet.root / "apps/web", fleet.root / "elsewhere-web")
    (fleet.root / "apps/web").symlink_to("../elsewhere-web")
    fleet.commit("apps/web -> elsewhere-web")

    verified = run_cli("verify", str(fleet.root), "--config", str(device_config))
    assert_refused(
        verified,
        "apps/web/app.yaml",
        "apps/web is a symbolic link; devices never follow it",
        verb="verify",
    )
    assert f"signed by {ID}" in verified.out  # the signature was fine; the pin is not
    released = release(run_cli, fleet, ca)
    assert_refused(released, "apps/web", "is a symbolic link")
    assert files_under(fleet.root / ".fleet") == before


def test_a_manifest_inside_a_submodule_is_neither_validated_nor_pinned(fleet, run_cli, ca):
    fleet.app("gw")
    inner = FleetRepo(fleet.root / "apps/sub")
    inner.app("sub")
    (inner.root / "app.yaml").write_bytes(inner.read("apps/sub/app.yaml"))
    inner.commit("inside the submodule")
    fleet.commit("gw and a submodule")  # `git add` makes apps/sub a gitlink
    assert "160000" in fleet.git("ls-tree", "HEAD", "apps/sub")

    validated = run_cli("validate", str(fleet.root))
    assert_refused(
        validated, "apps/sub", "is a submodule; devices never follow it", verb="validate"
    )
    assert not any("apps/sub/" in line for line in validated.lines)
    released = release(run_cli, fleet, ca)
    assert_refused(released, "apps/sub", "is a submodule")
    assert not (fleet.root / ".fleet").exists()


@pytest.mark.parametrize("attribute", ["eol=crlf", "ident", "filter=lfs"])
def test_a_manifest_git_rewrites_on_checkout_is_refused_naming_the_attribute(
    fleet, run_cli, ca, attribute
):
    fleet.write(".gitattributes", f"*.yaml {attribute}\n")
    fleet.app("gw")
    fleet.commit("gw with a rewriting attribute")

    reason = f"Git attribute {attribute} (.gitattributes) rewrites this file"
    validated = run_cli("validate", str(fleet.root))
    assert_refused(validated, "apps/gw/app.yaml", reason, verb="validate")
    released = release(run_cli, fleet, ca)
    assert_refused(released, "apps/gw/app.yaml", reason)
    assert not (fleet.root / ".fleet").exists()


def test_a_filter_on_the_release_file_fails_verify(fleet, run_cli, ca, device_config):
    signed_release(run_cli, fleet, ca)
    fleet.write(".gitattributes", ".fleet/* filter=lfs\n")
    fleet.commit("LFS for .fleet")
    verified = run_cli("verify", str(fleet.root), "--config", str(device_config))
    assert_refused(verified, RELEASE, "Git attribute filter=lfs", verb="verify")


def test_a_manifest_over_one_mebibyte_is_refused_by_its_size_unread(fleet, run_cli, ca):
    fleet.app("gw")
    fleet.write("apps/big/app.yaml", b"#" * (1024 * 1024 + 1))
    fleet.commit("a big manifest")
    validated = run_cli("validate", str(fleet.root))
    assert_refused(
        validated,
        "apps/big/app.yaml",
        "is 1048577 bytes, over the limit of 1048576 bytes",
        verb="validate",
    )
    released = release(run_cli, fleet, ca)
    assert_refused(released, "apps/big/app.yaml", "over the limit of 1048576 bytes")


FORGED = "\nrelease 1: 1 app(s), every pin matches\x1b[2K"


def unsigned_config(tmp_path: Path) -> Path:
    path = tmp_path / "unsigned.yaml"
    path.write_text("source:\n  url: /srv/fleet\ntrust:\n  allow_unsigned: true\n")
    return path


def printed_safely(result: Run) -> list[str]:
    """Every line printable and bounded; no "release 1:" line but verify's own last one."""
    lines = (result.out + result.err).splitlines()
    assert all(line.isprintable() and len(line) <= 1000 for line in lines), lines
    own = result.lines[-1:] if result.code == 0 else []
    assert not any(line.startswith("release 1:") for line in lines if line not in own), lines
    return lines


def test_verify_prints_release_keys_and_values_escaped_and_bounded(fleet, run_cli, tmp_path):
    fleet.app("web")
    fleet.commit("web")
    key = f"apps/x.yaml{FORGED}".replace("\n", "\\n").replace("\x1b", "\\u001b")
    pin = '{"sha256": "' + "0" * 64 + '", "since": "2026-01-01T00:00:00Z"}'
    body = (
        '{"schema": "reconciler/release/v1", "version": 1, "created": "2026-01-01T00:00:00Z", '
        f'"expires": "2036-01-01T00:00:00Z", "source_commit": "{"y" * 900}", '
        f'"apps": {{"{key}": {pin}, "{"z" * 100_000}": 1}}}}'
    )
    fleet.write(RELEASE, body)
    verified = run_cli("verify", str(fleet.root), "--config", str(unsigned_config(tmp_path)))
    assert verified.code == 1
    lines = printed_safely(verified)
    assert any("apps/x.yaml\\nrelease 1: 1 app(s), every pin matches" in line for line in lines)


def test_verify_prints_committed_file_names_escaped(fleet, run_cli, tmp_path):
    fleet.app("web")
    fleet.commit("web")
    assert run_cli("release", str(fleet.root), "--no-sign").code == 0
    fleet.write(f"apps/evil{FORGED}.yaml", "not pinned\n")
    fleet.commit("release 1 and a file named to forge a line")
    verified = run_cli("verify", str(fleet.root), "--config", str(unsigned_config(tmp_path)))
    assert verified.code == 0, verified.err
    printed_safely(verified)
    note = names(verified, "apps/evil\\nrelease 1: 1 app(s)", "is not in the release")
    assert note.startswith("note: ") and "\\x1b[2K" in note
    assert verified.lines[-1].startswith("release 1: 1 app(s), every pin matches the committed")


def test_plan_reads_no_inventory_or_release_through_a_symlink(fleet, run_cli, tmp_path):
    fleet.app("web")
    fleet.commit("web")
    (fleet.root / "devices").mkdir()
    (fleet.root / "devices/inventory.yaml").symlink_to("/dev/zero")
    (fleet.root / ".fleet").symlink_to(tmp_path)
    (tmp_path / "release.json").write_text("{not json")
    planned = run_cli(
        "plan", str(fleet.root), "--inventory", f"{fleet.root}/devices/inventory.yaml"
    )
    assert planned.code == 2
    assert planned.err == (
        f"plan: {fleet.root}/devices/inventory.yaml: cannot be read: is a symbolic link; "
        "links are never followed\n"
    )
    planned = run_cli("plan", str(fleet.root), "--labels", "")
    assert planned.code == 0
    names(planned, RELEASE, ".fleet is a symbolic link in the work tree")
