"""`reconciler verify [REPO]`: a fleet repo checkout judged as a device would judge its commit.

Shell over `core.trust` (the trusted-release object the device uses too) and the sigstore
verifier: reads files of a fleet repo checkout, prints one line per finding, returns the exit
code. `verify` judges a checkout exactly as a device with the same `trust` config judges the
commit: signature and identity, every pin, then succession over the release HEAD holds (what
devices may run) and expiry.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import text
from reconciler.adapters import checkout, sigstore_verifier
from reconciler.core import release, trust
from reconciler.core.settings import TrustConfig
from reconciler.errors import (
    Problem,
    ProblemsError,
    ReleaseError,
    VerificationError,
)
from reconciler.ports import Signer


def verify(
    root: Path,
    trust_config: TrustConfig,
    *,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """0 when a device with `trust_config` would accept the commit that committing `.fleet/` makes,
    else 1.

    That commit holds the release and bundle as they are in the work tree (`release` just
    wrote them; the release workflow verifies before it commits) and every other file as HEAD
    holds it. So the release and bundle are read from the work tree (regular files only, no
    symlink followed, capped), every pinned manifest from HEAD's Git objects exactly as a
    device reads it (no symlink or submodule followed, 1 MiB cap). Everything printed that
    comes from the repo is escaped and bounded (`text.one_line`).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        print(
            f"verify: {_show(str(root))}: not a Git work tree with a commit; devices read "
            "committed files only",
            file=err,
        )
        return 1
    fleet_files = {
        release.RELEASE_PATH: release.MAX_BYTES,
        release.BUNDLE_PATH: trust.MAX_BUNDLE_BYTES,
    }
    # Rewritten by .gitattributes, the committed bytes would not be the signed ones.
    problems = snapshot.transformed(list(fleet_files))
    found: dict[str, bytes | None] = {}
    for rel, limit in fleet_files.items():
        try:
            found[rel] = _read_work_tree(root, rel, limit=limit)
        except ProblemsError as exc:
            problems += exc.problems
    if problems or found[release.RELEASE_PATH] is None:
        for problem in problems or [Problem(release.RELEASE_PATH, "", "missing")]:
            print(f"verify: {_show(str(problem))}", file=err)
        return 1
    data, bundle = found[release.RELEASE_PATH], found[release.BUNDLE_PATH]
    assert data is not None
    signer = None
    if bundle is None and trust_config.allow_unsigned:
        print(
            f"verify: {release.BUNDLE_PATH}: missing; accepted only because "
            "trust.allow_unsigned is true",
            file=err,
        )
    else:
        signer = signer_of("verify", data, bundle, trust_config, out=out, err=err)
        if signer is None:
            return 1
    try:
        candidate = trust.ReleaseTrust(data, signer=signer)
    except ProblemsError as exc:
        for problem in exc.problems:
            print(f"verify: {_show(str(problem))}", file=err)
        return 1
    parsed = candidate.release
    files, problems = snapshot.read_many(candidate.pinned_paths, limit=trust.MAX_PINNED_FILE_BYTES)
    refused = {p.file for p in problems}  # a symlinked pin is not "missing" as well
    try:
        candidate.accept_files(files)
    except ReleaseError as exc:
        problems += [p for p in exc.problems if p.file not in refused]
    for problem in problems:
        print(f"verify: {_show(str(problem))}", file=err)
    _notes(root, snapshot, parsed, err=err)
    # Devices run the release HEAD holds (or one before it): the new one must succeed it.
    applied_version, applied_digest = _committed_release(snapshot, err=err)
    try:
        trust.check_applicable(
            parsed,
            candidate.digest,
            applied_version=applied_version,
            applied_digest=applied_digest,
            now=now or datetime.now(UTC),
        )
    except VerificationError as exc:
        print(f"verify: refused ({_show(exc.reason)}): {_show(str(exc))}", file=err)
        return 1
    present, _ = snapshot.manifest_files()
    for path in release.unlisted(parsed, sorted(present)):
        print(f"note: {_show(path)} is not in the release: devices ignore it", file=out)
    if problems:
        return 1
    print(
        f"release {parsed.version}: {len(parsed.pins)} app(s), every pin matches "
        f"the committed files of HEAD {snapshot.commit[:12]}, "
        f"expires {parsed.expires:%Y-%m-%dT%H:%M:%SZ}",
        file=out,
    )
    return 0


def _committed_release(
    snapshot: checkout.Snapshot, *, err: TextIO
) -> tuple[int | None, str | None]:
    """The version and digest of the release HEAD commits: what devices may already run.
    (None, None) when HEAD has none, or one no device could have applied."""
    found, _problems = snapshot.read_many([release.RELEASE_PATH], limit=release.MAX_BYTES)
    data = found.get(release.RELEASE_PATH)
    if data is None:
        return None, None
    try:
        committed = release.parse(data)
    except ProblemsError:
        print(
            f"note: {release.RELEASE_PATH} at HEAD {snapshot.commit[:12]} is not a valid "
            "release: no device runs it, succession is not checked against it",
            file=err,
        )
        return None, None
    return committed.version, release.digest(data)


def signer_of(
    verb: str,
    data: bytes,
    bundle: bytes | None,
    trust_config: TrustConfig,
    *,
    out: TextIO,
    err: TextIO,
) -> Signer | None:
    """Who signed the release `data`, printed on `out`; None, with the refusal on `err`, when
    no identity of `trust_config` did."""
    try:
        signer = sigstore_verifier.for_trust(trust_config).verify(
            data, bundle, file=release.RELEASE_PATH
        )
    except VerificationError as exc:
        print(f"{verb}: refused ({_show(exc.reason)}): {_show(str(exc))}", file=err)
        return None
    print(f"signed by {_show(signer.identity)} (issuer {_show(signer.issuer)})", file=out)
    return signer


def _read_work_tree(root: Path, rel: str, *, limit: int) -> bytes | None:
    """A regular file of the work tree, at most `limit` bytes, or None when absent; never
    through a symlink (at it or on the way) and never a device, FIFO or directory."""
    data = checkout.read_optional(root, rel, limit=limit + 1)
    if data is not None and len(data) > limit:
        raise ProblemsError([Problem(rel, "", f"is over the limit of {limit} bytes")])
    return data


def _notes(
    root: Path, snapshot: checkout.Snapshot, parsed: release.Release, *, err: TextIO
) -> None:
    """Say what verify judged that the work tree does not show: devices read commits."""
    for problem in snapshot.transformed(sorted(parsed.pins)):
        print(f"warning: {_show(str(problem))}", file=err)
    changed = [p for p in checkout.work_tree_changes(root, [checkout.APPS_DIR]) if p in parsed.pins]
    if changed:
        print(
            f"warning: {len(changed)} pinned file(s) differ between the work tree and HEAD "
            f"{snapshot.commit[:12]}; verify judged the committed bytes (what devices read):",
            file=err,
        )
        for line in checkout.lines_of(changed):
            print(f"  {_show(line)}", file=err)


def _show(untrusted: str) -> str:
    return text.one_line(untrusted)
