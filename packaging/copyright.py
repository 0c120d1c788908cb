"""Writes the package's debian/copyright from the virtualenv it bundles.

    VENV/bin/python copyright.py PREFIX > copyright

Run by build-deb.sh with the virtualenv's own interpreter (stdlib only). One Files paragraph per
bundled distribution, naming its files (from its RECORD), its licence as an SPDX expression (from
License-Expression, else the License field or classifiers, through KNOWN) and the licence text it
ships; Apache-2.0 and MPL-2.0 point at /usr/share/common-licenses as Debian does. C libraries
linked statically into extension modules (OpenSSL, libyaml) are named with their versions, read
from the binaries. A distribution whose licence cannot be told stops the build: nothing ships
under a guessed licence.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterable
from pathlib import Path

# Licence names as distributions write them (License field or trove classifier) -> SPDX.
KNOWN = {
    "MIT": "MIT",
    "MIT License": "MIT",
    "MIT-0": "MIT-0",
    "Apache-2.0": "Apache-2.0",
    "Apache 2.0": "Apache-2.0",
    "Apache Software License": "Apache-2.0",
    "Apache License 2.0": "Apache-2.0",
    "BSD": "BSD-3-Clause",
    "BSD License": "BSD-3-Clause",
    "BSD-2-Clause": "BSD-2-Clause",
    "BSD-3-Clause": "BSD-3-Clause",
    "ISC": "ISC",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "MPL-2.0": "MPL-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "PSF-2.0": "PSF-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "Unlicense": "Unlicense",
}
# Debian ships these texts; a Files paragraph refers to them instead of repeating them.
COMMON = {"Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0"}
LICENSE_FILE = re.compile(r"(?i)^(licen[cs]e|copying|notice)")
# A distribution that declares no licence in its metadata: told by the licence text it ships.
TEXT_MARKERS = [
    (re.compile(r"Apache License\s+Version 2\.0"), "Apache-2.0"),
    (re.compile(r"Permission is hereby granted, free of charge"), "MIT"),
    (re.compile(r"Permission to use, copy, modify, and(/or)? distribute"), "ISC"),
    (re.compile(r"Mozilla Public License,? [Vv]ersion 2\.0"), "MPL-2.0"),
    (re.compile(r"Redistribution and use .* Neither the name", re.S), "BSD-3-Clause"),
    (re.compile(r"Redistribution and use in source and binary forms"), "BSD-2-Clause"),
]


def licence_of(dist: importlib.metadata.Distribution) -> str:
    metadata = dist.metadata
    name = metadata["Name"]
    if expression := metadata.get("License-Expression"):
        return expression.strip()
    field = (metadata.get("License") or "").strip()
    if field in KNOWN:
        return KNOWN[field]
    classified = sorted(
        {
            KNOWN.get(c.rsplit(" :: ", 1)[-1], f"?{c}")
            for c in metadata.get_all("Classifier") or []
            if c.startswith("License :: ") and c != "License :: OSI Approved"
        }
    )
    unknown = [c for c in classified if c.startswith("?")]
    if classified and not unknown:
        return " OR ".join(classified)
    texts = " ".join(text.read_text(errors="replace") for text in licence_texts(dist))
    told = [spdx for marker, spdx in TEXT_MARKERS if marker.search(texts)]
    if not field and not classified and len(told) >= 1:
        return told[0]
    sys.exit(f"copyright.py: {name}: cannot tell its licence (License: {field[:60]!r}, {unknown})")


def licence_texts(dist: importlib.metadata.Distribution) -> list[Path]:
    files = [Path(str(dist.locate_file(f))) for f in dist.files or ()]
    return sorted(
        f
        for f in files
        if ".dist-info" in str(f.parent) and LICENSE_FILE.match(f.name) and f.is_file()
    )


def common_text(text: Path) -> str | None:
    """The licence, when this file is the full text of one Debian ships."""
    content = text.read_text(errors="replace")
    if re.search(r"Apache License\s+Version 2\.0.*TERMS AND CONDITIONS", content, re.S):
        return "Apache-2.0"
    if re.search(r"Mozilla Public License Version 2\.0\s+=+", content):
        return "MPL-2.0"
    return None


def copyright_lines(texts: Iterable[Path], name: str) -> list[str]:
    found: list[str] = []
    for text in texts:
        for line in text.read_text(errors="replace").splitlines():
            match = re.match(r"\s*(?:Copyright|COPYRIGHT)\s*(?:\([cC]\)|©)?\s*(.+)", line)
            if (
                match
                and re.match(r"\d{4}|[A-Z]", match[1])
                and "[yyyy]" not in match[1]
                and len(match[1]) < 120
            ):
                entry = match[1].strip().rstrip(".")
                if entry not in found and not entry.lower().startswith(("notice", "holder")):
                    found.append(entry)
    return found or [f"the {name} authors (no copyright line in its licence file)"]


def body(text: str) -> list[str]:
    """Free text as a copyright-format continuation: indented, blank lines as " ."."""
    lines = [line.rstrip().expandtabs() for line in text.strip("\n").splitlines()]
    return [f" {line}" if line.strip() else " ." for line in lines]


def top_level(dist: importlib.metadata.Distribution, site: Path) -> list[str]:
    """The Files patterns for one distribution: its top-level entries in site-packages."""
    entries: set[str] = set()
    for file in dist.files or ():
        parts = Path(str(file)).parts
        if not parts or parts[0] == ".." or parts[0] == "__pycache__":
            continue
        entries.add(f"{parts[0]}/*" if len(parts) > 1 else parts[0])
    return [f"{site.relative_to('/').as_posix()}/{entry}" for entry in sorted(entries)]


def static_libraries(dist: importlib.metadata.Distribution) -> list[str]:
    """C libraries compiled into the distribution's extension modules, with their versions."""
    found = []
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if path.suffix != ".so" or not path.is_file():
            continue
        data = path.read_bytes()
        # libcrypto's own symbols inside, no libcrypto.so linked: a static OpenSSL. Its version
        # as OpenSSL_version() reports it, else the bare OPENSSL_VERSION_STR.
        if b"OPENSSL_init" in data and b"libcrypto.so" not in data:
            match = re.search(rb"OpenSSL (\d+\.\d+\.\d+[a-z]?) ", data) or re.search(
                rb"\x00(\d+\.\d+\.\d+[a-z]?)\x00", data
            )
            version = match[1].decode() if match else "(version not recorded)"
            found.append(f"OpenSSL {version} (Apache-2.0) in {file}")
        if b"yaml_parser_initialize" in data:
            import yaml  # type: ignore[import-untyped]  # present: this is PyYAML's own module

            version = yaml._yaml.get_version_string()
            found.append(f"libyaml {version} (MIT) in {file}")
    return found


