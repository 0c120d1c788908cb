"""Writes reconciler(1), the man page, from the installed CLI's own `--help` texts.

    python manpage.py RECONCILER_EXECUTABLE DATE > reconciler.1

The page is `reconciler --help` and each verb's `--help`, laid out as NAME, SYNOPSIS,
DESCRIPTION, OPTIONS, VERBS, FILES and EXIT STATUS sections; the help texts are kept as they are
(preformatted), so the page never says anything the program does not. DATE (YYYY-MM-DD) goes in
the header: the commit date, so that two builds of one commit write the same page. Stdlib only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def help_text(program: str, *args: str) -> str:
    environment = {**os.environ, "COLUMNS": "80", "LANG": "C.UTF-8"}
    result = subprocess.run(
        [program, *args, "--help"], capture_output=True, text=True, env=environment, check=True
    )
    return result.stdout


def roff_line(text: str) -> str:
    """One line of text as roff: backslashes doubled, a leading dot or quote made literal."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def preformatted(block: str) -> list[str]:
    return [".nf", *(roff_line(line) for line in block.rstrip("\n").splitlines()), ".fi"]


def sections(text: str) -> dict[str, str]:
    """argparse's help split at its unindented "name:" headings; "" holds what comes first."""
    parts: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        heading = re.fullmatch(r"([a-z][a-z ]*):", line)
        if heading:
            current = heading[1]
            parts[current] = ""
        else:
            parts[current] = parts.get(current, "") + line + "\n"
    return parts


def verbs(top: str) -> list[tuple[str, str]]:
    """(verb, one-line summary) from the "verbs:" section of `reconciler --help`."""
    found: list[tuple[str, str]] = []
    for line in sections(top).get("verbs", "").splitlines():
        entry = re.fullmatch(r"    ([a-z][a-z0-9-]*)\s+(.*)", line)
        if entry:
            found.append((entry[1], entry[2]))
        elif found and re.fullmatch(r"\s{6,}\S.*", line):
            verb, summary = found[-1]
            found[-1] = (verb, f"{summary} {line.strip()}")
    return found


def page(program: str, date: str) -> str:
    top = help_text(program)
    parts = sections(top)
    head = parts[""].strip().split("\n\n")
    usage, description = head[0], " ".join(" ".join(head[1:]).split())
    version = subprocess.run(
        [program, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    lines = [
        f'.TH RECONCILER 1 "{date}" "reconciler {version}" "User Commands"',
        ".SH NAME",
        "reconciler \\- GitOps pull\\-based reconciler for devices",
        ".SH SYNOPSIS",
        *preformatted(usage.removeprefix("usage: ")),
        ".SH DESCRIPTION",
        roff_line(description),
        ".SH OPTIONS",
        *preformatted(parts.get("options", "")),
        ".SH VERBS",
    ]
    for verb, summary in verbs(top):
        lines += [
            ".SS " + roff_line(verb),
            roff_line(summary),
            ".PP",
            *preformatted(help_text(program, verb)),
        ]
    lines += [
        ".SH FILES",
        ".TP",
        "/etc/reconciler/config.yaml",
        "This device's configuration, made from /usr/share/reconciler/config.yaml once.",
        ".TP",
        "/etc/reconciler/labels.d/",
        "Label files merged in name order over device.labels.",
        ".TP",
        "/etc/reconciler/docker/config.json",
        "Registry credentials (the unit sets DOCKER_CONFIG=/etc/reconciler/docker).",
        ".TP",
        "/var/lib/reconciler/",
        "Applied state, the Git cache and the lock.",
        ".SH EXIT STATUS",
        "0 success, 1 failure (state kept), 2 bad configuration or usage, 3 rolled back.",
        ".SH SEE ALSO",
        "systemctl(1), journalctl(1), /usr/share/doc/reconciler/README.packaging.md",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(page(sys.argv[1], sys.argv[2]))
