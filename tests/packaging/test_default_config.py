"""packaging/config.yaml, the default /etc/reconciler/config.yaml the package installs.

As shipped it must refuse to run and say exactly what to fill in; with its examples switched on
(a "#" directly before a setting is removed) it must be valid; and it must document every
setting the reconciler knows, so that it cannot silently fall behind the schema.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.core import settings
from testkit.cli import CONSOLE_SCRIPT
from tests.packaging.chroots import PACKAGING

CONFIG = PACKAGING / "config.yaml"
# "#key:" or "#  - item" / "#    key:" (the indented lines of a commented example list); a note
# is "# " followed by prose.
EXAMPLE_LINE = re.compile(r"(?m)^(\s*)#(?=[a-z_]|\s+-\s|\s+[a-z_]+:)")


def switched_on(text: str) -> str:
    return EXAMPLE_LINE.sub(r"\1", text)


def problems_of(text: str) -> list[str]:
    try:
        settings.load(text.encode(), file="config.yaml", env={}, hostname="gw-01")
    except errors.SettingsError as exc:
        return [str(problem) for problem in exc.problems]
    return []


def test_as_shipped_it_asks_for_exactly_the_source_url_and_the_trust_settings():
    assert problems_of(CONFIG.read_text()) == [
        "config.yaml: source.url: missing required key",
        "config.yaml: trust.identities: at least one identity is required unless "
        "trust.allow_unsigned is true",
    ]


def test_the_cli_refuses_the_shipped_config_with_exit_2_and_says_what_to_fill_in(
    tmp_path: Path,
):
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "once", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "source.url: missing required key" in result.stderr
    assert "trust.identities" in result.stderr


def test_filling_in_the_two_settings_makes_it_valid_with_the_documented_defaults():
    text = CONFIG.read_text()
    filled = text.replace("  #url: ", "  url: ", 1)
    identities = re.search(r"(?m)^  #identities:\n(  #  .*\n)+", filled)
    assert identities, "the identities example is missing"
    filled = filled.replace(identities[0], switched_on(identities[0]))
    loaded = settings.load(filled.encode(), file="config.yaml", env={}, hostname="gw-01")
    assert loaded.source.url == "https://git.example.com/fleet.git"
    assert len(loaded.trust.identities) == 1
    assert loaded.trust.allow_unsigned is False
    assert loaded.device.name == "gw-01"  # the hostname
    assert loaded.device.labels_dir == "/etc/reconciler/labels.d"  # the package ships it
    assert loaded.state_dir == settings.DEFAULT_STATE_DIR
    assert loaded.metrics.listen == settings.DEFAULT_METRICS_LISTEN


def test_every_example_in_it_is_valid():
    assert problems_of(switched_on(CONFIG.read_text())) == []


@pytest.mark.parametrize(
    ("section", "key"),
    [(section, key) for section, checks in settings._SCHEMA.items() for key in checks]
    + [("", "state_dir")],
)
def test_it_documents_every_setting_of_the_schema(section: str, key: str):
    text = switched_on(CONFIG.read_text())
    if not section:
        assert re.search(rf"(?m)^{key}:", text)
        return
    body = re.search(rf"(?ms)^{section}:\n((?:[ \t]+.*\n|\n)*)", text)
    assert body, f"no {section} section"
    assert re.search(rf"(?m)^  {key}:", body[1]), f"{section}.{key} is not documented"