def main(prefix: str) -> None:
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = site / "site-packages"
    own = importlib.metadata.distribution("reconciler")
    others = sorted(
        (d for d in importlib.metadata.distributions(path=[str(site)]) if d.metadata["Name"]),
        key=lambda d: d.metadata["Name"].lower(),
    )
    others = [d for d in others if d.metadata["Name"].lower() != "reconciler"]
    statics = [entry for d in others for entry in static_libraries(d)]
    out = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        "Upstream-Name: reconciler",
        f"Comment: The reconciler bundles, in its virtualenv under {prefix}, {len(others)} Python",
        " distributions from PyPI, each with its licence below. Some extension modules",
        " link C libraries statically, so Debian's security updates of those libraries",
        " never reach them; a new reconciler package with updated wheels does",
        " (packaging/lock-deps.sh, README.packaging.md):",
        *(f"  {entry}" for entry in statics),
        " Rust extension modules also link Rust crates under MIT or Apache-2.0 terms.",
        "",
        "Files: *",
        "Copyright: the reconciler authors",
        f"License: {licence_of(own)}",
        "",
    ]
    used_common: set[str] = {licence_of(own)} & set(COMMON)
    for dist in others:
        name, version = dist.metadata["Name"], dist.version
        licence = licence_of(dist)
        texts = licence_texts(dist)
        holders = copyright_lines([t for t in texts if common_text(t) is None], name)
        out.append("Files: " + "\n ".join(top_level(dist, site)))
        out.append("Copyright: " + "\n ".join(holders))
        out.append(f"License: {licence}")
        # Texts Debian ships (Apache-2.0, MPL-2.0) are referred to, the others quoted in full.
        quoted = [text for text in texts if common_text(text) is None]
        referred = sorted(
            {c for text in texts if (c := common_text(text))} | ({licence} & set(COMMON))
        )
        used_common.update(referred)
        if not quoted and not referred:
            sys.exit(f"copyright.py: {name}: {licence} but no licence text in its dist-info")
        out += body("\n\n".join(text.read_text(errors="replace") for text in quoted))
        for common in referred:
            out.append(f" The {common} text: /usr/share/common-licenses/{COMMON[common]}.")
        out.append(f"Comment: {name} {version}")
        out.append("")
    for licence in sorted(used_common):
        out += [
            f"License: {licence}",
            f" On Debian systems, the full text of the {licence} licence can be found in",
            f" /usr/share/common-licenses/{COMMON[licence]}.",
            "",
        ]
    sys.stdout.write("\n".join(out).rstrip("\n") + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
