"""device and daemon helpers that need no engine: label files, local sources, poll timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import errors
from reconciler.core import settings
from reconciler.device import control, daemon, wiring


def load(url: str = "/srv/fleet", **extra: str) -> settings.DeviceSettings:
    text = f"source:\n  url: '{url}'\n  poll_interval: 60s\n  jitter: 0.1\n"
    text += "trust:\n  allow_unsigned: true\n"
    text += "".join(f"{k}: {v}\n" for k, v in extra.items())
    return settings.load(text.encode(), file="c.yaml", env={}, hostname="dev")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("/srv/fleet", "/srv/fleet"),
        ("file:///srv/fleet", "/srv/fleet"),
        ("fleet-drop", "fleet-drop"),
        ("https://git.example.com/fleet.git", None),
        ("git@git.example.com:fleet.git", None),
        ("ssh://git@git.example.com/fleet.git", None),
    ],
)
def test_only_a_local_source_is_watched(url, path):
    found = wiring.local_source_path(load(url))
    assert (str(found) if found else None) == path


def test_label_files_merge_in_name_order_over_the_config_labels(tmp_path: Path):
    (tmp_path / "labels.d").mkdir()
    (tmp_path / "labels.d" / "20-b.yaml").write_text("ring: prod\n")
    (tmp_path / "labels.d" / "10-a.yaml").write_text("ring: canary\nsite: berlin\n")
    (tmp_path / "labels.d" / "notes.txt").write_text("ignored: yes\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "device:\n  name: gw-01\n  labels: {role: gateway, ring: dev}\n"
        f"  labels_dir: {tmp_path / 'labels.d'}\n"
        "source:\n  url: /srv/fleet\ntrust:\n  allow_unsigned: true\n"
    )
    loaded = wiring.load_settings(str(config))
    assert loaded.labels == {"role": "gateway", "ring": "prod", "site": "berlin"}


def test_a_bad_label_file_is_named_in_the_error(tmp_path: Path):
    (tmp_path / "labels.d").mkdir()
    (tmp_path / "labels.d" / "10-a.yaml").write_text("Bad Key!: x\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"device:\n  labels_dir: {tmp_path / 'labels.d'}\n"
        "source:\n  url: /srv/fleet\ntrust:\n  allow_unsigned: true\n"
    )
    with pytest.raises(errors.SettingsError) as caught:
        wiring.load_settings(str(config))
    assert "10-a.yaml" in str(caught.value)


def test_a_missing_labels_dir_adds_no_labels(tmp_path: Path):
    assert wiring.read_label_files(str(tmp_path / "absent")) == []


def test_polls_are_jittered_around_the_interval():
    waits = [daemon._next_wait(load(), 0) for _ in range(200)]
    assert min(waits) >= 54 and max(waits) <= 66
    assert len(set(waits)) > 1


def test_while_remotes_are_down_the_wait_grows_to_five_intervals():
    current = load()
    first = daemon._next_wait(current, 1)
    later = [daemon._next_wait(current, 10) for _ in range(50)]
    assert 54 <= first <= 66
    assert max(later) <= 300 * 1.1 and min(later) >= 300 * 0.9


def test_sync_without_a_daemon_says_so(tmp_path: Path):
    problem = control.send_sync(str(tmp_path))
    assert problem is not None and "no daemon is running" in problem


def test_sync_with_a_stale_pid_file_says_the_process_is_gone(tmp_path: Path):
    (tmp_path / control.PID_FILE).write_text("999999999\n")
    problem = control.send_sync(str(tmp_path))
    assert problem is not None and "is gone" in problem


def test_a_parser_crash_while_loading_names_the_config_and_the_labels_dir():
    problem = wiring.load_failure("/etc/r/config.yaml", "/etc/r/labels.d", ValueError("bad\nx"))
    assert problem == (
        "/etc/r/config.yaml or a file in /etc/r/labels.d: cannot be loaded: ValueError: bad\\nx"
    )
    assert wiring.load_failure("/c.yaml", None, KeyError("k")).startswith("/c.yaml: cannot")


def test_reload_keeps_the_current_settings_whatever_the_new_files_raise(tmp_path: Path):
    labels = tmp_path / "labels.d"
    labels.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"device:\n  labels_dir: {labels}\nsource:\n  url: /srv/fleet\n"
        "trust:\n  allow_unsigned: true\n"
    )
    current = wiring.load_settings(str(config))
    for bad in (b"role: \x00x\n", b"[" * 5000, b"\xff\xfe\x00", b"a: !!int abc\n"):
        (labels / "10-bad.yaml").write_bytes(bad)
        assert daemon._reload(str(config), current) is current
    config.write_text("source: [\n")
    assert daemon._reload(str(config), current) is current


def test_running_pid_names_a_live_daemon_only(tmp_path: Path):
    import os

    assert control.running_pid(str(tmp_path)) is None
    (tmp_path / control.PID_FILE).write_text("999999999\n")
    assert control.running_pid(str(tmp_path)) is None
    (tmp_path / control.PID_FILE).write_text(f"{os.getpid()}\n")
    assert control.running_pid(str(tmp_path)) == os.getpid()


def test_source_kind_picks_the_adapter_with_its_cache_in_state_dir(tmp_path: Path):
    from reconciler.adapters.git_source import GitSource
    from reconciler.adapters.static_source import StaticSource

    state = str(tmp_path / "state")
    git = wiring.open_source(load("/srv/fleet", state_dir=state))
    static = wiring.open_source(
        settings.load(
            f"source: {{kind: static, url: /media/usb/fleet}}\nstate_dir: {state}\n"
            "trust: {allow_unsigned: true}\n".encode(),
            file="c.yaml",
            env={},
            hostname="dev",
        )
    )
    try:
        assert isinstance(git, GitSource) and isinstance(static, StaticSource)
        assert static.remotes == ("/media/usb/fleet",)
    finally:
        git.close()
        static.close()
    assert not (tmp_path / "state").exists()  # nothing is written before the first poll
