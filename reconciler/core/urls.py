"""Where the fleet repo is: which URLs and branch names the device accepts, and how a URL or any
free text that may hold one appears in logs.

The one rule for each: the config loader (`settings`), the Git adapter and the metrics all call
these, so a URL or branch is judged the same way at validation and at use (a value validated
here never fails later in the adapter), and a credential never reaches a log line, an error
message or a metric label. Light on purpose (no GitPython). Pure: no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from reconciler import text

__all__ = ["branch_problem", "redact", "scrub", "static_url_problem", "url_problem"]

_ALLOWED_SCHEMES = frozenset({"https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"})
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
# `scheme://` then everything up to the LAST "@" of the word: an unencoded "@" or "/" in a
# password must not leak the rest of it (this hides a path with an "@" too, which is harmless).
_CREDENTIALS_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")
_MAX_URL = 4096  # longer than any real remote; keeps messages and git's argv bounded
_MAX_BRANCH = 255  # a branch is also a file name under refs/ in the cache repo


def redact(url: str) -> str:
    """`url` with any credentials replaced by `***` (`https://u:pw@h/x` -> `https://***@h/x`).

    For http(s) even a bare user name is hidden, as tokens are often passed that way; an ssh
    user without a password (`ssh://git@host/x`, `git@host:x`) is kept, it is no secret.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Up to the LAST "@": an unencoded "@" or "/" in a password must not leak the rest of it.
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    if scheme.lower() in _SSH_SCHEMES and not re.search(r"[:/]", userinfo):
        return url
    return f"{scheme}://***@{hostpart}"


def scrub(free_text: str) -> str:
    """Free text (an error message, a git or HTTP library's output) with every `scheme://...@`
    credential hidden; use `redact` for a text that is one URL."""
    return _CREDENTIALS_IN_TEXT.sub(r"\1***@", free_text)


def url_problem(url: str) -> str | None:
    """Why `url` is not an acceptable fleet repo URL, or None.

    Accepted: https, http, ssh, git and file URLs (with a host, except file), git's scp-like
    `[user@]host:path`, and local paths. Never an option-like `-x`, a control character or a
    remote helper (`ext::`, `fd::`), which would let a config run commands through git.
    """
    if not url:
        return "must not be empty"
    if len(url) > _MAX_URL:
        return f"is {len(url)} characters long, over the limit of {_MAX_URL}"
    if url.startswith("-"):
        return 'must not start with "-", which git would read as an option'
    if any(ord(c) < 32 or c == "\x7f" for c in url):
        return "must not contain control characters"
    scheme, sep, _ = url.partition("://")
    if sep:
        if scheme.lower() not in _ALLOWED_SCHEMES:
            return (
                f'unsupported scheme "{text.one_line(scheme, 40)}" '
                "(use https, http, ssh, git, file, [user@]host:path or a local path)"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return "has a malformed host or port"
        if not parts.hostname and scheme.lower() != "file":
            return "has no host name"
        return None
    transport, sep, _ = url.partition("::")
    if sep and "/" not in transport:
        return f'remote helpers ("{text.one_line(transport, 40)}::") are not allowed'
    return None


def static_url_problem(url: str) -> str | None:
    """Why `url` cannot be a published tree (`source.kind: static`), or None.

    Accepted: an https or http base URL (no query or fragment: file names are appended to its
    path), a file URL, or a local directory. Judged after `url_problem`, which it narrows.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        return None  # a local directory; never read as scp-like host:path for a static tree
    if scheme.lower() not in ("https", "http", "file"):
        return (
            f"is a {text.one_line(scheme, 40)} URL; a static tree is an https or http URL, "
            "a file URL or a local directory"
        )
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        return "must not have a query or fragment (file names are appended to its path)"
    return None


def branch_problem(branch: str) -> str | None:
    """Why `branch` is not a valid branch name (git check-ref-format rules), or None."""
    bad = (
        not branch
        or len(branch) > _MAX_BRANCH
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or branch == "@"
        or any(s in branch for s in ("..", "//", "@{", "/."))
        or any(ord(c) < 33 or c in "\x7f~^:?*[\\" for c in branch)
        or any(part.endswith(".lock") for part in branch.split("/"))
    )
    return f'"{text.one_line(branch, 100)}" is not a valid branch name' if bad else None
