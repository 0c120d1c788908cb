"""Fleet repo URLs: which ones the device accepts and how they appear in logs.

Light on purpose (no GitPython): the config loader, the Git adapter and the metrics all use it,
so a URL is judged the same way everywhere and a credential in it never reaches a log line,
an error message or a metric label.
"""

from __future__ import annotations

import re

__all__ = ["redact", "url_problem"]

_ALLOWED_SCHEMES = frozenset({"https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"})


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
    if scheme.lower() in {"ssh", "git+ssh", "ssh+git"} and not re.search(r"[:/]", userinfo):
        return url
    return f"{scheme}://***@{hostpart}"


def url_problem(url: str) -> str | None:
    """Why `url` is not an acceptable source URL, or None. For config validation too."""
    if not url:
        return "must not be empty"
    if url.startswith("-"):
        return 'must not start with "-"'
    if any(ord(c) < 32 or c == "\x7f" for c in url):
        return "must not contain control characters"
    scheme, sep, _ = url.partition("://")
    if sep:
        if scheme.lower() not in _ALLOWED_SCHEMES:
            return f'unsupported scheme "{scheme}" (use https, ssh, git, file or a local path)'
        return None
    transport, sep, _ = url.partition("::")
    if sep and "/" not in transport:
        return f'remote helpers ("{transport}::") are not allowed'
    return None
