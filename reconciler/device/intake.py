"""Intake (SPEC 3.2 step 2): the release at a commit, read from the fleet source and trusted.

Shell around `core.trust`: reads `.fleet/release.json`, its bundle and every pinned file through
the `FleetSource` port, asks the verifier for its verdict, and parses the pinned manifests. The
result is kept while the head does not move, so an unchanged poll reads nothing again. Nothing
of an unverified release is parsed or trusted, not even its pins. Must not: decide what runs,
touch the engine or state_dir.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from reconciler import logs, model, ports
from reconciler.core import manifests, release, targets, trust
from reconciler.errors import Problem, ProblemsError, ReleaseError, VerificationError

_log = logging.getLogger("reconciler.cycle")


@runtime_checkable
class Forgetting(Protocol):
    """A source whose commit name does not cover every file it serves (the static tree's
    names its release, not the bundle): told of a refusal, it reads the rest afresh next time.
    A Git commit covers its whole tree, so GitSource has nothing to forget."""

    def forget(self, commit: str) -> None: ...


class Intake:
    """Reads and trusts the release at a commit; caches the last one."""

    def __init__(
        self,
        source: ports.FleetSource,
        verifier: ports.ReleaseVerifier,
        *,
        allow_unsigned: bool,
    ) -> None:
        self.source = source
        self.verifier = verifier
        self.allow_unsigned = allow_unsigned
        self._cached: tuple[str, trust.TrustedRelease, targets.ReleaseContent] | None = None

    def read(self, commit: str) -> tuple[trust.TrustedRelease, targets.ReleaseContent]:
        """The trusted release at `commit` and its apps; RevisionRejected when it is not."""
        if self._cached is not None and self._cached[0] == commit:
            return self._cached[1], self._cached[2]
        data = self.source.read(commit, release.RELEASE_PATH, max_bytes=release.MAX_BYTES)
        if data is None:
            missing = Problem(release.RELEASE_PATH, "", f"missing at commit {commit[:12]}")
            raise ReleaseError([missing])
        signer = None
        if not self.allow_unsigned:
            bundle = self.source.read(commit, release.BUNDLE_PATH, max_bytes=trust.MAX_BUNDLE_BYTES)
            try:
                signer = self.verifier.verify(data, bundle, file=release.RELEASE_PATH)
            except VerificationError:
                if isinstance(self.source, Forgetting):
                    self.source.forget(commit)
                raise
            logs.event(
                _log,
                logging.DEBUG,
                "release.verified",
                commit=commit[:12],
                identity=signer.identity,
                issuer=signer.issuer,
            )
        candidate = trust.ReleaseTrust(data, signer=signer)
        files: dict[str, bytes] = {}
        for path in candidate.pinned_paths:
            blob = self.source.read(commit, path, max_bytes=trust.MAX_PINNED_FILE_BYTES)
            if blob is not None:
                files[path] = blob
        trusted = candidate.accept_files(files)
        content = _content(trusted)
        self._cached = (commit, trusted, content)
        return trusted, content


def _content(trusted: trust.TrustedRelease) -> targets.ReleaseContent:
    parsed: dict[str, model.AppManifest] = {}
    problems: dict[str, tuple[str, ...]] = {}
    for path, blob in trusted.files.items():
        try:
            parsed[path] = manifests.parse(blob, path=path)
        except ProblemsError as exc:
            problems[path] = tuple(str(p) for p in exc.problems)
    return targets.ReleaseContent(
        pinned_images=trusted.release.pinned_images,
        since=trusted.release.since,
        files=trusted.files,
        manifests=parsed,
        problems=problems,
        pins=frozenset(trusted.release.pins),
    )
