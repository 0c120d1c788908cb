"""`publish [REPO] OUT` (SPEC 2.4): the committed signed release written as the published tree.

Shell over `core.published` (the tree's names), `core.trust` (the trusted-release object the
device and `verify` share) and `checkout.Snapshot`: the release, its bundle and every pinned
manifest are read from HEAD's Git objects exactly as devices read them, verified as `verify`
verifies (signature and identity with the config's `trust`, every pin, expiry, and succession
over the release the tree already publishes), and only then written.

Idempotent and additive: files already there with the right bytes are left alone, nothing is
ever deleted (a device still on an older release, or a cache, may be reading it), and
`latest.json` is written last, so a host never points at a file it does not hold yet. Must not:
publish a release a device would refuse (unless `--allow-unsigned`, for labs, skips the
signature), follow a symlink in OUT (`checkout.replace_file` refuses one on the way).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler.adapters import checkout
from reconciler.core import published, release, trust
from reconciler.core.settings import TrustConfig
from reconciler.errors import ProblemsError, ReleaseError, VerificationError
from reconciler.fleet import verify_verb
from reconciler.fleet.printing import safe
from reconciler.ports import Signer


def publish(
    root: Path,
    out_dir: Path,
    trust_config: TrustConfig | None,
    *,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Write the published tree of the release committed at HEAD of `root` into `out_dir`.

    `trust_config` None publishes without checking the signature (`--allow-unsigned`); the
    pins, the format and succession are checked all the same. 0 when the tree holds the
    release (written now or already), 1 when refused or a write failed.
    """
    out, err = out or sys.stdout, err or sys.stderr
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        print(
            f"publish: {safe(str(root))}: not a Git work tree with a commit; the release is "
            "published from committed files only",
            file=err,
        )
        return 1
    try:
        data = snapshot.read(release.RELEASE_PATH, limit=release.MAX_BYTES)
        bundle = snapshot.read(release.BUNDLE_PATH, limit=trust.MAX_BUNDLE_BYTES)
    except ProblemsError as exc:
        return _refuse(exc, err)
    if data is None:
        print(
            f"publish: {release.RELEASE_PATH}: not committed at HEAD {snapshot.commit[:12]}; "
            "run `reconciler release`, commit, then publish",
            file=err,
        )
        return 1
    signer: Signer | None = None
    if trust_config is None:
        print(
            "publish: warning: --allow-unsigned: the signature is not checked"
            + ("" if bundle is not None else " (the release has no bundle)"),
            file=err,
        )
    else:
        signer = verify_verb.signer_of("publish", data, bundle, trust_config, out=out, err=err)
        if signer is None:
            return 1
    try:
        candidate = trust.ReleaseTrust(data, signer=signer)
        files, problems = snapshot.read_many(
            candidate.pinned_paths, limit=trust.MAX_PINNED_FILE_BYTES
        )
        if problems:
            raise ProblemsError(problems)
        trusted = candidate.accept_files(files)
        current = _published_latest(out_dir)
        trusted.check_applicable(
            applied_version=current.version if current else None,
            applied_digest=current.sha256 if current else None,
            now=now or datetime.now(UTC),
        )
    except ProblemsError as exc:
        return _refuse(exc, err)
    except VerificationError as exc:
        print(f"publish: refused ({safe(exc.reason)}): {safe(str(exc))}", file=err)
        return 1
    version = trusted.release.version
    try:
        added = _write_tree(out_dir, trusted, bundle)
    except (OSError, ProblemsError) as exc:
        print(f"publish: cannot write into {safe(str(out_dir))}: {safe(str(exc))}", file=err)
        return 1
    print(
        f"published release {version} ({trusted.digest[:12]}, {len(trusted.files)} app(s)) in "
        f"{safe(str(out_dir))}: {added} file(s) added",
        file=out,
    )
    return 0


def _write_tree(out_dir: Path, trusted: trust.TrustedRelease, bundle: bytes | None) -> int:
    """Add the release's files to the tree, `latest.json` last; the number of files written."""
    version = trusted.release.version
    wanted: list[tuple[str, bytes]] = [
        (published.blob_path(release.digest(blob)), blob) for blob in trusted.files.values()
    ]
    if bundle is not None:
        wanted.append((published.bundle_path(version), bundle))
    wanted.append((published.release_path(version), trusted.data))
    latest = published.Latest(version=version, sha256=trusted.digest)
    wanted.append((published.LATEST, published.latest_bytes(latest)))
    added = 0
    for rel, content in wanted:
        if checkout.read_optional(out_dir, rel, limit=len(content) + 1) == content:
            continue  # already there with these bytes: a re-run writes nothing
        checkout.replace_file(out_dir, rel, content)
        added += 1
    return added


def _published_latest(out_dir: Path) -> published.Latest | None:
    """The release the tree in `out_dir` publishes now, or None for a new tree; ProblemsError
    for a `latest.json` that is not one (the operator must look before it is replaced)."""
    data = checkout.read_optional(out_dir, published.LATEST, limit=published.MAX_LATEST_BYTES + 1)
    if data is None:
        return None
    return published.parse_latest(data, where=str(out_dir / published.LATEST))


def _refuse(exc: ProblemsError, err: TextIO) -> int:
    reason = f" ({exc.reason})" if isinstance(exc, ReleaseError) else ""
    for problem in exc.problems:
        print(f"publish: refused{reason}: {safe(str(problem))}", file=err)
    return 1
