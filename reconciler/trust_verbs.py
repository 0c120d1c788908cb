"""Verbs about signatures: `verify [REPO]`, signing in `release`, and `lab-ca init DIR`.

Shell over `verification` (device-side trust), `signing` and `lab_ca`: reads files of a fleet
repo checkout, prints one line per finding, returns the exit code. `verify` judges a checkout
exactly as a device with the same `trust` config judges the commit: signature and identity, then
version expiry and every pin.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import release, verification
from reconciler.errors import ProblemsError, ReconcilerError, VerificationError
from reconciler.settings import TrustConfig


def verify(
    root: Path,
    trust: TrustConfig,
    *,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """0 when a device with `trust` would accept the checkout's release and manifests, else 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    release_file = root / release.RELEASE_PATH
    try:
        data = release_file.read_bytes()
    except OSError as exc:
        print(f"verify: {release.RELEASE_PATH}: cannot read: {exc.strerror or exc}", file=err)
        return 1
    bundle_file = root / release.BUNDLE_PATH
    bundle = bundle_file.read_bytes() if bundle_file.is_file() else None
    if bundle is None and trust.allow_unsigned:
        print(
            f"verify: {release.BUNDLE_PATH}: missing; accepted only because "
            "trust.allow_unsigned is true",
            file=err,
        )
    else:
        checker = verification.ReleaseVerifier(
            identities=[(i.identity, i.issuer) for i in trust.identities],
            trusted_root=trust.trusted_root,
        )
        try:
            signer = checker.verify(data, bundle, file=release.RELEASE_PATH)
        except VerificationError as exc:
            print(f"verify: refused ({exc.reason}): {exc}", file=err)
            return 1
        print(f"signed by {signer.identity} (issuer {signer.issuer})", file=out)
    try:
        parsed = release.parse(data)
    except ProblemsError as exc:
        for problem in exc.problems:
            print(f"verify: {problem}", file=err)
        return 1
    files = {}
    for path in parsed.pins:
        candidate = root / path
        if candidate.is_file() and not candidate.is_symlink():
            files[path] = candidate.read_bytes()
    problems = release.check_pins(parsed, files)
    for problem in problems:
        print(f"verify: {problem}", file=err)
    moment = now or datetime.now(UTC)
    expired = release.is_expired(parsed, moment)
    if expired:
        print(
            f"verify: release {parsed.version} expired at {parsed.expires:%Y-%m-%dT%H:%M:%SZ}: "
            "devices keep running apps but apply nothing new",
            file=err,
        )
    present = sorted(str(p.relative_to(root)) for p in (root / "apps").rglob("*.yaml"))
    for path in release.unlisted(parsed, present):
        print(f"note: {path} is not in the release: devices ignore it", file=out)
    if problems or expired:
        return 1
    print(
        f"release {parsed.version}: {len(parsed.pins)} app(s), every pin matches, "
        f"expires {parsed.expires:%Y-%m-%dT%H:%M:%SZ}",
        file=out,
    )
    return 0


def sign_written_release(
    root: Path,
    data: bytes,
    *,
    lab_ca: Path | None,
    identity: str | None,
    issuer: str | None,
    err: TextIO | None = None,
) -> int:
    """Sign the release bytes just written and put the bundle beside them; 0 or 1."""
    from reconciler import signing

    err = err or sys.stderr
    try:
        bundle = signing.sign_release(data, lab_ca=lab_ca, identity=identity, issuer=issuer)
    except ReconcilerError as exc:
        print(f"release: signing failed, {release.BUNDLE_PATH} not written: {exc}", file=err)
        return 1
    target = root / release.BUNDLE_PATH
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(bundle)
    temporary.replace(target)
    print(f"signed: {release.BUNDLE_PATH}", file=err)
    return 0


def read_if_present(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def restore(path: Path, previous: bytes | None) -> None:
    """Put back what `path` held before (or remove it if it did not exist)."""
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(previous)


def remove_stale_bundle(root: Path, *, err: TextIO | None = None) -> None:
    """`release --no-sign` rewrote release.json: an old bundle no longer matches it."""
    stale = root / release.BUNDLE_PATH
    if stale.exists():
        stale.unlink()
        print(
            f"release: removed {release.BUNDLE_PATH}: it signed the previous release",
            file=err or sys.stderr,
        )


def lab_ca_init(directory: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from reconciler import lab_ca

    try:
        lab_ca.init(directory)
    except (ReconcilerError, OSError) as exc:
        print(f"lab-ca init: {exc}", file=err or sys.stderr)
        return 1
    print(
        f"lab CA in {directory}: devices pin {directory / 'trusted_root.json'} as "
        "trust.trusted_root; sign with: reconciler release --lab-ca "
        f"{directory} --identity ID --issuer ISSUER",
        file=out or sys.stdout,
    )
    return 0
