"""The daemon's watcher (device/wakeups.py) on real directories and real inotify: which local
sources it watches, a source directory appearing (a stick inserted) or being replaced, and the
quiet period that lets a copy in progress finish before the cycle reads it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core import settings
from reconciler.device import wakeups

WAIT = 10.0  # generous for a loaded machine; each wait ends as soon as it holds
QUIET_ENOUGH = 2 * wakeups.SOURCE_QUIET + wakeups.TICK  # a wake-up due would have come


def device_settings(tmp_path: Path, source: str) -> settings.DeviceSettings:
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"source: {source}\ntrust: {{allow_unsigned: true}}\nstate_dir: {tmp_path / 'state'}\n"
    )
    return settings.read(str(config), env={}, hostname="dev-01")


def test_every_local_url_and_mirror_is_a_watched_source_and_network_urls_are_not(
    tmp_path: Path,
):
    static = device_settings(
        tmp_path,
        "{kind: static, url: https://cdn.example/fleet/, mirrors: "
        "[file:///media/usb/fleet%20tree, /srv/drop, 'relative:dir', /srv/drop]}",
    )
    assert wakeups.local_source_dirs(static) == (
        Path("/media/usb/fleet tree"),
        Path("/srv/drop"),
        Path("relative:dir").absolute(),
    )
    git = device_settings(
        tmp_path, "{url: /srv/fleet.git, mirrors: ['git@host:fleet.git', 'ssh://h/x.git']}"
    )
    assert wakeups.local_source_dirs(git) == (Path("/srv/fleet.git"),)


class Watching:
    """A Watcher over `tmp_path/media/usb` (not there yet) and the wake-ups it gives."""

    def __init__(self, tmp_path: Path) -> None:
        self.media = tmp_path / "media"
        self.media.mkdir()
        self.stick = self.media / "usb"
        loaded = device_settings(tmp_path, f"{{kind: static, url: {self.stick}}}")
        self.wakeups = wakeups.Wakeups()
        self.watcher = wakeups.Watcher(str(tmp_path / "etc" / "config.yaml"), loaded, self.wakeups)
        self.watcher.start()
        time.sleep(2 * wakeups.TICK)  # let the watch start before the test acts

    def next_reason(self, timeout: float = WAIT) -> tuple[str, float]:
        """The next wake-up's reason and when it came (monotonic); "" when none came."""
        self.wakeups.sleep(timeout)
        reason = self.wakeups.reason
        self.wakeups.take()
        return reason, time.monotonic()

    def close(self) -> None:
        self.watcher.stop()
        self.wakeups.close()


@pytest.fixture
def watching(tmp_path: Path) -> Iterator[Watching]:
    setup = Watching(tmp_path)
    yield setup
    setup.close()


def test_a_stick_appearing_wakes_the_loop_once_and_a_copy_onto_it_once_it_is_quiet(
    watching: Watching,
):
    watching.stick.mkdir()  # the stick is mounted (udisks makes the directory)
    (watching.stick / "latest.json").write_text("{}")
    reason, _ = watching.next_reason()
    assert reason == "local fleet source changed"
    assert watching.next_reason(timeout=QUIET_ENOUGH)[0] == ""  # once

    # A slow copy: a file every 0.3 s for 2 s; one wake-up, after the last write.
    written = 0.0
    for index in range(7):
        (watching.stick / f"blob-{index}").write_bytes(b"x" * 1000)
        written = time.monotonic()
        time.sleep(0.3)
    reason, woke = watching.next_reason()
    assert reason == "local fleet source changed"
    assert woke - written >= wakeups.SOURCE_QUIET - 0.35  # not before the copy was quiet


def test_a_source_directory_replaced_while_watched_is_watched_again(watching: Watching):
    watching.stick.mkdir()
    assert watching.next_reason()[0] == "local fleet source changed"
    watching.stick.rmdir()  # the stick pulled out: nothing to read, no wake-up
    assert watching.next_reason(timeout=QUIET_ENOUGH)[0] == ""
    watching.stick.mkdir()  # another stick: a new directory the old watch cannot see into
    assert watching.next_reason()[0] == "local fleet source changed"
    time.sleep(3 * wakeups.TICK)  # the watch moved onto the new directory
    (watching.stick / "latest.json").write_text("{}")
    assert watching.next_reason()[0] == "local fleet source changed"


def test_nothing_under_the_parent_but_the_source_wakes_the_loop(watching: Watching):
    (watching.media / "other-stick").mkdir()
    (watching.media / "other-stick" / "file").write_text("not ours")
    assert watching.next_reason(timeout=QUIET_ENOUGH)[0] == ""


def test_a_commit_under_dot_git_wakes_the_loop_and_an_editors_swap_file_does_not(
    tmp_path: Path,
):
    repo, labels = tmp_path / "fleet", tmp_path / "labels.d"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    labels.mkdir()
    loaded = device_settings(tmp_path, f"{{url: {repo}}}\ndevice: {{labels_dir: {labels}}}")
    woken = wakeups.Wakeups()
    watcher = wakeups.Watcher(str(tmp_path / "etc" / "config.yaml"), loaded, woken)
    watcher.start()
    try:
        time.sleep(2 * wakeups.TICK)
        (labels / ".10-site.yaml.swp").write_bytes(b"vim")
        (tmp_path / "etc" / "config.yaml~").write_text("a backup beside the config")
        woken.sleep(QUIET_ENOUGH)
        assert woken.reason == ""
        (repo / ".git" / "refs" / "heads" / "main").write_text("0" * 40)  # `git commit`
        woken.sleep(WAIT)
        assert woken.take() == ("local fleet source changed", False)
    finally:
        watcher.stop()
        woken.close()


def test_a_watch_that_keeps_failing_is_retried_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # A fake: inotify running out of watches cannot be provoked here without starving the
    # machine's other users of them.
    import watchfiles

    attempts: list[float] = []

    def exhausted(*_paths: object, **_options: object) -> Iterator[set[tuple[object, str]]]:
        attempts.append(time.monotonic())
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchfiles, "watch", exhausted)
    monkeypatch.setattr(wakeups, "WATCH_RETRY", 0.05)
    loaded = device_settings(tmp_path, "{url: https://git.example/fleet.git}")
    woken = wakeups.Wakeups()
    watcher = wakeups.Watcher(str(tmp_path / "etc" / "config.yaml"), loaded, woken)
    with caplog.at_level("WARNING", logger="reconciler.daemon"):
        watcher.start()
        deadline = time.monotonic() + WAIT
        while len(attempts) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        watcher.stop()
    woken.close()
    assert len(attempts) >= 5
    failures = [r for r in caplog.records if "watch.failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
