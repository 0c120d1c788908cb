"""The published tree (SPEC 2.4): the release as plain files on any static host or a USB stick.

Owns the tree's layout (`latest.json`, `releases/<version>.json` and its bundle,
`blobs/sha256/<hex>`), the bytes of `latest.json` and its parser, and the size caps of its
files. `reconciler publish` writes the tree with these names and the static source adapter reads
it with them, so both sides agree in one place.

Nothing here is trusted: `latest.json` is an unsigned hint that only says which release file to
fetch; the release's signature and pins decide what runs. Pure: bytes and values in, values out.
Must not: read or write files, fetch, verify signatures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler import errors, text
from reconciler.core import release, trust

LATEST = "latest.json"
MAX_LATEST_BYTES = 4096  # {"version": N, "sha256": "<64 hex>"} is under 100 bytes
MAX_RELEASE_BYTES = release.MAX_BYTES
MAX_BUNDLE_BYTES = trust.MAX_BUNDLE_BYTES
MAX_BLOB_BYTES = trust.MAX_PINNED_FILE_BYTES

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Latest:
    """What `latest.json` says: the newest release's version and the sha256 of its bytes.

    `sha256` is the release's identity (`release.digest`): the device uses it as the "commit"
    of the `FleetSource` port, and the fetched release file must hash to it.
    """

    version: int
    sha256: str


def release_path(version: int) -> str:
    return f"releases/{version}.json"


def bundle_path(version: int) -> str:
    return f"releases/{version}.json.sigstore.json"


def blob_path(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"blob name: expected 64 lower-case hex digits, got {sha256!r}")
    return f"blobs/sha256/{sha256}"


def latest_bytes(latest: Latest) -> bytes:
    """The bytes `publish` writes as `latest.json` (stable: the same release, the same bytes)."""
    doc = {"version": latest.version, "sha256": latest.sha256}
    return json.dumps(doc, separators=(", ", ": ")).encode() + b"\n"


def parse_latest(data: bytes, *, where: str = LATEST) -> Latest:
    """`latest.json` from an untrusted host; ProblemsError naming what is wrong.

    Keys other than `version` and `sha256` are ignored (a later writer may add hints).
    """
    if len(data) > MAX_LATEST_BYTES:
        raise _bad(where, f"is {len(data)} bytes, over the limit of {MAX_LATEST_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(where, f"is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(where, "is not a JSON object")
    version, sha256 = doc.get("version"), doc.get("sha256")
    if type(version) is not int or not 1 <= version <= release.MAX_VERSION:
        raise _bad(where, f"version must be a positive integer, got {_show(version)}")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise _bad(where, f"sha256 must be 64 lower-case hex digits, got {_show(sha256)}")
    return Latest(version=version, sha256=sha256)


def release_version(release_data: bytes) -> int:
    """The `version` of an UNVERIFIED release file, 0 when it has none: for ordering a cache."""
    doc = _lenient_json(release_data)
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if type(version) is int else 0


def pinned_blobs(release_data: bytes) -> dict[str, str]:
    """Manifest path -> pinned sha256 of an UNVERIFIED release file, for fetching only.

    Lenient on purpose: the caller fetches blobs after the signature verified and checks each
    against its sha256; entries that are not a path and a sha256 are skipped (the release
    parser refuses such a release anyway).
    """
    doc = _lenient_json(release_data)
    apps = doc.get("apps") if isinstance(doc, dict) else None
    if not isinstance(apps, Mapping):
        return {}
    found = {}
    for path, pin in apps.items():
        sha256 = pin.get("sha256") if isinstance(pin, Mapping) else None
        if isinstance(path, str) and isinstance(sha256, str) and _SHA256.fullmatch(sha256):
            found[path] = sha256
    return found


def _lenient_json(data: bytes) -> object:
    try:
        return json.loads(data[: MAX_RELEASE_BYTES + 1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _bad(where: str, message: str) -> errors.ProblemsError:
    return errors.ProblemsError([errors.Problem(where, "", message)])


def _show(value: object) -> str:
    return text.one_line(json.dumps(value) if value is not None else "nothing", 80)
